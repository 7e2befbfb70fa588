"""Restarted GMRES(m) for general non-singular A (Saad & Schultz, 1986).

Each *cycle* builds an m-step Arnoldi basis of the Krylov space of the current residual
(modified Gram–Schmidt), reduces the Hessenberg least-squares problem with Givens rotations and
updates x; one cycle costs m matvecs. **The iteration budget counts cycles**, as
``scipy.sparse.linalg.gmres(maxiter=...)`` and the PRDP paper's Navier–Stokes experiment do.
Right preconditioning (x = M⁻¹y) keeps the reported residual the true one.
"""

from __future__ import annotations

import torch

from ._batched import Budget, MethodOutput, bcast, bdot, bnorm, safe_div
from .operator import LinearOperator


def gmres(op: LinearOperator, b: torch.Tensor, x: torch.Tensor, r: torch.Tensor, budget: Budget,
          *, restart: int = 20, inv_diag: torch.Tensor | None = None) -> MethodOutput:
    def precond(v):
        return v if inv_diag is None else inv_diag * v

    iterations = torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)
    res = bnorm(r)
    check = budget.checks_tolerance
    for cycle in range(budget.max_iters):
        if cycle > 0:
            r = b - op.matvec(x)
            res = bnorm(r)
        if check:
            active = res > budget.threshold
            if not bool(active.any()):
                break
            iterations = iterations + active.long()
        else:
            active = None
            iterations = iterations + 1
        beta = res
        basis = [r * bcast(safe_div(torch.ones_like(beta), beta), r)]
        # columns of the rotated Hessenberg matrix R (upper triangular), Givens (c, s), and g
        R_cols: list[list[torch.Tensor]] = []
        cs: list[torch.Tensor] = []
        sn: list[torch.Tensor] = []
        g = [beta]
        for j in range(restart):
            w = op.matvec(precond(basis[j]))
            h = []
            for i in range(j + 1):
                hij = bdot(w, basis[i])
                w = w - bcast(hij, w) * basis[i]
                h.append(hij)
            h_next = bnorm(w)
            basis.append(w * bcast(safe_div(torch.ones_like(h_next), h_next), w))
            for i in range(j):  # earlier rotations applied to the new column
                hi, hi1 = h[i], h[i + 1]
                h[i] = cs[i] * hi + sn[i] * hi1
                h[i + 1] = -sn[i] * hi + cs[i] * hi1
            denom = torch.sqrt(h[j] * h[j] + h_next * h_next)
            c = torch.where(denom == 0, torch.ones_like(denom), safe_div(h[j], denom))
            s = safe_div(h_next, denom)
            h[j] = denom
            cs.append(c)
            sn.append(s)
            g.append(-s * g[j])
            g[j] = c * g[j]
            R_cols.append(h)
            if check and not bool((g[j + 1].abs() > budget.threshold).any()):
                break
        m = len(R_cols)
        y: list[torch.Tensor] = [torch.zeros_like(beta)] * m
        for i in range(m - 1, -1, -1):  # back substitution R y = g
            acc = g[i]
            for k in range(i + 1, m):
                acc = acc - R_cols[k][i] * y[k]
            y[i] = safe_div(acc, R_cols[i][i])
        update = sum(bcast(y[i], x) * basis[i] for i in range(m))
        dx = precond(update)
        if active is not None:
            dx = torch.where(bcast(active, x), dx, torch.zeros_like(dx))
        x = x + dx
    res = bnorm(b - op.matvec(x))
    return MethodOutput(x, iterations, res)
