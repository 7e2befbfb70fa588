"""Implicit time stepping of the heat (diffusion) equation."""

from __future__ import annotations

import math

import torch

from ..grid import Grid
from ..linalg import LinearOperator, SolverConfig
from ..stencils import laplacian, laplacian_diagonal

HEAT_SCHEMES = ("implicit_euler", "crank_nicolson")

#: fraction of the Laplacian treated implicitly by each scheme (the θ of the θ-method)
_IMPLICIT_FRACTION = {"implicit_euler": 1.0, "crank_nicolson": 0.5}


class HeatStepper:
    """One implicit step of the heat equation ``u_t = ν Δu`` on a :class:`~pdeaccel.grid.Grid`.

    With ``L`` the second-order (2d+1)-point Laplacian of the grid (homogeneous boundary
    conditions of the grid's kind on every axis) a step solves

    * ``"implicit_euler"`` (BTCS, first order in time): ``(I − νΔt L) u^{n+1} = u^n``
    * ``"crank_nicolson"`` (second order in time): ``(I − ½νΔt L) u^{n+1} = (I + ½νΔt L) u^n``

    Both system matrices are symmetric positive definite, so CG, Jacobi (diagonally dominant),
    BiCGSTAB and GMRES all apply. A discrete eigenmode of ``L`` with eigenvalue ``λ ≤ 0`` is
    multiplied per step by exactly :meth:`amplification` ``(λ)``.

    Every channel of a ``[batch, channel, *grid.shape]`` field diffuses independently. The step
    is differentiable (through :meth:`SolverConfig.solve`, both grad modes) in the state and in
    ``nu`` when ``nu`` is a 0-d tensor that requires grad.

    Args:
        grid: the grid (any boundary kinds, 1 to 3 axes).
        nu: diffusivity ν > 0, a float or a 0-d tensor.
        dt: time step Δt > 0.
        scheme: ``"implicit_euler"`` or ``"crank_nicolson"``.
    """

    def __init__(self, grid: Grid, nu: float | torch.Tensor, dt: float,
                 scheme: str = "implicit_euler") -> None:
        if not isinstance(grid, Grid):
            raise TypeError(f"grid must be a pdeaccel Grid, got {type(grid).__name__}.")
        if scheme not in HEAT_SCHEMES:
            raise ValueError(f"Unknown heat scheme {scheme!r}; choose one of {', '.join(HEAT_SCHEMES)}.")
        self.grid = grid
        self.nu = positive_scalar(nu, "nu")
        self.dt = float(positive_scalar(dt, "dt", allow_tensor=False))
        self.scheme = scheme
        self._theta = _IMPLICIT_FRACTION[scheme]
        # beyond 1/eps of float64 the identity of I + ν·Δt·(−Δ_h) is lost in rounding: the system is
        # numerically singular (periodic grids: the constant mode) and CG returns NaN
        stiffness = float(torch.as_tensor(self.nu).max()) * self.dt / min(grid.spacing) ** 2
        if stiffness > 1e15:
            raise ValueError(f"nu·dt/h² = {stiffness:.3g} is above 1e15: the implicit heat step is numerically "
                             "singular in floating point; use a smaller dt (or nu).")

    def operator(self, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> LinearOperator:
        """The step's system matrix ``I − θνΔt L`` (θ = 1 BTCS, ½ CN), symmetric, with its diagonal.

        ``dtype``/``device`` are those of the fields it will act on (they fix the diagonal's;
        default: torch's default dtype on the CPU).
        """
        coeff = self._theta * self.nu * self.dt
        grid = self.grid
        dtype = torch.get_default_dtype() if dtype is None else dtype

        def matvec(x: torch.Tensor) -> torch.Tensor:
            return x - coeff * laplacian(x, grid)

        def diagonal() -> torch.Tensor:
            return 1.0 - coeff * laplacian_diagonal(grid, dtype).to(device)

        return LinearOperator(matvec, diagonal=diagonal, symmetric=True, shape=grid.shape)

    def rhs(self, u: torch.Tensor) -> torch.Tensor:
        """Right-hand side from ``u^n``: ``u^n`` (BTCS) or ``u^n + ½νΔt L u^n`` (CN)."""
        self.grid.check_field(u, "u")
        explicit = 1.0 - self._theta
        if explicit == 0.0:
            return u
        return u + (explicit * self.nu * self.dt) * laplacian(u, self.grid)

    def __call__(self, u: torch.Tensor, solver: SolverConfig, x0: torch.Tensor | None = None) -> torch.Tensor:
        """``u^{n+1}`` from ``u^n``; the solve starts from ``x0`` (default ``u^n``, a warm start)."""
        self.grid.check_field(u, "u")
        check_solver(solver)
        if x0 is not None:
            self.grid.check_field(x0, "x0")
            if x0.shape != u.shape:
                raise ValueError(f"x0 must have the shape of u {list(u.shape)}, got {list(x0.shape)}.")
        op = self.operator(u.dtype, u.device)
        return solver.solve(op, self.rhs(u), u if x0 is None else x0).solution

    def amplification(self, eigenvalue_of_L: float | torch.Tensor) -> float | torch.Tensor:
        """Exact per-step factor of a discrete eigenmode of ``L`` with eigenvalue ``λ``.

        ``1/(1 − νΔtλ)`` (BTCS) or ``(1 + ½νΔtλ)/(1 − ½νΔtλ)`` (CN).
        """
        c = self.nu * self.dt * eigenvalue_of_L
        return (1.0 + (1.0 - self._theta) * c) / (1.0 - self._theta * c)


def positive_scalar(value: float | torch.Tensor, name: str, *, allow_tensor: bool = True) -> float | torch.Tensor:
    """Check a physical parameter is a finite number > 0 (optionally a 0-d tensor, kept as is
    so gradients can reach it) and return it."""
    if isinstance(value, torch.Tensor):
        if not allow_tensor:
            raise TypeError(f"{name} must be a Python number, got a tensor.")
        if value.dim() != 0 or not value.is_floating_point():
            raise ValueError(
                f"{name} must be a float or a 0-d floating-point tensor, got a tensor of shape "
                f"{list(value.shape)} and dtype {value.dtype}."
            )
        number = float(value.detach())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__} ({value!r}).")
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be finite and > 0, got {number!r}.")
    return value


def check_solver(solver: SolverConfig) -> None:
    if not isinstance(solver, SolverConfig):
        raise TypeError(
            f"solver must be a pdeaccel SolverConfig (e.g. SolverConfig(method='cg', max_iters=50)), "
            f"got {type(solver).__name__}."
        )
