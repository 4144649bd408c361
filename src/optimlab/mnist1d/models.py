"""The mnist1d reference models (Greydanus 2020, notebooks/models.py), minus the prints.

`mlp`: 40 -> 100 -> 100 -> 10 with ReLU; as in the reference code, the second hidden layer
is residual (h + relu(W2 h + b2)). `cnn`: three stride-2 1-D convolutions with 25 channels
and a linear read-out, the reference ConvBase. Both use PyTorch's default initialisation,
drawn from torch's global generator: seed it before building.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from optimlab.errors import UsageError
from optimlab.mnist1d.data import CLASSES, FEATURES


class MLP(nn.Module):
    def __init__(self, inputs: int = FEATURES, classes: int = CLASSES, hidden: int = 100):
        super().__init__()
        self.linear1 = nn.Linear(inputs, hidden)
        self.linear2 = nn.Linear(hidden, hidden)
        self.linear3 = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        # F.linear on the layers' own tensors: the ops nn.Linear runs, without its per-call
        # module dispatch (a small MLP's step is mostly such overhead).
        h = F.linear(x, self.linear1.weight, self.linear1.bias).relu()
        h = h + F.linear(h, self.linear2.weight, self.linear2.bias).relu()
        return F.linear(h, self.linear3.weight, self.linear3.bias)


class CNN(nn.Module):
    def __init__(self, inputs: int = FEATURES, classes: int = CLASSES, channels: int = 25):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        length = inputs
        for conv in (self.conv1, self.conv2, self.conv3):
            length = (length + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        self.linear = nn.Linear(channels * length, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = x.unsqueeze(1)
        h = self.conv1(h).relu()
        h = self.conv2(h).relu()
        h = self.conv3(h).relu()
        return self.linear(h.flatten(1))


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}


def build_model(name: str) -> nn.Module:
    """A freshly initialised model by name ("mlp" or "cnn")."""
    try:
        return MODELS[name]()
    except KeyError:
        raise UsageError(f"unknown model {name!r}; valid: {', '.join(MODELS)}") from None
