"""Solver settings as one value, so steppers and training loops pass them around (and change K)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from .operator import LinearOperator
from .solve import Monitor, SolveResult, solve


@dataclass(frozen=True)
class SolverConfig:
    """Everything :func:`~pdeaccel.linalg.solve` takes besides A, b and x0.

    Steppers accept a ``SolverConfig``; a training loop changes the budget with
    ``cfg.with_budget(K)`` at any step (no recompilation, nothing cached).
    """

    method: str = "cg"
    max_iters: int | None = None
    rtol: float = 1e-6
    atol: float = 0.0
    grad: str = "implicit"
    preconditioner: str | None = None
    adjoint_max_iters: int | None = None
    restart: int = 20
    omega: float = 1.0
    monitor: Monitor | None = None
    #: budget of the nonlinear (Picard) iterations a stepper wraps around its linear solves;
    #: ``None`` leaves the stepper's own default. Not a linear-solver setting: ``solve`` ignores it.
    nonlinear_iters: int | None = None

    def solve(self, A: LinearOperator | Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
              x0: torch.Tensor | None = None) -> SolveResult:
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "nonlinear_iters"}
        return solve(A, b, x0=x0, **settings)

    def with_budget(self, max_iters: int | None) -> "SolverConfig":
        return dataclasses.replace(self, max_iters=max_iters)

    def replace(self, **changes) -> "SolverConfig":
        return dataclasses.replace(self, **changes)
