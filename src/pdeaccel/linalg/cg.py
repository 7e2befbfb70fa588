"""(Preconditioned) conjugate gradients for symmetric positive-definite A.

Hestenes–Stiefel recurrences: ``α = ⟨r,z⟩/⟨p,Ap⟩``, ``x += αp``, ``r −= αAp``, ``z = M⁻¹r``,
``β = ⟨r',z'⟩/⟨r,z⟩``, ``p = z' + βp``. One matvec per iteration; the residual is the recursive
one. With M = I this is ``scipy.sparse.linalg.cg``; M = diag(A) gives Jacobi preconditioning.
"""

from __future__ import annotations

import torch

from ._batched import Budget, MethodOutput, bcast, bdot, bnorm, safe_div
from .operator import LinearOperator


def cg(op: LinearOperator, b: torch.Tensor, x: torch.Tensor, r: torch.Tensor, budget: Budget,
       *, inv_diag: torch.Tensor | None = None) -> MethodOutput:
    iterations = torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)
    z = r if inv_diag is None else inv_diag * r
    p = z
    rz = bdot(r, z)
    res = bnorm(r)
    check = budget.checks_tolerance
    for _ in range(budget.max_iters):
        if check:
            active = res > budget.threshold
            if not bool(active.any()):
                break
            iterations = iterations + active.long()
        else:
            iterations = iterations + 1
        Ap = op.matvec(p)
        alpha = safe_div(rz, bdot(p, Ap))
        if check:
            alpha = torch.where(active, alpha, torch.zeros_like(alpha))
        x = x + bcast(alpha, x) * p
        r = r - bcast(alpha, r) * Ap
        z = r if inv_diag is None else inv_diag * r
        rz_new = bdot(r, z)
        beta = safe_div(rz_new, rz)
        p = z + bcast(beta, p) * p
        rz = rz_new
        res = bnorm(r)
    return MethodOutput(x, iterations, res)
