"""Weighted Jacobi iteration.

``x_{k+1} = x_k + ω D⁻¹ (b − A x_k)`` with D the diagonal of A. Converges for strictly or
irreducibly diagonally dominant A (e.g. the shifted Laplacians of implicit heat steps) with
ω = 1; ω = 2/3 is the classical smoother. One matvec per iteration. scipy has no equivalent;
it is the solver of the PRDP paper's Poisson and heat experiments.
"""

from __future__ import annotations

import torch

from ._batched import Budget, MethodOutput, axpy, bcast, bnorm, sum_prod
from .operator import LinearOperator


def jacobi(op: LinearOperator, b: torch.Tensor, x: torch.Tensor, r: torch.Tensor, budget: Budget,
           *, omega: float = 1.0, inv_diag: torch.Tensor, inplace: bool = False) -> MethodOutput:
    if inplace:  # the caller's x0 must not change
        x = x.clone()
    iterations, res = budget.start(r)
    step = omega * inv_diag
    for _ in range(budget.max_iters):
        active, iterations, done = budget.advance(res, iterations)
        if done:
            break
        r = torch.where(bcast(active, r), r, 0.0)  # a stopped sample keeps x
        x = axpy(step, r, x, inplace=inplace)
        r = b - op.matvec(x)  # never written into: a matvec may return (a view of) its input
        res = bnorm(r)
    return MethodOutput(x, iterations, res)


# ---- the compiled path (see _compiled.py): one iteration as a pure function of the state -------


def jacobi_init(b: torch.Tensor, x: torch.Tensor, r: torch.Tensor) -> tuple:
    """State ``(x, r, ‖r‖)`` before the first iteration."""
    return x, r, sum_prod(r, r).sqrt()


def jacobi_step(matvec, consts: tuple, state: tuple, active: torch.Tensor) -> tuple:
    """One iteration of :func:`jacobi` without in-place updates (the body of the compiled loop);
    ``consts = (b, ω·D⁻¹)``."""
    b, step = consts
    x, r, _ = state
    x = x + step * torch.where(bcast(active, r), r, 0.0)
    r = b - matvec(x)
    return x, r, sum_prod(r, r).sqrt()
