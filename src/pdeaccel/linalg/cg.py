"""(Preconditioned) conjugate gradients for symmetric positive-definite A.

Hestenes–Stiefel recurrences: ``α = ⟨r,z⟩/⟨p,Ap⟩``, ``x += αp``, ``r −= αAp``, ``z = M⁻¹r``,
``β = ⟨r',z'⟩/⟨r,z⟩``, ``p = z' + βp``. One matvec per iteration; the residual is the recursive
one. With M = I this is ``scipy.sparse.linalg.cg``; M = diag(A) gives Jacobi preconditioning.
"""

from __future__ import annotations

import torch

from ._batched import Budget, MethodOutput, axpy, bcast, bdot, bnorm, precondition, safe_div, sum_prod, xpay
from .operator import LinearOperator


def cg(op: LinearOperator, b: torch.Tensor, x: torch.Tensor, r: torch.Tensor, budget: Budget,
       *, inv_diag: torch.Tensor | None = None, inplace: bool = False) -> MethodOutput:
    if inplace:  # the caller's x0 and r0 must not change
        x, r = x.clone(), r.clone()
    iterations, res = budget.start(r)
    z = precondition(inv_diag, r)
    p = z.clone() if inplace else z  # p is overwritten in place, so it must not alias r or z
    rz = bdot(r, z)
    for _ in range(budget.max_iters):
        active, iterations, done = budget.advance(res, iterations)
        if done:
            break
        Ap = op.matvec(p)
        # a stopped sample keeps x and r (α = 0) and a bounded search direction (β = 0)
        a = bcast(safe_div(rz, bdot(p, Ap), active), x)
        x = axpy(a, p, x, inplace=inplace)
        r = axpy(a, Ap, r, inplace=inplace, value=-1.0)
        if inv_diag is None:
            z = r
        else:
            z = torch.mul(inv_diag, r, out=z) if inplace else inv_diag * r
        rz_new = bdot(r, z)
        beta = safe_div(rz_new, rz, active)
        p = xpay(z, bcast(beta, p), p, inplace=inplace)
        rz = rz_new
        # ‖r‖ = √⟨r,r⟩ saves a pass over r when there is no preconditioner
        res = torch.sqrt(rz) if inv_diag is None else bnorm(r)
    return MethodOutput(x, iterations, res)


# ---- the compiled path (see _compiled.py): one iteration as a pure function of the state -------


def cg_init(b: torch.Tensor, x: torch.Tensor, r: torch.Tensor, inv_diag: torch.Tensor | None) -> tuple:
    """State ``(x, r, p, ⟨r,z⟩, ‖r‖)`` before the first iteration."""
    z = precondition(inv_diag, r)
    rz = sum_prod(r, z)
    res = torch.sqrt(rz) if inv_diag is None else sum_prod(r, r).sqrt()
    return x, r, z, rz, res


def cg_step(matvec, consts: tuple, state: tuple, active: torch.Tensor) -> tuple:
    """One iteration of :func:`cg` without in-place updates or host synchronisation (the body of
    the compiled loop); ``consts = (inv_diag,)``."""
    (inv_diag,) = consts
    x, r, p, rz, _ = state
    Ap = matvec(p)
    a = bcast(safe_div(rz, sum_prod(p, Ap), active), x)
    x = x + a * p
    r = r - a * Ap
    z = precondition(inv_diag, r)
    rz_new = sum_prod(r, z)
    beta = safe_div(rz_new, rz, active)
    p = z + bcast(beta, p) * p
    res = torch.sqrt(rz_new) if inv_diag is None else sum_prod(r, r).sqrt()
    return x, r, p, rz_new, res
