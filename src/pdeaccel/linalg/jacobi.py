"""Weighted Jacobi iteration.

``x_{k+1} = x_k + ω D⁻¹ (b − A x_k)`` with D the diagonal of A. Converges for strictly or
irreducibly diagonally dominant A (e.g. the shifted Laplacians of implicit heat steps) with
ω = 1; ω = 2/3 is the classical smoother. One matvec per iteration. scipy has no equivalent;
it is the solver of the PRDP paper's Poisson and heat experiments.
"""

from __future__ import annotations

import torch

from ._batched import Budget, MethodOutput, bcast, bnorm
from .operator import LinearOperator


def jacobi(op: LinearOperator, b: torch.Tensor, x: torch.Tensor, r: torch.Tensor, budget: Budget,
           *, omega: float = 1.0, inv_diag: torch.Tensor) -> MethodOutput:
    iterations = torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)
    res = bnorm(r)
    check = budget.checks_tolerance
    for _ in range(budget.max_iters):
        active = res > budget.threshold if check else None
        if check and not bool(active.any()):
            break
        step = omega * inv_diag * r
        if check:
            step = torch.where(bcast(active, x), step, torch.zeros_like(step))
            iterations = iterations + active.long()
        else:
            iterations = iterations + 1
        x = x + step
        r = b - op.matvec(x)
        res = bnorm(r)
    return MethodOutput(x, iterations, res)
