"""scipy.sparse assemblies of our stencils, written independently of pdeaccel, for the tests."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def laplacian_1d_matrix(kind: str, n: int, h: float) -> sp.csr_matrix:
    """3-point Laplacian on n unknowns of a periodic, dirichlet or neumann axis (see Grid's layout)."""
    m = sp.diags([np.ones(n - 1), np.full(n, -2.0), np.ones(n - 1)], [-1, 0, 1], format="lil")
    if kind == "periodic":
        m[0, n - 1] += 1.0
        m[n - 1, 0] += 1.0
    if kind == "neumann":
        m[0, 0] += 1.0
        m[n - 1, n - 1] += 1.0
    return (m / h**2).tocsr()


def laplacian_matrix(grid) -> sp.csr_matrix:
    """Σ_d I ⊗ … ⊗ L_d ⊗ … ⊗ I for C-ordered flattening (first axis slowest)."""
    total = sp.csr_matrix((grid.numel, grid.numel))
    for axis, (n, h, kind) in enumerate(zip(grid.shape, grid.spacing, grid.boundary)):
        term = sp.identity(1, format="csr")
        for other, m in enumerate(grid.shape):
            term = sp.kron(term, laplacian_1d_matrix(kind, n, h) if other == axis else sp.identity(m), format="csr")
        total = total + term
    return total.tocsr()
