"""(Preconditioned) BiCGStab for general non-singular A (van der Vorst, 1992).

Two matvecs per iteration, no transpose needed, smooth convergence on mildly non-symmetric
problems (advection–diffusion). Right preconditioning with M = diag(A) when requested:
``p̂ = M⁻¹p``, ``v = Ap̂``, ``α = ρ/⟨r̂,v⟩``, ``s = r − αv``, ``ŝ = M⁻¹s``, ``t = Aŝ``,
``ω = ⟨t,s⟩/⟨t,t⟩``, ``x += αp̂ + ωŝ``, ``r = s − ωt``, ``β = (ρ'/ρ)(α/ω)``, ``p = r + β(p − ωv)``.
Equivalent to ``scipy.sparse.linalg.bicgstab``.
"""

from __future__ import annotations

import torch

from ._batched import Budget, MethodOutput, axpy, bcast, bdot, bnorm, safe_div, xpay
from .operator import LinearOperator


def bicgstab(op: LinearOperator, b: torch.Tensor, x: torch.Tensor, r: torch.Tensor, budget: Budget,
             *, inv_diag: torch.Tensor | None = None, inplace: bool = False) -> MethodOutput:
    def precond(v):
        return v if inv_diag is None else inv_diag * v

    if inplace:  # the caller's x0 and r0 must not change; r̂ must not follow r
        x, r = x.clone(), r.clone()
    r_hat = r.clone() if inplace else r
    rho = alpha = omega = torch.ones(b.shape[0], dtype=b.dtype, device=b.device)
    v, p = torch.zeros_like(b), torch.zeros_like(b)  # distinct: p is updated in place
    iterations = torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)
    res = bnorm(r)
    for _ in range(budget.max_iters):
        active, iterations, done = budget.advance(res, iterations)
        if done:
            break
        rho_new = bdot(r_hat, r)
        beta = safe_div(rho_new, rho) * safe_div(alpha, omega)
        p = xpay(r, bcast(beta, p), axpy(bcast(omega, v), v, p, inplace=inplace, value=-1.0), inplace=inplace)
        p_hat = precond(p)
        v = op.matvec(p_hat)
        # a stopped sample keeps x and r (α = ω = 0) and a bounded p (β = 0 next time)
        alpha = safe_div(rho_new, bdot(r_hat, v), active)
        s = axpy(bcast(alpha, v), v, r, inplace=inplace, value=-1.0)  # r is not needed after s
        s_hat = precond(s)
        t = op.matvec(s_hat)
        omega = safe_div(bdot(t, s), bdot(t, t), active)
        x = axpy(bcast(alpha, x), p_hat, x, inplace=inplace)
        x = axpy(bcast(omega, x), s_hat, x, inplace=inplace)
        r = axpy(bcast(omega, t), t, s, inplace=inplace, value=-1.0)
        rho = rho_new
        res = bnorm(r)
    return MethodOutput(x, iterations, res)
