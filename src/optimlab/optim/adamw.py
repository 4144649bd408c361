"""AdamW: Adam with weight decay decoupled from the gradient (Loshchilov and Hutter, 2019).

The decay shrinks the parameters directly, theta <- theta (1 - lr lambda), before the Adam
step, instead of adding lambda theta to the gradient where the adaptive scaling would distort
it. The update itself is Adam's functional core (optimlab.optim.adam).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from optimlab.optim._common import Closure, ParamsT, evaluate
from optimlab.optim.adam import (
    Betas,
    adam_group_step,
    check_adam_arguments,
    check_compile_option,
)


class AdamW(Optimizer):
    """AdamW with torch.optim.AdamW's arguments, defaults (weight_decay=1e-2), error messages
    and state ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"). `capturable`,
    `differentiable` and `fused` are not offered; `compile=True` (ours) is Adam's."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: Betas = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        compile: bool = False,
    ) -> None:
        check_adam_arguments(lr, betas, eps, weight_decay)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "decoupled_weight_decay": True,
            "compile": compile,
        }
        super().__init__(params, defaults)
        check_compile_option(self, foreach, compile)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Keep the decay decoupled whatever a loaded state dict says (e.g. one saved by an
        Adam), as torch.optim.AdamW does; one saved without "compile" (torch's) keeps this
        optimizer's choice. `load_state_dict` ends here."""
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
            group.setdefault("compile", self.defaults.get("compile", False))

    @torch.no_grad()
    def step(self, closure: Closure = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = evaluate(closure)
        for group in self.param_groups:
            adam_group_step(self.state, group, "AdamW")
        return loss
