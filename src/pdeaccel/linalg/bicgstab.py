"""(Preconditioned) BiCGStab for general non-singular A (van der Vorst, 1992).

Two matvecs per iteration, no transpose needed, smooth convergence on mildly non-symmetric
problems (advection–diffusion). Right preconditioning with M = diag(A) when requested.
Equivalent to ``scipy.sparse.linalg.bicgstab``.
"""

from __future__ import annotations

import torch

from ._batched import Budget, MethodOutput, bcast, bdot, bnorm, safe_div
from .operator import LinearOperator


def bicgstab(op: LinearOperator, b: torch.Tensor, x: torch.Tensor, r: torch.Tensor, budget: Budget,
             *, inv_diag: torch.Tensor | None = None) -> MethodOutput:
    def precond(v):
        return v if inv_diag is None else inv_diag * v

    iterations = torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)
    r_hat = r
    rho = alpha = omega = torch.ones(b.shape[0], dtype=b.dtype, device=b.device)
    v = p = torch.zeros_like(b)
    res = bnorm(r)
    check = budget.checks_tolerance
    for _ in range(budget.max_iters):
        if check:
            active = res > budget.threshold
            if not bool(active.any()):
                break
            iterations = iterations + active.long()
        else:
            active = None
            iterations = iterations + 1
        rho_new = bdot(r_hat, r)
        beta = safe_div(rho_new, rho) * safe_div(alpha, omega)
        p = r + bcast(beta, p) * (p - bcast(omega, v) * v)
        p_hat = precond(p)
        v = op.matvec(p_hat)
        alpha = safe_div(rho_new, bdot(r_hat, v))
        s = r - bcast(alpha, v) * v
        s_hat = precond(s)
        t = op.matvec(s_hat)
        omega = safe_div(bdot(t, s), bdot(t, t))
        dx = bcast(alpha, x) * p_hat + bcast(omega, x) * s_hat
        r_new = s - bcast(omega, t) * t
        if active is not None:
            mask = bcast(active, x)
            dx = torch.where(mask, dx, torch.zeros_like(dx))
            r_new = torch.where(mask, r_new, r)
        x = x + dx
        r = r_new
        rho = rho_new
        res = bnorm(r)
    return MethodOutput(x, iterations, res)
