"""Incompressible Navier–Stokes in a periodic 2D box on the staggered (MAC) grid.

Layout (that of :mod:`pdeaccel.stencils`): the box ``[0, L)²`` has N×N cells of width
``h = L/N``. Pressure ``p[i, j]`` sits at the cell centre ``((i+½)h, (j+½)h)``; the velocity is
one ``[B, 2, N, N]`` tensor whose channel 0 is ``u[i, j]`` on the x-face ``(i·h, (j+½)h)`` and
whose channel 1 is ``v[i, j]`` on the y-face ``((i+½)h, j·h)`` (face k is the *left* face of cell
k). Discrete operators, all periodic:

* divergence ``D w = (u[i+1,j] − u[i,j])/h + (v[i,j+1] − v[i,j])/h`` (cells ← faces),
* pressure gradient ``G p = ((p[i,j] − p[i−1,j])/h, (p[i,j] − p[i,j−1])/h)`` (faces ← cells),
  so ``G = −Dᵀ`` and ``D G`` is the 5-point Laplacian,
* ``L``: the 5-point Laplacian of each face array,
* ``A(a) w``: first-order upwind ``(a·∇)w`` for each component, with the advecting velocity
  ``a`` interpolated to that component's faces (the own component as is, the other one as the
  mean of its four neighbouring faces).

Both steppers are implicit Euler in time with the advection linearised at ``u^n``; the coupled
one can iterate that linearisation (Picard) towards the fully implicit step.
"""

from __future__ import annotations


import torch

from ..grid import Grid
from ..linalg import LinearOperator, SolverConfig
from ..stencils import laplacian, mac_divergence, mac_gradient
from .._checks import integer, real
from .burgers import MAX_PICARD
# the periodic fields live in ns_fields; these names stay importable from here
from .ns_fields import decaying_turbulence, downsample_velocity, taylor_green  # noqa: F401

NS_METHODS = ("coupled", "projection")

#: solver methods that can handle each linear system (see the class docstring for why)
_COUPLED_SOLVERS = ("gmres", "bicgstab")
_MOMENTUM_SOLVERS = ("jacobi", "bicgstab", "gmres")


