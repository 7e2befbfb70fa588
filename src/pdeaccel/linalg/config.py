"""Solver settings as one value, so steppers and training loops pass them around (and change K)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from ._compiled import validate_setting as validate_compile_setting
from .operator import LinearOperator
from .solve import Monitor, SolveResult, check_settings, solve


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
    #: run the solver loop compiled (``torch.compile``; K changes never recompile): ``"auto"``
    #: (compile once the solves of an operator and shape would have repaid the compile time),
    #: ``True`` (from the first solve) or ``False`` (always eager, the default: the compile time was
    #: not repaid within a PRDP run of heat-2d, and a run that switches mid-way is not bit-identical
    #: after a resume). See :func:`~pdeaccel.linalg.solve`.
    compile: bool | str = False

    def __post_init__(self) -> None:
        # fail where the settings are made, not at the first solve deep inside a training step
        check_settings(self.method, self.max_iters, self.rtol, self.atol, self.grad, self.preconditioner,
                       self.adjoint_max_iters, self.restart, self.omega)
        validate_compile_setting(self.compile)
        if self.monitor is not None and not callable(self.monitor):
            raise TypeError(f"monitor must be callable(direction, method, iterations), got {type(self.monitor).__name__}.")

    def solve(self, A: LinearOperator | Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
              x0: torch.Tensor | None = None) -> SolveResult:
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return solve(A, b, x0=x0, **settings)

    def with_budget(self, max_iters: int | None) -> "SolverConfig":
        return dataclasses.replace(self, max_iters=max_iters)

    def replace(self, **changes) -> "SolverConfig":
        return dataclasses.replace(self, **changes)
