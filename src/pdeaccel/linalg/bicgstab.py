"""(Preconditioned) BiCGStab for general non-singular A (van der Vorst, 1992).

Two matvecs per iteration, no transpose needed, smooth convergence on mildly non-symmetric
problems (advection–diffusion). Right preconditioning with M = diag(A) when requested:
``p̂ = M⁻¹p``, ``v = Ap̂``, ``α = ρ/⟨r̂,v⟩``, ``s = r − αv``, ``ŝ = M⁻¹s``, ``t = Aŝ``,
``ω = ⟨t,s⟩/⟨t,t⟩``, ``x += αp̂ + ωŝ``, ``r = s − ωt``, ``β = (ρ'/ρ)(α/ω)``, ``p = r + β(p − ωv)``.
Equivalent to ``scipy.sparse.linalg.bicgstab``.
"""

from __future__ import annotations

import torch

from ._batched import Budget, MethodOutput, axpy, bcast, bdot, bnorm, precondition, safe_div, sum_prod, xpay
from .operator import LinearOperator


def bicgstab(op: LinearOperator, b: torch.Tensor, x: torch.Tensor, r: torch.Tensor, budget: Budget,
             *, inv_diag: torch.Tensor | None = None, inplace: bool = False) -> MethodOutput:
    if inplace:  # the caller's x0 and r0 must not change; r̂ must not follow r
        x, r = x.clone(), r.clone()
    r_hat = r.clone() if inplace else r
    rho = alpha = omega = torch.ones(b.shape[0], dtype=b.dtype, device=b.device)
    v, p = torch.zeros_like(b), torch.zeros_like(b)  # distinct: p is updated in place
    iterations, res = budget.start(r)
    for _ in range(budget.max_iters):
        active, iterations, done = budget.advance(res, iterations)
        if done:
            break
        rho_new = bdot(r_hat, r)
        beta = safe_div(rho_new, rho) * safe_div(alpha, omega)
        p = xpay(r, bcast(beta, p), axpy(bcast(omega, v), v, p, inplace=inplace, value=-1.0), inplace=inplace)
        p_hat = precondition(inv_diag, p)
        v = op.matvec(p_hat)
        # a stopped sample keeps x and r (α = ω = 0) and a bounded p (β = 0 next time)
        alpha = safe_div(rho_new, bdot(r_hat, v), active)
        s = axpy(bcast(alpha, v), v, r, inplace=inplace, value=-1.0)  # r is not needed after s
        s_hat = precondition(inv_diag, s)
        t = op.matvec(s_hat)
        omega = safe_div(bdot(t, s), bdot(t, t), active)
        x = axpy(bcast(alpha, x), p_hat, x, inplace=inplace)
        x = axpy(bcast(omega, x), s_hat, x, inplace=inplace)
        r = axpy(bcast(omega, t), t, s, inplace=inplace, value=-1.0)
        rho = rho_new
        res = bnorm(r)
    return MethodOutput(x, iterations, res)


# ---- the compiled path (see _compiled.py): one iteration as a pure function of the state -------


def bicgstab_init(b: torch.Tensor, x: torch.Tensor, r: torch.Tensor) -> tuple:
    """State ``(x, r, p, v, ρ, α, ω, ‖r‖)`` before the first iteration (r̂ = r0 is a constant)."""
    one = torch.ones(b.shape[0], dtype=b.dtype, device=b.device)
    zero = torch.zeros_like(b)
    return x, r, zero, zero, one, one, one, sum_prod(r, r).sqrt()


def bicgstab_step(matvec, consts: tuple, state: tuple, active: torch.Tensor) -> tuple:
    """One iteration of :func:`bicgstab` without in-place updates (the body of the compiled loop);
    ``consts = (r̂, inv_diag)``."""
    r_hat, inv_diag = consts
    x, r, p, v, rho, alpha, omega, _ = state
    rho_new = sum_prod(r_hat, r)
    beta = safe_div(rho_new, rho) * safe_div(alpha, omega)
    p = r + bcast(beta, p) * (p - bcast(omega, v) * v)
    p_hat = precondition(inv_diag, p)
    v = matvec(p_hat)
    alpha = safe_div(rho_new, sum_prod(r_hat, v), active)
    s = r - bcast(alpha, v) * v
    s_hat = precondition(inv_diag, s)
    t = matvec(s_hat)
    omega = safe_div(sum_prod(t, s), sum_prod(t, t), active)
    x = x + bcast(alpha, x) * p_hat + bcast(omega, x) * s_hat
    r = s - bcast(omega, t) * t
    return x, r, p, v, rho_new, alpha, omega, sum_prod(r, r).sqrt()