class NavierStokes2D:
    """Implicit steps of the incompressible Navier–Stokes equations in a periodic box.

    Integrates (density 1)::

        ∂u/∂t + (u·∇)u = −∇p + ν Δu,    ∇·u = 0,    on [0, L)², periodic,

    on the MAC grid described in the module docstring, one implicit Euler step of size ``dt`` per
    call, with the advection linearised at the old velocity ``u^n`` (one Picard step) and
    discretised by first-order upwinding. The coupled scheme can take more Picard steps
    (``picard_iterations``, of the stepper or of a call): iterate ``k`` solves the saddle-point
    system below linearised at ``w^k`` (``w^0 = u^n``) for ``(w^{k+1}, p^{k+1})``, warm-started
    from ``(w^k, p^k)``; their fixed point is the fully implicit step with ``A(u^{n+1})``, whose
    distance :meth:`nonlinear_residual` measures. Two schemes:

    * ``method="coupled"`` (the PRDP paper's Navier–Stokes setting): velocity and pressure of the
      new step solve one saddle-point system, packed as ``x = (u, v, p)`` in a ``[B, 3, N, N]``
      tensor::

          [ I + Δt(A(u^n) − νL)   Δt·G ] [w]   [u^n]
          [        −Δt·D          −C   ] [p] = [ 0 ]

      The momentum rows are multiplied by Δt and the continuity row by −Δt so that for Stokes
      flow (no advection) the matrix is symmetric with an O(1) momentum block. The periodic
      problem leaves the pressure defined up to a constant: without ``C`` the vector
      ``(0, const)`` spans both the null space and the left null space. ``C = (c/N²)·11ᵀ`` with
      ``c = Δt/h`` acts only on that mode: ``D w`` always sums to zero and ``G`` ignores the mean,
      so summing the continuity rows gives ``c·mean(p) = 0`` — the solution is the exact
      saddle-point solution with the zero-mean pressure, and every other equation is untouched.
      It moves the zero eigenvalue to ``−c``, inside the negative part of the spectrum that the
      pressure modes already occupy (``−Δt·σ(G)``, from ≈ ``−2πΔt/L`` to ≈ ``−2√2·Δt/h``), so the
      system is non-singular without changing its conditioning or eigenvalue clustering. That is
      what keeps GMRES well-behaved: no stagnation on a singular (or round-off-inconsistent)
      system, and the transposed system of the implicit-gradient adjoint solve is non-singular
      too, which matters because a loss cotangent may well have a constant-pressure component.
      The system is indefinite and (with advection) non-symmetric: use ``gmres`` (the default,
      restart 8, rtol 1e-5, as in the paper; the budget counts restart cycles) or ``bicgstab``.

    * ``method="projection"`` (incremental pressure correction): a momentum predictor
      ``(I + Δt(A(u^n) − νL)) w* = u^n − Δt·G p^n`` solved with ``solver`` (``bicgstab`` by
      default; ``gmres`` and ``jacobi`` — the matrix is strictly diagonally dominant — also
      work), then the Leray projection ``u^{n+1} = w* − G φ`` with ``D G φ = D w*`` solved with
      ``pressure_solver`` (CG by default, see :meth:`project`), and ``p^{n+1} = p^n + φ/Δt``.
      After the projection ``D u^{n+1}`` is the pressure solve's residual (below 1e-10 in float64
      with the default tolerance).

    Both schemes are first order in time and (through the upwind advection) first order in
    space. Gradients flow through every solve in the solver's grad mode (``"implicit"`` or
    ``"unrolled"``), to the input velocity and pressure; every solve goes through
    :meth:`SolverConfig.solve`, so a solver's ``monitor`` sees its iterations.

    Args:
        n: cells per axis (N ≥ 3).
        length: box side L > 0.
        nu: kinematic viscosity ν ≥ 0.
        dt: time step Δt > 0.
        method: ``"coupled"`` or ``"projection"``.
        picard_iterations: default number of Picard iterations (coupled solves) per step; the
            projection scheme takes exactly one.
    """

    def __init__(self, n: int, length: float = 1.0, nu: float = 1e-4, dt: float = 0.1,
                 method: str = "coupled", picard_iterations: int = 1) -> None:
        n = integer("n (cells per axis)", n, minimum=3)
        self.length = real("length", length, positive=True)
        self.nu = real("nu", nu, minimum=0.0)
        self.dt = real("dt", dt, positive=True)
        if method not in NS_METHODS:
            raise ValueError(f"Unknown Navier–Stokes method {method!r}; choose one of {', '.join(NS_METHODS)}.")
        self.n = n
        self.method = method
        self.picard_iterations = _check_picard(picard_iterations, method)
        self.grid = Grid((n, n), extent=self.length, boundary="periodic")
        self.h = self.length / n
        #: weight c of the mean-pressure block of the coupled system (see the class docstring)
        self.mean_pressure_weight = self.dt / self.h

    # ------------------------------------------------------------------ defaults

    def default_solver(self, dtype: torch.dtype = torch.float64) -> SolverConfig:
        """The step's default solver: GMRES(8), rtol 1e-5 (coupled, as in the PRDP paper), or
        BiCGSTAB for the projection's momentum predictor (rtol 1e-10 in float64, 1e-5 otherwise)."""
        if self.method == "coupled":
            return SolverConfig(method="gmres", restart=8, rtol=1e-5)
        return SolverConfig(method="bicgstab", rtol=1e-10 if dtype == torch.float64 else 1e-5)

    @staticmethod
    def default_pressure_solver(dtype: torch.dtype = torch.float64) -> SolverConfig:
        """CG with a tolerance near what the dtype can reach (1e-12 in float64, 1e-6 otherwise)."""
        return SolverConfig(method="cg", rtol=1e-12 if dtype == torch.float64 else 1e-6)

    # ------------------------------------------------------------------ discrete operators

    def divergence(self, velocity: torch.Tensor) -> torch.Tensor:
        """Cell-centred discrete divergence ``D w`` of a ``[B, 2, N, N]`` MAC velocity: ``[B, 1, N, N]``."""
        self._check_velocity(velocity)
        return mac_divergence((velocity[:, 0:1], velocity[:, 1:2]), self.grid)

    def gradient(self, pressure: torch.Tensor) -> torch.Tensor:
        """Face-normal discrete gradient ``G p`` of a cell-centred ``[B, 1, N, N]`` field: ``[B, 2, N, N]``."""
        self._check_pressure(pressure, "pressure")
        return torch.cat(mac_gradient(pressure, self.grid), dim=1)

    def vorticity(self, velocity: torch.Tensor) -> torch.Tensor:
        """``ω = ∂v/∂x − ∂u/∂y`` at the cell corners ``(i·h, j·h)``: ``[B, 1, N, N]`` (second order)."""
        self._check_velocity(velocity)
        u, v = velocity[:, 0:1], velocity[:, 1:2]
        dv_dx = (v - torch.roll(v, 1, dims=2)) / self.h
        du_dy = (u - torch.roll(u, 1, dims=3)) / self.h
        return dv_dx - du_dy

    def kinetic_energy(self, velocity: torch.Tensor) -> torch.Tensor:
        """Mean kinetic energy per unit area ``½·mean(u² + v²)`` for every sample: ``[B]``."""
        self._check_velocity(velocity)
        return 0.5 * velocity.pow(2).sum(1).mean(dim=(1, 2))

    def momentum_operator(self, velocity: torch.Tensor) -> LinearOperator:
        """``M = I + Δt(A(u^n) − νL)`` on ``[B, 2, N, N]`` faces, linearised at ``velocity = u^n``.

        Strictly diagonally dominant (upwinding gives ``A`` non-positive off-diagonals and zero
        row sums), with its diagonal and an explicit transpose.
        """
        self._check_velocity(velocity)
        winds = self._face_winds(velocity)
        dt, nu, grid, h = self.dt, self.nu, self.grid, self.h

        def matvec(w: torch.Tensor) -> torch.Tensor:
            return w + dt * (_upwind(w, winds, h) - nu * laplacian(w, grid))

        def rmatvec(w: torch.Tensor) -> torch.Tensor:
            return w + dt * (_upwind_transpose(w, winds, h) - nu * laplacian(w, grid))

        def diagonal() -> torch.Tensor:
            return 1.0 + dt * ((winds[0].abs() + winds[1].abs()) / h + 4.0 * nu / (h * h))

        return LinearOperator(matvec, rmatvec, diagonal, symmetric=False, shape=grid.shape)

    def coupled_operator(self, velocity: torch.Tensor) -> LinearOperator:
        """The saddle-point matrix of the coupled step (class docstring) on ``[B, 3, N, N]`` tensors
        ``(u, v, p)``, linearised at ``velocity = u^n``, with an explicit transpose."""
        momentum = self.momentum_operator(velocity)
        dt, c = self.dt, self.mean_pressure_weight

        def apply(x: torch.Tensor, transpose: bool) -> torch.Tensor:
            w, p = x[:, :2], x[:, 2:]
            m = momentum.rmatvec(w) if transpose else momentum.matvec(w)
            top = m + dt * torch.cat(mac_gradient(p, self.grid), dim=1)
            bottom = -dt * mac_divergence((w[:, 0:1], w[:, 1:2]), self.grid) - c * p.mean(dim=(2, 3), keepdim=True)
            return torch.cat([top, bottom], dim=1)

        return LinearOperator(lambda x: apply(x, False), lambda x: apply(x, True), symmetric=False,
                              shape=self.grid.shape)

    def pressure_operator(self) -> LinearOperator:
        """``−D G + (c/N²)·11ᵀ`` with ``c = 1/h²``: the negative 5-point Laplacian made symmetric
        positive definite by pinning the mean (the only null mode); its eigenvalue on the constant
        mode, ``c``, lies inside the Laplacian's spectrum ``[(2π/L)², 8/h²]``."""
        h, n, grid = self.h, self.n, self.grid
        c = 1.0 / (h * h)

        def matvec(phi: torch.Tensor) -> torch.Tensor:
            return -laplacian(phi, grid) + c * phi.mean(dim=(2, 3), keepdim=True)

        # a 0-d float64 tensor broadcasts without promoting float32 fields
        diagonal = torch.tensor(4.0 / (h * h) + c / (n * n), dtype=torch.float64)
        return LinearOperator(matvec, diagonal=diagonal, symmetric=True, shape=grid.shape)

    # ------------------------------------------------------------------ solves

    def nonlinear_residual(self, velocity_next: torch.Tensor, pressure_next: torch.Tensor,
                           velocity: torch.Tensor) -> torch.Tensor:
        """``K(w) (w, p) − (u^n, 0)`` with ``K`` the coupled matrix linearised at ``w = velocity_next``:
        zero exactly when ``(velocity_next, pressure_next)`` is the fully implicit coupled step from
        ``velocity = u^n``; ``[B, 3, N, N]`` (momentum rows, then continuity)."""
        self._check_velocity(velocity)
        self._check_pressure(pressure_next, "pressure_next")
        x = torch.cat([velocity_next, pressure_next], dim=1)
        rhs = torch.cat([velocity, torch.zeros_like(pressure_next)], dim=1)
        return self.coupled_operator(velocity_next).matvec(x) - rhs

    def project(self, velocity: torch.Tensor, solver: SolverConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Leray projection onto discretely divergence-free face velocities.

        Solves ``D G φ = D w`` (zero-mean φ) with ``solver`` (default: CG, rtol 1e-12 in float64)
        and returns ``(w − G φ, φ)``. ``D(w − Gφ)`` equals the solve's residual. In a time step
        ``φ = Δt·(p^{n+1} − p^n)``.
        """
        self._check_velocity(velocity)
        solver = self.default_pressure_solver(velocity.dtype) if solver is None else solver
        _check_solver(solver, "pressure_solver", None)
        div = self.divergence(velocity)
        # D w sums to zero exactly in exact arithmetic; removing the round-off keeps the pinned
        # system's solution at zero mean
        rhs = -(div - div.mean(dim=(2, 3), keepdim=True))
        phi = solver.solve(self.pressure_operator(), rhs).solution
        return velocity - self.gradient(phi), phi

    def __call__(self, velocity: torch.Tensor, solver: SolverConfig | None = None,
                 pressure: torch.Tensor | None = None,
                 pressure_solver: SolverConfig | None = None,
                 picard_iterations: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: ``(u^n, p^n) -> (u^{n+1}, p^{n+1})``.

        Args:
            velocity: ``u^n``, ``[B, 2, N, N]`` MAC faces.
            solver: the coupled system's solver (default :meth:`default_solver`), or the
                projection scheme's momentum solver.
            pressure: ``p^n``, ``[B, 1, N, N]`` (default zero). Coupled: the initial guess of the
                pressure unknowns. Projection: the pressure of the momentum predictor
                (incremental pressure correction; zero gives Chorin's scheme).
            pressure_solver: the projection's Poisson solver (default
                :meth:`default_pressure_solver`); the coupled scheme takes none.
            picard_iterations: the coupled scheme's Picard iterations this step (default: the
                stepper's ``picard_iterations``); the projection scheme takes 1.

        Returns:
            ``(velocity, pressure)`` at the new time; the pressure has zero mean when ``p^n`` has.
            That pair is the stepper's state: it may be passed back as ``velocity`` (the stepper
            contract, :class:`~pdeaccel.physics.stepper.Stepper`: state in, state out), which
            is the same as passing its pressure as ``pressure``.
        """
        if isinstance(velocity, tuple):
            if len(velocity) != 2 or pressure is not None:
                raise ValueError("a NavierStokes2D state is the pair (velocity, pressure) it returns; pass either that "
                                 "pair or a velocity with pressure=, not both.")
            velocity, pressure = velocity
        self._check_velocity(velocity)
        if pressure is not None:
            self._check_pressure(pressure, "pressure")
            if pressure.shape[0] != velocity.shape[0] or pressure.dtype != velocity.dtype:
                raise ValueError(
                    f"pressure must match the velocity's batch size {velocity.shape[0]} and dtype "
                    f"{velocity.dtype}, got batch {pressure.shape[0]} and dtype {pressure.dtype}."
                )
        solver = self.default_solver(velocity.dtype) if solver is None else solver
        if self.method == "coupled":
            if pressure_solver is not None:
                raise ValueError("pressure_solver is only used by method='projection'; the coupled "
                                 "scheme solves velocity and pressure together with `solver`.")
            _check_solver(solver, "solver", _COUPLED_SOLVERS)
            if solver.preconditioner is not None:
                raise ValueError(
                    f"the coupled saddle-point system takes no preconditioner (its pressure block has "
                    f"a near-zero diagonal), got preconditioner={solver.preconditioner!r}."
                )
            picard = _check_picard(self.picard_iterations if picard_iterations is None else picard_iterations,
                                   self.method)
            return self._coupled_step(velocity, solver, pressure, picard)
        _check_solver(solver, "solver", _MOMENTUM_SOLVERS)
        _check_picard(1 if picard_iterations is None else picard_iterations, self.method)
        return self._projection_step(velocity, solver, pressure, pressure_solver)

    def _coupled_step(self, velocity, solver, pressure, picard):
        p0 = torch.zeros_like(velocity[:, :1]) if pressure is None else pressure
        rhs = torch.cat([velocity, torch.zeros_like(p0)], dim=1)
        x = torch.cat([velocity, p0], dim=1)
        for _ in range(picard):
            # re-linearise the advection at the latest velocity iterate; warm start from it
            x = solver.solve(self.coupled_operator(x[:, :2]), rhs, x).solution
        return x[:, :2], x[:, 2:]

    def _projection_step(self, velocity, solver, pressure, pressure_solver):
        rhs = velocity if pressure is None else velocity - self.dt * self.gradient(pressure)
        predicted = solver.solve(self.momentum_operator(velocity), rhs, velocity).solution
        projected, phi = self.project(predicted, pressure_solver)
        new_pressure = phi / self.dt
        return projected, new_pressure if pressure is None else pressure + new_pressure

    # ------------------------------------------------------------------ helpers

    def _face_winds(self, velocity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advecting velocity ``(a_x, a_y)`` on each component's own faces, ``[B, 2, N, N]`` each."""
        u, v = velocity[:, 0:1], velocity[:, 1:2]
        # v at an x-face (i, j): the y-faces (i-1, j), (i, j), (i-1, j+1), (i, j+1) surround it
        v_on_u = 0.25 * (v + torch.roll(v, 1, dims=2) + torch.roll(v, -1, dims=3)
                         + torch.roll(torch.roll(v, 1, dims=2), -1, dims=3))
        # u at a y-face (i, j): the x-faces (i, j-1), (i+1, j-1), (i, j), (i+1, j)
        u_on_v = 0.25 * (u + torch.roll(u, -1, dims=2) + torch.roll(u, 1, dims=3)
                         + torch.roll(torch.roll(u, -1, dims=2), 1, dims=3))
        return torch.cat([u, u_on_v], dim=1), torch.cat([v_on_u, v], dim=1)

    def _check_velocity(self, velocity: torch.Tensor) -> None:
        if not isinstance(velocity, torch.Tensor):
            raise TypeError(f"velocity must be a torch.Tensor, got {type(velocity).__name__}.")
        if velocity.dim() != 4 or tuple(velocity.shape[1:]) != (2, self.n, self.n):
            raise ValueError(
                f"velocity must have shape [batch, 2, {self.n}, {self.n}] (channel 0 = u on x-faces, "
                f"channel 1 = v on y-faces), got {list(velocity.shape)}."
            )
        if not velocity.is_floating_point():
            raise TypeError(f"velocity must be a floating-point tensor, got dtype {velocity.dtype}.")

    def _check_pressure(self, pressure: torch.Tensor, name: str) -> None:
        if not isinstance(pressure, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(pressure).__name__}.")
        if pressure.dim() != 4 or tuple(pressure.shape[1:]) != (1, self.n, self.n):
            raise ValueError(f"{name} must have shape [batch, 1, {self.n}, {self.n}], got {list(pressure.shape)}.")
        if not pressure.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {pressure.dtype}.")


# ---------------------------------------------------------------------- upwind advection


def _forward_diff(f: torch.Tensor, dim: int, h: float) -> torch.Tensor:
    return (torch.roll(f, -1, dims=dim) - f) / h


def _backward_diff(f: torch.Tensor, dim: int, h: float) -> torch.Tensor:
    return (f - torch.roll(f, 1, dims=dim)) / h


def _upwind(w: torch.Tensor, winds: tuple[torch.Tensor, torch.Tensor], h: float) -> torch.Tensor:
    """``Σ_d a_d⁺ D_d⁻ w + a_d⁻ D_d⁺ w``: backward differences where the wind is positive."""
    out = torch.zeros_like(w)
    for dim, a in zip((2, 3), winds):
        out = out + a.clamp(min=0) * _backward_diff(w, dim, h) + a.clamp(max=0) * _forward_diff(w, dim, h)
    return out


def _upwind_transpose(w: torch.Tensor, winds: tuple[torch.Tensor, torch.Tensor], h: float) -> torch.Tensor:
    """Transpose of :func:`_upwind`; on a periodic axis ``(D⁻)ᵀ = −D⁺`` and ``(D⁺)ᵀ = −D⁻``."""
    out = torch.zeros_like(w)
    for dim, a in zip((2, 3), winds):
        out = out - _forward_diff(a.clamp(min=0) * w, dim, h) - _backward_diff(a.clamp(max=0) * w, dim, h)
    return out


# ---------------------------------------------------------------------- validation


def _check_picard(value, method: str) -> int:
    # the same cap as Burgers': the converged count is 4, far beyond it a typo would run for hours
    value = integer("picard_iterations", value, minimum=1, maximum=MAX_PICARD)
    if method == "projection" and value != 1:
        # a splitting scheme: iterating only its predictor's linearisation would not converge to
        # an implicit step of the coupled equations, so it is not offered
        raise ValueError(f"method='projection' takes exactly one Picard step (the advection linearised at "
                         f"u^n); got {value}. Use method='coupled' for Picard iterations.")
    return value


def _check_solver(solver, name: str, allowed: tuple[str, ...] | None) -> None:
    if not isinstance(solver, SolverConfig):
        raise TypeError(
            f"{name} must be a pdeaccel SolverConfig (e.g. SolverConfig(method='gmres', restart=8)), "
            f"got {type(solver).__name__}."
        )
    if allowed is not None and solver.method not in allowed:
        raise ValueError(
            f"{name}.method={solver.method!r} cannot solve this non-symmetric system; choose one of "
            f"{', '.join(allowed)}."
        )
