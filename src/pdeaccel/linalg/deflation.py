"""Subdomain deflation of a symmetric stencil operator on a masked cell grid.

Used by the MAC flow solver's pressure solve (:class:`~pdeaccel.physics.incompressible.MACFlowSolver`):
the iteration count of CG on the deflated system depends on the block size, not on the resolution.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..stencils import shift
from .config import SolverConfig
from .operator import LinearOperator
from .solve import SolveResult


class SubdomainDeflation:
    """Subdomain deflation (Nicolaides 1987) of a symmetric (2d+1)-point stencil operator A on a
    masked cell grid (the MAC pressure operator).

    ``Z`` maps one value per block of ``block^d`` cells to the masked cells of that block; the
    coarse operator ``E = Zᵀ A Z`` (a weighted graph Laplacian of the blocks) is inverted once
    (pseudo-inverse: closed regions make it singular). CG then solves the deflated system
    ``P A x̂ = P b`` with ``P = I − A Z E⁺ Zᵀ`` (symmetric positive semi-definite), and
    ``x = Z E⁺ Zᵀ b + x̂ − Z E⁺ Zᵀ A x̂`` (:meth:`solve`). Its residual is exactly ``b − A x``,
    while its condition number depends on the block size instead of the grid size, so the
    iteration count stops growing with resolution. A by-product: ``Zᵀ(b − A x) = 0``, so the
    residual summed over every block (for the pressure: the divergence, hence the net flux through
    the domain boundary) vanishes to round-off.

    Args:
        center: A's diagonal, ``[B, 1, *cells]``.
        offdiag: ``{(axis, ±1): w}``, the weights of A's neighbour couplings (``A x = center·x −
            Σ w·x[neighbour]``); what the diagonal holds beyond the weights is a Dirichlet part.
        fluid: the mask of the cells A acts on (the deflation vectors vanish elsewhere).
        periodic: per axis, whether it wraps.
        block: the block edge in cells (grown until the coarse problem fits the limits below).
    """

    #: the coarse pseudo-inverse is dense (B·m² entries): blocks grow until m ≤ MAX_COARSE and
    #: B·m² ≤ MAX_ENTRIES
    MAX_COARSE = 2048
    MAX_ENTRIES = 2**24

    def __init__(self, center: torch.Tensor, offdiag: dict, fluid: torch.Tensor, periodic: Sequence[bool],
                 block: int) -> None:
        B = fluid.shape[0]
        shape = tuple(fluid.shape[2:])
        limit = min(self.MAX_COARSE, int(math.sqrt(self.MAX_ENTRIES / B)))
        while math.prod(-(-n // block) for n in shape) > limit and block < max(shape):
            block += 1
        self.block = block
        nb = [-(-n // block) for n in shape]
        idx = torch.zeros(shape, dtype=torch.long, device=fluid.device)
        stride = 1
        for a in reversed(range(len(shape))):
            ia = torch.arange(shape[a], device=fluid.device) // block
            view = [1] * len(shape)
            view[a] = shape[a]
            idx = idx + ia.view(view) * stride
            stride *= nb[a]
        m = stride
        self.index = idx.flatten()
        self.m = m
        self.fluid = fluid
        dtype = fluid.dtype
        E = torch.zeros(B, m * m, dtype=dtype, device=fluid.device)
        bi = self.index
        # Dirichlet (outflow) part of the diagonal: what the off-diagonal weights do not account for
        dirichlet = center.clone()
        for (d, s), w in offdiag.items():
            dirichlet = dirichlet - w
            if s < 0:
                continue
            # each free fluid–fluid face once: cell i and its +d neighbour j
            j = shift(idx, d, 1, periodic[d], fill=0).flatten()
            wf = w.flatten(1)
            cross = (bi != j)
            for I, J, sign in ((bi, bi, 1.0), (j, j, 1.0), (bi, j, -1.0), (j, bi, -1.0)):
                E.index_add_(1, (I * m + J)[cross], sign * wf[:, cross])
        E.index_add_(1, bi * m + bi, dirichlet.flatten(1))
        E = E.view(B, m, m)
        self.E_pinv = torch.linalg.pinv(E, hermitian=True)

    def restrict(self, r: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(r.shape[0], self.m, dtype=r.dtype, device=r.device)
        return out.index_add_(1, self.index, r.flatten(1))

    def prolong(self, c: torch.Tensor) -> torch.Tensor:
        return c[:, self.index].view_as(self.fluid) * self.fluid

    def correction(self, r: torch.Tensor) -> torch.Tensor:
        """``Z E⁺ Zᵀ r``."""
        c = torch.einsum("bij,bj->bi", self.E_pinv, self.restrict(r))
        return self.prolong(c)

    def solve(self, config: SolverConfig, matvec: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, *,
              x0: torch.Tensor, diagonal: torch.Tensor) -> tuple[SolveResult, torch.Tensor]:
        """Solve ``A x = rhs`` (``A`` = ``matvec``) through the deflated system with ``config``
        (``diagonal``: A's, for a Jacobi preconditioner). Returns the deflated solve's result
        (iterations, residual) and the solution ``x``."""
        def deflated(x):
            y = matvec(x)
            return y - matvec(self.correction(y))

        op = LinearOperator(deflated, diagonal=diagonal, symmetric=True)
        result = config.solve(op, rhs - matvec(self.correction(rhs)), x0=x0)
        xh = result.solution
        return result, self.correction(rhs) + xh - self.correction(matvec(xh))
