"""A shared base for the trainer's toy tasks in the tests: one parameter tensor ``w``, the linear
budget K and the task protocol's bookkeeping (parameters, state_dict, load_state_dict)."""

from __future__ import annotations

import torch


class OneParameterTask:
    budgets = ("linear",)

    def __init__(self, w: torch.Tensor) -> None:
        self.w = torch.nn.Parameter(w)

    def parameters(self):
        return [self.w]

    def state_dict(self):
        return {"w": self.w.detach().clone()}

    def load_state_dict(self, s):
        with torch.no_grad():
            self.w.copy_(s["w"])
