"""REFERENCE ONLY: a literal reproduction of the published DynamicAdam procedure, which is flawed.

Do not use this as an optimizer. It exists so the mnist1d report can show, by measurement,
how the claimed validation loss arises (design notes 3.4). Per step it does what the
published code does:

    loss = L_train(theta);  loss.backward(create_graph=True)          # g keeps its graph
    beta1 = gate(features(g))
    fast = theta - lr * mhat(beta1, g) / (sqrt(vhat(g)) + eps)         # from the LIVE theta
    val_loss = L_val(fast);  val_loss.backward()                       # the leak
    gate_optimizer.step()
    theta <- Adam-style update with beta1 from theta.grad

`val_loss.backward()` does not stop at the gate: it adds dL_val/dtheta (through
`fast = theta - ...`, and second-order terms through g) into every `theta.grad`, and the
update then follows that sum. The model trains on the validation batches, so its validation
loss falls far below its test loss. The library's `optimlab.optim.DynamicAdam` computes the
same gate gradient in closed form and never touches the model's gradients.

`detach_fast_weights=True` builds the fast weights from `theta.detach()`, the control
experiment of the mechanism test: the first-order leak is gone. Second-order terms through g
remain (create_graph), scaled by lr and by Adam's 1/|g|, so they move elements with tiny
gradients (measured at step 1: 0.8% of the MLP's weights against 24% for the literal step),
but not enough to fit the validation data.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from optimlab.optim import Adam
from optimlab.optim.gate import beta1_from_output, gradient_features, make_gate

# sqrt has an infinite derivative at 0: an exactly-zero gradient element (a ReLU unit dead on
# the whole batch, whose moments are still 0) turns the double backward into NaN, and every
# run diverged in its first epoch without this shift (measured). It changes vhat by 1e-30.
_TINY = 1e-30


class PublishedDynamicAdam:
    """The published procedure over all parameters of `model` (see the module docstring).

    `step(inputs, targets, meta_inputs, meta_targets)` trains on one batch with
    cross-entropy and returns the training loss (detached). The gate, its features and its
    initialisation are those of optimlab.optim.DynamicAdam, so an untrained gate gives
    beta1 = betas[0] and the only difference from the library is the procedure itself.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        gate_lr: float = 1e-3,
        gate_hidden: int = 16,
        beta1_range: tuple[float, float] = (0.0, 0.999),
        detach_fast_weights: bool = False,
    ) -> None:
        self.model = model
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        first = self.named_params[0][1]
        self.lr, self.betas, self.eps = lr, betas, eps
        self.beta1_range = beta1_range
        self.detach_fast_weights = detach_fast_weights
        self.gate = make_gate(
            gate_hidden, betas[0], beta1_range, dtype=first.dtype, device=first.device
        )
        self.gate_optimizer = Adam(self.gate.parameters(), lr=gate_lr)
        self.exp_avg = [torch.zeros_like(p) for _, p in self.named_params]
        self.exp_avg_sq = [torch.zeros_like(p) for _, p in self.named_params]
        self.step_count = 0
        self.beta1_product = 1.0
        self.beta1_history: list[float] = []

    def step(
        self, inputs: Tensor, targets: Tensor, meta_inputs: Tensor, meta_targets: Tensor
    ) -> Tensor:
        params = [p for _, p in self.named_params]
        beta2 = self.betas[1]
        for p in params:
            p.grad = None
        self.gate_optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(inputs), targets)
        with warnings.catch_warnings():  # torch warns about the grad <-> param reference cycle
            warnings.simplefilter("ignore", UserWarning)
            loss.backward(create_graph=True)
        grads = [p.grad for p in params]
        beta1 = beta1_from_output(self.gate(gradient_features(grads)), *self.beta1_range).reshape(
            ()
        )

        # The fast weights, differentiable in beta1 (the gate) and, through p and g, in p.
        t = self.step_count + 1
        product = self.beta1_product * beta1
        bias_correction2 = 1.0 - beta2**t
        fast = {}
        for (name, p), g, m, v in zip(
            self.named_params, grads, self.exp_avg, self.exp_avg_sq, strict=True
        ):
            m_new = beta1 * m + (1.0 - beta1) * g
            v_new = beta2 * v + (1.0 - beta2) * g * g
            denom = (v_new / bias_correction2 + _TINY).sqrt() + self.eps
            base = p.detach() if self.detach_fast_weights else p
            fast[name] = base - self.lr * (m_new / (1.0 - product)) / denom
        meta_logits = functional_call(self.model, fast, (meta_inputs,))
        val_loss = F.cross_entropy(meta_logits, meta_targets)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            val_loss.backward()  # the gate's gradient, and validation gradients into p.grad
        self.gate_optimizer.step()

        # The real update, Adam-style with this step's beta1, from the (polluted) p.grad.
        b1 = float(beta1.detach())
        if not math.isfinite(b1):
            raise FloatingPointError("published DynamicAdam: beta1 is not finite")
        self.step_count = t
        self.beta1_product *= b1
        self.beta1_history.append(b1)
        with torch.no_grad():
            for p, m, v in zip(params, self.exp_avg, self.exp_avg_sq, strict=True):
                g = p.grad.detach()
                m.mul_(b1).add_(g, alpha=1.0 - b1)
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                denom = (v / bias_correction2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-self.lr / (1.0 - self.beta1_product))
        for p in params:
            p.grad = None  # free the double-backward graph
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        return {
            "exp_avg": [m.clone() for m in self.exp_avg],
            "exp_avg_sq": [v.clone() for v in self.exp_avg_sq],
            "step_count": self.step_count,
            "beta1_product": self.beta1_product,
            "beta1_history": list(self.beta1_history),
            "gate": self.gate.state_dict(),
            "gate_optimizer": self.gate_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for mine, saved in zip(
            self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"], strict=True
        ):
            mine.copy_(saved)
        self.step_count = int(state["step_count"])
        self.beta1_product = float(state["beta1_product"])
        self.beta1_history = list(state["beta1_history"])
        self.gate.load_state_dict(state["gate"])
        self.gate_optimizer.load_state_dict(state["gate_optimizer"])
