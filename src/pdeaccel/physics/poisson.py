"""The Poisson equation ``−Δu = f`` and the PRDP paper's Poisson inverse problem."""

from __future__ import annotations

import math

import torch

from ..grid import Grid
from ..linalg import LinearOperator, SolveResult, SolverConfig
from ..stencils import laplacian, laplacian_diagonal
from .heat import check_solver


def poisson_operator(grid: Grid, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> LinearOperator:
    """``A = −Δ_h``, the negated (2d+1)-point Laplacian of the grid, with its diagonal.

    Symmetric; positive definite as soon as one axis is Dirichlet. With only periodic/Neumann
    axes it is semi-definite with the constants as null space (see :func:`solve_poisson`).
    ``dtype``/``device`` are those of the fields it will act on (they fix the diagonal's).
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be a pdeaccel Grid, got {type(grid).__name__}.")
    dtype = torch.get_default_dtype() if dtype is None else dtype

    def matvec(x: torch.Tensor) -> torch.Tensor:
        return -laplacian(x, grid)

    def diagonal() -> torch.Tensor:
        return -laplacian_diagonal(grid, dtype).to(device)

    return LinearOperator(matvec, diagonal=diagonal, symmetric=True, shape=grid.shape)


def solve_poisson(f: torch.Tensor, grid: Grid, solver: SolverConfig, x0: torch.Tensor | None = None) -> SolveResult:
    """Solve ``−Δ_h u = f`` (homogeneous conditions of the grid's kind) for a batch of sources.

    ``f`` is ``[batch, channel, *grid.shape]``; the result's ``solution`` has the same shape and
    the solve is differentiable in ``f`` (both grad modes). With no Dirichlet axis the problem
    is singular: ``f`` must have zero mean per sample and channel (checked), and the solution is
    fixed only up to a constant (Krylov methods keep the mean of ``x0``, zero by default).
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be a pdeaccel Grid, got {type(grid).__name__}.")
    grid.check_field(f, "f")
    check_solver(solver)
    if x0 is not None:
        grid.check_field(x0, "x0")
    if "dirichlet" not in grid.boundary:
        _check_zero_mean(f, grid)
    return solver.solve(poisson_operator(grid, f.dtype, f.device), f, x0)


def _check_zero_mean(f: torch.Tensor, grid: Grid) -> None:
    space = tuple(range(2, f.dim()))
    mean = f.detach().mean(dim=space).abs()
    scale = f.detach().abs().amax(dim=space)
    # far above the round-off of a float32 mean, far below any real constant part
    tol = math.sqrt(torch.finfo(f.dtype).eps) * scale
    if bool((mean > tol).any()):
        raise ValueError(
            f"with only {'/'.join(sorted(set(grid.boundary)))} axes −Δu = f has a solution only if f "
            f"has zero mean; got per-sample means up to {float(mean.max()):.3e} (|f| up to "
            f"{float(scale.max()):.3e}). Subtract the mean of f or make an axis Dirichlet."
        )


def sine_series_source(theta: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``f(x) = Σ_k θ_k sin(2π k x / L)``, k = 1..P, at the unknowns of a 1D grid.

    ``theta`` is ``[batch, P]``; the result is ``[batch, 1, N]`` and differentiable in ``theta``.
    With L = 1, Dirichlet, N = 30 and P = 1 this is the PRDP paper's Poisson inverse problem
    ``u'' = −θ sin(2πx)``, ``u(0) = u(1) = 0``, i.e. ``solve_poisson(sine_series_source(θ), …)``.
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be a pdeaccel Grid, got {type(grid).__name__}.")
    if grid.ndim != 1:
        raise ValueError(f"sine_series_source needs a 1D grid, got a {grid.ndim}D grid of shape {grid.shape}.")
    if not isinstance(theta, torch.Tensor):
        raise TypeError(f"theta must be a torch.Tensor of shape [batch, P], got {type(theta).__name__}.")
    if theta.dim() != 2 or theta.shape[1] < 1 or theta.shape[0] < 1:
        raise ValueError(f"theta must have shape [batch, P] with P >= 1 coefficients, got {list(theta.shape)}.")
    if not theta.is_floating_point():
        raise TypeError(f"theta must be a floating-point tensor, got dtype {theta.dtype}.")
    x = grid.axis_coordinates(0, theta.dtype).to(theta.device) / grid.extent[0]
    k = torch.arange(1, theta.shape[1] + 1, dtype=theta.dtype, device=theta.device)
    basis = torch.sin(2 * math.pi * k[:, None] * x[None, :])  # [P, N]
    return (theta @ basis)[:, None, :]
