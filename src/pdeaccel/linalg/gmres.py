"""Restarted GMRES(m) for general non-singular A (Saad & Schultz, 1986).

Each *cycle* builds an m-step Arnoldi basis of the Krylov space of the current residual
(modified Gram–Schmidt), reduces the Hessenberg least-squares problem with Givens rotations and
updates x; one cycle costs m matvecs plus one for the new residual. **The iteration budget counts
cycles**, as ``scipy.sparse.linalg.gmres(maxiter=...)`` and the PRDP paper's Navier–Stokes
experiment do. Right preconditioning (x = M⁻¹y) keeps the reported residual the true one.
Within a cycle each sample stops extending its basis once its residual estimate meets the
tolerance (or round-off), so a sample's result does not depend on the rest of the batch.
"""

from __future__ import annotations

import torch

from ._batched import Budget, MethodOutput, axpy, bcast, bdot, bnorm, precondition, safe_div, sum_prod
from .operator import LinearOperator


def gmres(op: LinearOperator, b: torch.Tensor, x: torch.Tensor, r: torch.Tensor, budget: Budget,
          *, restart: int = 20, inv_diag: torch.Tensor | None = None, inplace: bool = False) -> MethodOutput:
    iterations, res = budget.start(r)
    for _ in range(budget.max_iters):
        active, iterations, done = budget.advance(res, iterations)
        if done:
            break
        cycle = _Cycle(r, res, active)
        for j in range(restart):
            w = op.matvec(precondition(inv_diag, cycle.basis[j]))
            h = []
            for i in range(j + 1):
                hij = bdot(w, cycle.basis[i])
                # the first update is out of place: a matvec may return (a view of) its input
                w = axpy(bcast(hij, w), cycle.basis[i], w, inplace=inplace and i > 0, value=-1.0)
                h.append(hij)
            cycle.add_column(w, h, bnorm(w), budget.stop_level)
            if budget.checks_tolerance and not bool(cycle.extending.any()):
                break
        y, basis = cycle.coefficients(), cycle.basis
        update = basis[0] * bcast(y[0], x)
        for i in range(1, len(y)):
            update = axpy(bcast(y[i], x), basis[i], update, inplace=inplace)
        x = x + precondition(inv_diag, update)
        r = b - op.matvec(x)
        res = bnorm(r)
    return MethodOutput(x, iterations, res)


class _Cycle:
    """The least-squares side of one GMRES cycle, shared by the eager and the compiled path.

    Holds the Arnoldi basis, the columns of the rotated Hessenberg matrix R (upper triangular),
    the Givens rotations (c, s), the rotated right-hand side g, and which samples still extend
    their basis at each step. The caller orthogonalises each new vector against ``basis``."""

    def __init__(self, r: torch.Tensor, beta: torch.Tensor, active: torch.Tensor) -> None:
        # a stopped sample gets a zero basis (its residual may be too small to normalise)
        inv_beta = safe_div(torch.ones_like(beta), beta, active)
        self.beta = beta
        self.basis = [r * bcast(inv_beta, r)]
        self.R_cols: list[list[torch.Tensor]] = []
        self.cs: list[torch.Tensor] = []
        self.sn: list[torch.Tensor] = []
        self.g = [beta]
        self.extends: list[torch.Tensor] = []
        self.extending = active

    def add_column(self, w: torch.Tensor, h: list[torch.Tensor], h_next: torch.Tensor,
                   stop_level: torch.Tensor) -> None:
        """Step j: ``w`` orthogonalised against the basis, ``h`` its j + 1 projections, ``h_next = ‖w‖``."""
        j = len(h) - 1
        cs, sn, g = self.cs, self.sn, self.g
        self.basis.append(w * bcast(safe_div(torch.ones_like(h_next), h_next), w))
        for i in range(j):  # earlier rotations applied to the new column
            hi, hi1 = h[i], h[i + 1]
            h[i] = cs[i] * hi + sn[i] * hi1
            h[i + 1] = -sn[i] * hi + cs[i] * hi1
        denom = _hypot(h[j], h_next)
        c = torch.where(denom == 0, 1.0, safe_div(h[j], denom))
        s = safe_div(h_next, denom)
        h[j] = denom
        cs.append(c)
        sn.append(s)
        g.append(-s * g[j])
        g[j] = c * g[j]
        self.R_cols.append(h)
        self.extends.append(self.extending)
        self.extending = self.extending & (g[j + 1].abs() > stop_level)

    def coefficients(self) -> list[torch.Tensor]:
        """y with R y = g, each sample over its own steps (back substitution)."""
        R_cols, g, m = self.R_cols, self.g, len(self.R_cols)
        y: list[torch.Tensor] = [torch.zeros_like(self.beta)] * m
        for i in range(m - 1, -1, -1):
            acc = g[i]
            for k in range(i + 1, m):
                acc = acc - R_cols[k][i] * y[k]
            y[i] = safe_div(acc, R_cols[i][i], self.extends[i])
        return y


def _hypot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """√(a² + b²) with a zero (not NaN) gradient where a = b = 0, i.e. after an exhausted Krylov space."""
    sq = a * a + b * b
    positive = sq > 0
    root = torch.sqrt(torch.where(positive, sq, 1.0))
    return torch.where(positive, root, 0.0)


# ---- the compiled path (see _compiled.py): one cycle as a pure function of the state -----------


def gmres_init(b: torch.Tensor, x: torch.Tensor, r: torch.Tensor) -> tuple:
    """State ``(x, r, ‖r‖)`` before the first cycle."""
    return x, r, sum_prod(r, r).sqrt()


def gmres_cycle(matvec, consts: tuple, state: tuple, active: torch.Tensor, *, restart: int) -> tuple:
    """One restart cycle of :func:`gmres` without in-place updates or host synchronisation (the
    body of the compiled loop); ``consts = (b, inv_diag, stop_level)``.

    All ``restart`` Arnoldi steps are traced; a sample that has stopped extending its basis gets
    zero weights for the further steps, exactly as when the eager cycle ends early, so both give
    the same iterate."""
    b, inv_diag, stop_level = consts
    x, r, res = state
    cycle = _Cycle(r, res, active)
    for j in range(restart):
        w = matvec(precondition(inv_diag, cycle.basis[j]))
        h = []
        for i in range(j + 1):
            hij = sum_prod(w, cycle.basis[i])
            w = w - bcast(hij, w) * cycle.basis[i]
            h.append(hij)
        cycle.add_column(w, h, sum_prod(w, w).sqrt(), stop_level)
    y, basis = cycle.coefficients(), cycle.basis
    update = basis[0] * bcast(y[0], x)
    for i in range(1, len(y)):
        update = update + bcast(y[i], x) * basis[i]
    x = x + precondition(inv_diag, update)
    r = b - matvec(x)
    return x, r, sum_prod(r, r).sqrt()
