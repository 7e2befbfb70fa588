"""Numerical reference solver for incompressible flow around obstacles on the MAC grid.

See :class:`MACFlowSolver`. Environments (masks and boundary values) come from
:mod:`pdeaccel.physics.flow`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Mapping

import torch
import torch.nn.functional as F

from .._checks import integer
from ..linalg import LinearOperator, SolveResult, SolverConfig
from ..linalg.deflation import SubdomainDeflation
from ..stencils import mac_coordinates, mac_divergence, mac_gradient
from .flow import FlowEnvironment
from .flow.operators import UPWIND_ORDER, MACOperators, laplacian_apply

ADVECTION_SCHEMES = ("semi_lagrangian", "upwind", "upwind2", "upwind3")
DIFFUSION_SCHEMES = ("auto", "explicit", "implicit")

Velocity = tuple[torch.Tensor, ...]


@dataclass
class FlowState:
    """Face velocities (one ``[B, 1, *mac_face_shape(grid, d)]`` tensor per axis), cell pressure
    ``[B, 1, *grid.shape]`` and the simulated time."""

    velocity: Velocity
    pressure: torch.Tensor
    time: float = 0.0


class MACFlowSolver:
    """Time steps of the incompressible Navier–Stokes equations around obstacles.

    Integrates, in the fluid cells of a :class:`~pdeaccel.physics.flow.FlowEnvironment`::

        ρ (∂u/∂t + (u·∇)u) = −∇p + μ Δu + ρ g,      ∇·u = 0,

    with the velocity prescribed on walls, obstacles and inflow faces (no-slip: the tangential
    velocity of a wall, e.g. a lid or a spinning cylinder, enters through the mirrored ghost value
    ``2U_wall − u``), and ``p = 0`` with a zero velocity gradient in open outflow cells.

    Discretisation: MAC grid (pressure at cell centres, velocity component d on the faces normal
    to axis d), second-order central pressure gradient, divergence and (2d+1)-point Laplacian;
    the boundary-aware operators are the environment's :class:`~pdeaccel.physics.flow.operators.MACOperators`
    (:attr:`ops`), shared with the physics-constrained loss.
    One step of size ``dt = env.dt`` is an incremental pressure-correction (Goda/van Kan)
    fractional step:

    1. **predictor** ``u*`` from ``∂u/∂t = −(u·∇)u + ν Δu − ∇pⁿ/ρ + g`` on free faces, with the
       advection term by

       * ``"upwind3"`` (default): third-order upwind-biased differences
         ``(2u_{i+1} + 3u_i − 6u_{i−1} + u_{i−2})/6h`` for a positive advecting velocity,
       * ``"upwind2"``: second-order ("linear") upwind ``(3u_i − 4u_{i−1} + u_{i−2})/2h``,
       * ``"upwind"``: first-order upwind,

       integrated by the three-stage SSP Runge–Kutta scheme of Shu & Osher (stable for a
       Courant number ``max|u|·dt/h`` up to about 1.6 / 0.6 / 1.25 in 1D for
       upwind3 / upwind2 / upwind; keep the sum over axes below that); where the wide upwind
       stencil meets a wall, second-order central differences are used. Or

       * ``"semi_lagrangian"``: trace each face back along the velocity (midpoint rule,
         ``x* = x − dt·u(x − dt/2·u(x))``), interpolate there (multilinear, through
         ``torch.nn.functional.grid_sample``); unconditionally stable but strongly diffusive
         (first order in h²/dt), then add ``dt·(ν Δu − ∇pⁿ/ρ + g)``.

       The velocity component not stored on a face is the mean of its four nearest faces.
       **Diffusion** is ``"explicit"`` (inside the Runge–Kutta stages; needs
       ``dt·ν·Σ_d 4/h_d² ≤ 2``, checked), ``"implicit"`` (backward Euler
       ``(I − dt·ν·L) u* = ũ`` after the advection, a symmetric positive-definite system solved by
       the ``diffusion_solver``, all components in one batched call) or ``"auto"`` (explicit
       where dt is within 90 % of its limit, else implicit). Boundary values enter the Laplacian
       as Dirichlet values on prescribed faces, mirrored ghosts across walls and zero gradient
       into outflows.
    2. **projection**: the increment ``δ`` solves ``−D M G δ = −D u*`` on the fluid cells (D
       divergence, G gradient, M the mask of free faces: walls and obstacles get zero-flux
       Neumann conditions, open outflow cells ``δ = 0``); then ``u = u* − M G δ`` and
       ``p^{n+1} = pⁿ + ρ δ/dt``. The solve is the ``pressure_solver`` (CG by default) applied to
       the subdomain-deflated operator (blocks of ``deflation_block^d`` cells, see
       :class:`~pdeaccel.linalg.deflation.SubdomainDeflation`; ``None`` solves the plain
       system), starting from the previous increment. In fluid cells ``D u`` equals minus the solver's residual, so the divergence
       after a step is at the solver's tolerance (``max(atol, rtol·‖D u*‖)``, and ``D u*`` is
       already small because ``u*`` contains ``−∇pⁿ``; ``atol`` is raised to
       ``1e-13·max|u|/h·√cells`` so that a steady state does not chase round-off). A fluid region without outflow has a
       pure-Neumann problem: the mean of the right-hand side is removed per region (the
       environment checks that its prescribed fluxes balance) and the pressure's mean set to 0.

    Prescribed faces hold exactly their ``env.face_velocity`` values after every step; the
    pressure of :meth:`initial_state` is zero. Everything is batched over the environments of
    ``env`` (per-sample masks, μ, ρ, body force). With moving obstacles each step ends with
    ``env.shifted()``.

    Args:
        env: the environment (batch).
        advection: ``"upwind3"``, ``"upwind2"``, ``"upwind"`` or ``"semi_lagrangian"``.
        diffusion: ``"auto"``, ``"explicit"`` or ``"implicit"``.
        pressure_solver: a :class:`~pdeaccel.linalg.SolverConfig` for the symmetric positive
            (semi-)definite pressure equation (default CG, ``rtol=1e-6``).
        diffusion_solver: the same for implicit diffusion (default CG, Jacobi, ``rtol=1e-8``).
        deflation_block: block size of the deflation subspace of the pressure solve, or None.
    """

    def __init__(
        self,
        env: FlowEnvironment,
        advection: Literal["semi_lagrangian", "upwind", "upwind2", "upwind3"] = "upwind3",
        diffusion: Literal["auto", "implicit", "explicit"] = "auto",
        pressure_solver: SolverConfig | None = None,
        diffusion_solver: SolverConfig | None = None,
        deflation_block: int | None = 4,
    ) -> None:
        if advection not in ADVECTION_SCHEMES:
            raise ValueError(f"advection must be one of {', '.join(ADVECTION_SCHEMES)}, got {advection!r}.")
        if diffusion not in DIFFUSION_SCHEMES:
            raise ValueError(f"diffusion must be one of {', '.join(DIFFUSION_SCHEMES)}, got {diffusion!r}.")
        for name, cfg in (("pressure_solver", pressure_solver), ("diffusion_solver", diffusion_solver)):
            if cfg is not None and not isinstance(cfg, SolverConfig):
                raise TypeError(f"{name} must be a pdeaccel SolverConfig, got {type(cfg).__name__}.")
        deflation_block = integer("deflation_block", deflation_block, minimum=2, optional=True)
        self.advection = advection
        self.diffusion = diffusion
        self.deflation_block = deflation_block
        self.pressure_solver = pressure_solver or SolverConfig(method="cg", rtol=1e-6)
        self.diffusion_solver = diffusion_solver or SolverConfig(method="cg", rtol=1e-8, preconditioner="jacobi")
        self.last_pressure_solve: SolveResult | None = None
        self.last_diffusion_solve: SolveResult | None = None
        self._last_increment: torch.Tensor | None = None
        self.env = env

    # ---------------------------------------------------------------------------- environment
    @property
    def env(self) -> FlowEnvironment:
        return self._env

    @env.setter
    def env(self, env: FlowEnvironment) -> None:
        if not isinstance(env, FlowEnvironment):
            raise TypeError(f"env must be a FlowEnvironment, got {type(env).__name__}.")
        if getattr(self, "_env", None) is not None and env.grid != self._env.grid:
            raise ValueError(f"a solver keeps its grid; got {env.grid}, expected {self._env.grid}.")
        self._env = env
        self._prepare()

    def _prepare(self) -> None:
        env = self._env
        nd = env.grid.ndim
        self.ops = MACOperators(env)
        self.h, self.periodic, self._free = self.ops.h, self.ops.periodic, self.ops.free
        bshape = (-1,) + (1,) * (nd + 1)
        self._nu = env.nu.reshape(bshape)
        self._rho = env.rho.reshape(bshape)
        self._force = [env.body_force[:, d].reshape(bshape) for d in range(nd)]
        limit = 2.0 / (4.0 * sum(1.0 / (h * h) for h in self.h))
        nu_max = float(env.nu.max())
        explicit_ok = env.dt * nu_max <= 0.9 * limit
        self._diffusion_scheme = self.diffusion if self.diffusion != "auto" else ("explicit" if explicit_ok else "implicit")
        if self.diffusion == "explicit":
            if env.dt * nu_max > limit:
                raise ValueError(
                    f"explicit diffusion is unstable for dt={env.dt:g} with nu={nu_max:g} on h={self.h}: "
                    f"needs dt <= {limit / nu_max:.4g}. Use diffusion='implicit' or a smaller dt.")

        self._prepare_faces()
        self._prepare_pressure()

    def _prepare_faces(self) -> None:
        """The implicit-diffusion system and the face positions (semi-Lagrangian advection)."""
        env = self._env
        grid = env.grid
        nd = grid.ndim
        dtype = env.fluid.dtype
        ops = self.ops
        # implicit diffusion: every component's operator zero-padded to one shape, stacked on batch
        self._stack_shape = tuple(n + (0 if p else 1) for n, p in zip(grid.shape, self.periodic))
        keys = sorted({k for offs in ops.lap_offdiag for k in offs})
        zero = [torch.zeros_like(c) for c in ops.lap_const]
        self._diffusion_stack = (
            self._pack(ops.lap_diag),
            {k: self._pack([offs.get(k, z) for offs, z in zip(ops.lap_offdiag, zero)]) for k in keys},
            self._pack(ops.lap_const),
        )

        # face positions in grid coordinates (semi-Lagrangian)
        self._face_points = [mac_coordinates(grid, d, (0.0,) * nd, dtype, env.fluid.device) for d in range(nd)]

    def _prepare_pressure(self) -> None:
        """The deflation of the pressure operator and the closed regions."""
        env = self._env
        dtype = env.fluid.dtype
        fluid = env.fluid
        ops = self.ops
        self._deflation = None
        if self.deflation_block is not None:
            self._deflation = SubdomainDeflation(ops.pressure_center, ops.pressure_offdiag, fluid, self.periodic,
                                                 self.deflation_block)
        labels = env.closed_components.to(fluid.device)
        self._n_closed = int(labels.max())
        if self._n_closed:
            self._labels = labels.flatten(1).long()
            counts = torch.zeros(fluid.shape[0], self._n_closed + 1, dtype=dtype, device=fluid.device)
            counts.scatter_add_(1, self._labels, torch.ones_like(self._labels, dtype=dtype))
            counts[:, 0] = math.inf  # label 0 (open regions, solids) keeps its values
            self._label_counts = counts

    # ---------------------------------------------------------------------------- public API
    def initial_state(self, velocity: Velocity | None = None) -> FlowState:
        """A divergence-free starting state: ``velocity`` (default: at rest) with the boundary
        values imposed, projected. The pressure starts at zero (the first steps build it)."""
        env = self._env
        if velocity is None:
            velocity = tuple(torch.zeros_like(f) for f in env.face_velocity)
        u = self.ops.complete(self.ops.check_velocity(velocity))
        u, _ = self._project(u, torch.zeros_like(env.fluid), self.pressure_solver)
        return FlowState(u, torch.zeros_like(env.fluid), 0.0)

    def __call__(self, state: FlowState, solver: SolverConfig | Mapping[str, SolverConfig] | None = None) -> FlowState:
        """One time step of size ``env.dt`` (the stepper contract, :class:`~pdeaccel.physics.stepper.Stepper`):
        ``solver`` sets this call's linear solves — one :class:`~pdeaccel.linalg.SolverConfig` for
        the pressure equation (the budget that matters; a PRDP schedule may change it every step),
        or a mapping with ``"pressure"`` and/or ``"diffusion"`` — and ``None`` uses the settings
        given at construction."""
        return self.step(state, solver)

    def solvers_for(self, solver: SolverConfig | Mapping[str, SolverConfig] | None) -> tuple[SolverConfig, SolverConfig]:
        """The ``(pressure, diffusion)`` solver settings of one call (see :meth:`__call__`)."""
        if solver is None:
            return self.pressure_solver, self.diffusion_solver
        if isinstance(solver, SolverConfig):
            return solver, self.diffusion_solver
        if isinstance(solver, Mapping) and set(solver) <= {"pressure", "diffusion"} and all(
                isinstance(v, SolverConfig) for v in solver.values()):
            return solver.get("pressure", self.pressure_solver), solver.get("diffusion", self.diffusion_solver)
        raise TypeError("solver must be a SolverConfig (the pressure solve), a mapping with 'pressure' and/or "
                        f"'diffusion' SolverConfigs, or None (the constructor's settings); got {solver!r}.")

    def step(self, state: FlowState, solver: SolverConfig | Mapping[str, SolverConfig] | None = None) -> FlowState:
        """One time step of size ``env.dt`` (see the class docstring and :meth:`__call__`)."""
        pressure_solver, diffusion_solver = self.solvers_for(solver)
        if not isinstance(state, FlowState):
            raise TypeError(f"state must be a FlowState, got {type(state).__name__}.")
        env = self._env
        grid = env.grid
        dt = env.dt
        u = self.ops.complete(self.ops.check_velocity(state.velocity))
        if state.pressure.shape != env.fluid.shape:
            raise ValueError(f"state.pressure must have shape {list(env.fluid.shape)}, got {list(state.pressure.shape)}.")
        p = state.pressure * env.fluid
        # forcing of the predictor: body force minus the old pressure gradient (incremental
        # projection: the predicted velocity is then divergence-free up to O(dt²))
        forcing = tuple(f * (g - gp / self._rho)
                        for f, g, gp in zip(self._free, self._force, mac_gradient(p, grid)))
        explicit = self._diffusion_scheme == "explicit"
        if self.advection == "semi_lagrangian":
            ua = self._semi_lagrangian(self.ops.extended(u))
            if explicit:
                ua = tuple(x + dt * self._nu * lap for x, lap in zip(ua, self.ops.laplacian(ua)))
            ua = tuple(x + dt * f for x, f in zip(ua, forcing))
        else:
            order = UPWIND_ORDER[self.advection]

            def rate(v: Velocity) -> Velocity:
                r = tuple(a + f for a, f in zip(self.ops.advection_rate(v, order), forcing))
                if explicit:
                    r = tuple(x + self._nu * lap for x, lap in zip(r, self.ops.laplacian(v)))
                return r

            def euler(v: Velocity) -> Velocity:
                return tuple(x + dt * k for x, k in zip(v, rate(v)))

            # Shu–Osher SSP-RK3
            u1 = self.ops.complete(euler(u))
            u2 = self.ops.complete(tuple(0.75 * a + 0.25 * b for a, b in zip(u, euler(u1))))
            ua = tuple(a / 3.0 + 2.0 / 3.0 * b for a, b in zip(u, euler(u2)))
        us = ua if explicit else self._implicit_diffusion(ua, diffusion_solver)
        # the previous step's increment is a good first guess while the flow evolves smoothly
        guess = self._last_increment
        if guess is None or guess.shape != p.shape or guess.dtype != p.dtype:
            guess = torch.zeros_like(p)
        u_new, dphi = self._project(self.ops.complete(us), guess, pressure_solver)
        self._last_increment = dphi
        new = FlowState(u_new, p + self._rho * dphi / dt, state.time + dt)
        if env.has_moving_obstacles:
            self.env = env.shifted()
        return new

    def run(self, state: FlowState, steps: int,
            callback: Callable[[int, FlowState], None] | None = None) -> FlowState:
        """``steps`` time steps; ``callback(i, state)`` after each."""
        steps = integer("steps", steps, minimum=0)
        for i in range(steps):
            state = self.step(state)
            if callback is not None:
                callback(i, state)
        return state

    def run_to_steady(self, state: FlowState, *, tol: float = 1e-5, max_steps: int = 100_000,
                      check_every: int = 10) -> tuple[FlowState, int, float]:
        """Step until ``max |u^{n+1} − u^n| / dt`` over free faces (every sample) is below ``tol``.

        Returns ``(state, steps taken, last rate of change)``; stops at ``max_steps``."""
        if not (tol > 0):
            raise ValueError(f"tol must be positive, got {tol!r}.")
        rate = math.inf
        for i in range(1, max_steps + 1):
            new = self.step(state)
            if i % check_every == 0 or i == max_steps:
                rate = max(float(((a - b) * f).abs().max()) for a, b, f in zip(new.velocity, state.velocity, self._free))
                rate /= self._env.dt
                if rate < tol:
                    return new, i, rate
            state = new
        return state, max_steps, rate

    def divergence(self, velocity: Velocity | FlowState) -> torch.Tensor:
        """Discrete divergence ``Σ_d (u_d[k+1] − u_d[k])/h_d`` in fluid cells (0 elsewhere)."""
        if isinstance(velocity, FlowState):
            velocity = velocity.velocity
        return mac_divergence(self.ops.check_velocity(velocity), self._env.grid) * self._env.fluid

    def cfl(self, velocity: Velocity | FlowState) -> float:
        """Courant number ``dt · max_d max|u_d| / h_d`` over free faces."""
        if isinstance(velocity, FlowState):
            velocity = velocity.velocity
        return self._env.dt * max(float((u * f).abs().max()) / h for u, f, h in zip(velocity, self._free, self.h))

    # ---------------------------------------------------------------------------- internals
    def _implicit_diffusion(self, ua: Velocity, solver: SolverConfig) -> Velocity:
        """Backward Euler ``(I − dt·ν·L) u* = ũ``: all components in one batched CG solve,
        each zero-padded to a common shape (padding rows are identity rows with zero data)."""
        dt = self._env.dt
        nd = len(ua)
        coef = dt * self._nu.repeat(nd, *([1] * (nd + 1)))
        diag, offdiag, const = self._diffusion_stack

        def matvec(v):
            return v - coef * laplacian_apply(diag, offdiag, v)

        x = self._pack(ua)
        rhs = x + coef * const
        guess = rhs + coef * laplacian_apply(diag, offdiag, x)
        op = LinearOperator(matvec, diagonal=1.0 - coef * diag, symmetric=True)
        result = solver.solve(op, rhs, x0=guess)
        self.last_diffusion_solve = result
        return self._unpack(result.solution)

    def _pack(self, fields: Velocity) -> torch.Tensor:
        shape = self._stack_shape
        parts = []
        for f in fields:
            pad = []
            for a in reversed(range(len(shape))):
                pad += [0, shape[a] - f.shape[a + 2]]
            parts.append(F.pad(f, pad))
        return torch.cat(parts, dim=0)

    def _unpack(self, x: torch.Tensor) -> Velocity:
        B = self._env.batch_size
        out = []
        for d, ref in enumerate(self._env.face_velocity):
            part = x[d * B:(d + 1) * B]
            out.append(part[(slice(None), slice(None)) + tuple(slice(0, n) for n in ref.shape[2:])])
        return tuple(out)

    def _sample(self, field: torch.Tensor, comp: int, points: list[torch.Tensor]) -> torch.Tensor:
        """Multilinear interpolation of the (complete) face array of component ``comp`` at
        physical grid points (one ``[B, *S]`` tensor per axis); clamped at bounded edges,
        wrapped on periodic axes."""
        grid = self._env.grid
        nd = grid.ndim
        norm = []
        for a in range(nd):
            off = 0.0 if a == comp else 0.5
            x = points[a]
            if self.periodic[a]:
                L = grid.extent[a]
                x = torch.remainder(x, L)
                idx = x / self.h[a] - off + 1.0
                dim = a + 2
                n = field.shape[dim]
                field = torch.cat([field.narrow(dim, n - 1, 1), field, field.narrow(dim, 0, 1)], dim)
            else:
                idx = x / self.h[a] - off
            size = field.shape[a + 2]
            norm.append(2.0 * idx / (size - 1) - 1.0)
        coords = torch.stack(norm[::-1], dim=-1)
        return F.grid_sample(field, coords, mode="bilinear", padding_mode="border", align_corners=True)

    def _semi_lagrangian(self, u: Velocity) -> Velocity:
        dt = self._env.dt
        nd = len(u)
        B = u[0].shape[0]
        out = []
        for d in range(nd):
            vel = [u[d][:, 0] if e == d else self.ops.to_faces(u[e], e, d)[:, 0] for e in range(nd)]
            pts = [p.expand(B, *p.shape) for p in self._face_points[d]]
            mid = [p - 0.5 * dt * v for p, v in zip(pts, vel)]
            vmid = [self._sample(u[e], e, mid)[:, 0] for e in range(nd)]
            dep = [p - dt * v for p, v in zip(pts, vmid)]
            val = self._sample(u[d], d, dep)
            out.append(self._free[d] * val + (1.0 - self._free[d]) * u[d])
        return tuple(out)

    def _remove_closed_mean(self, x: torch.Tensor) -> torch.Tensor:
        if not self._n_closed:
            return x
        flat = x.flatten(1)
        sums = torch.zeros_like(self._label_counts).scatter_add_(1, self._labels, flat)
        mean = (sums / self._label_counts).gather(1, self._labels)
        return (flat - mean).view_as(x)

    def _project(self, us: Velocity, phi0: torch.Tensor, cfg: SolverConfig) -> tuple[Velocity, torch.Tensor]:
        env = self._env
        b = -env.fluid * mac_divergence(us, env.grid)
        b = self._remove_closed_mean(b)
        x0 = self._remove_closed_mean(phi0 * env.fluid)
        # near a steady state ‖b‖ is round-off: never ask for less than round-off of the
        # divergence scale max|u|/h (summed over the cells), or CG would run its whole budget
        scale = max(float(u.abs().max()) for u in us) / min(self.h)
        # (positive even for a flow at rest: a zero threshold would mean "run the whole budget")
        floor = max(1e-13 * scale * math.sqrt(env.fluid[0].numel()), torch.finfo(b.dtype).tiny)
        if cfg.atol < floor:
            cfg = cfg.replace(atol=floor)
        ops = self.ops
        if self._deflation is None:
            op = LinearOperator(ops.pressure_matvec, diagonal=ops.pressure_diagonal, symmetric=True)
            result = cfg.solve(op, b, x0=x0)
            phi = result.solution
        else:
            result, phi = self._deflation.solve(cfg, ops.pressure_matvec, b, x0=x0, diagonal=ops.pressure_diagonal)
        self.last_pressure_solve = result
        phi = self._remove_closed_mean(phi * env.fluid)
        g = mac_gradient(phi, env.grid)
        u = tuple(ud - f * gd for ud, f, gd in zip(us, self._free, g))
        return self.ops.complete(u), phi
