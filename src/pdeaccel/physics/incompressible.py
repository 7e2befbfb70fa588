"""Numerical reference solver for incompressible flow around obstacles on the MAC grid.

See :class:`MACFlowSolver`. Environments (masks and boundary values) come from
:mod:`pdeaccel.physics.flow`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from ..linalg import LinearOperator, SolveResult, SolverConfig
from ..stencils import mac_divergence, mac_face_shape, mac_gradient, mac_spacing, shift
from .flow import BEYOND, FREE, INTERIOR, OPEN, PRESCRIBED, FlowEnvironment

ADVECTION_SCHEMES = ("semi_lagrangian", "upwind", "upwind2", "upwind3")
_UPWIND_ORDER = {"upwind": 1, "upwind2": 2, "upwind3": 3}
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
    to axis d), second-order central pressure gradient, divergence and (2d+1)-point Laplacian.
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
       :class:`_Deflation`; ``None`` solves the plain system), starting from the previous
       increment. In fluid cells ``D u`` equals minus the solver's residual, so the divergence
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
        if deflation_block is not None and (isinstance(deflation_block, bool) or not isinstance(deflation_block, int)
                                            or deflation_block < 2):
            raise ValueError(f"deflation_block must be an integer >= 2 or None, got {deflation_block!r}.")
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
        grid = env.grid
        nd = grid.ndim
        self.h = mac_spacing(grid)
        self.periodic = tuple(b == "periodic" for b in grid.boundary)
        dtype = env.fluid.dtype
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
        """Per face component: neighbour rules (stencils), Laplacian coefficients, completion."""
        env = self._env
        grid = env.grid
        nd = grid.ndim
        dtype = env.fluid.dtype
        self._free = env.face_free
        self._nbr = []      # per d: {(e, s): (a, b, c)} neighbour value = a·u[g] + b·u[f] + c
        self._nbr2 = []     # per d: {(e, s): bool} the second neighbour is free too (wide stencils)
        self._lap_diag = []
        self._lap_offdiag = []
        self._lap_const = []
        self._complete_const = []
        self._open_weights = []
        self._ghost_const = []
        self._ghost_weights = []
        for d in range(nd):
            cls = env.face_class[d]
            U = env.face_velocity[d]
            free = self._free[d]
            fixed = ((cls == PRESCRIBED) | (cls == INTERIOR)).to(dtype)
            nbr, nbr2 = {}, {}
            diag = torch.zeros_like(U)
            const = torch.zeros_like(U)
            ghost_count = torch.zeros_like(U)
            open_count = torch.zeros_like(U)
            counts = {}
            for e in range(nd):
                inv_h2 = 1.0 / (self.h[e] ** 2)
                for s in (-1, 1):
                    g = shift(cls, e + 2, s, self.periodic[e], fill=BEYOND)
                    Ug = shift(U, e + 2, s, self.periodic[e], fill=0.0)
                    is_ = {k: (g == k).to(dtype) for k in (FREE, PRESCRIBED, INTERIOR, OPEN, BEYOND)}
                    a = free * is_[FREE]
                    b = free * (is_[OPEN] - is_[INTERIOR] - is_[BEYOND])
                    c = free * (is_[PRESCRIBED] * Ug + is_[INTERIOR] * 2.0 * Ug)
                    nbr[(e, s)] = (a, b, c)
                    g2 = shift(cls, e + 2, 2 * s, self.periodic[e], fill=BEYOND)
                    nbr2[(e, s)] = (a > 0) & (g2 == FREE)
                    diag = diag + (b - free) * inv_h2
                    const = const + c * inv_h2
                    # completion of non-free faces from their free neighbours
                    ghost_n = (cls == INTERIOR).to(dtype) * is_[FREE] * (1.0 if e != d else 0.0)
                    open_n = (cls == OPEN).to(dtype) * is_[FREE]
                    counts[(e, s)] = (ghost_n, open_n)
                    ghost_count = ghost_count + ghost_n
                    open_count = open_count + open_n
            interior = (cls == INTERIOR).to(dtype)
            # for interpolation, a wall face seen from k free neighbours holds the mean of their
            # mirror images 2U − u (the state itself keeps U there)
            has_ghost = (ghost_count > 0).to(dtype)
            ghost_weights, open_weights = {}, {}
            for key, (ghost_n, open_n) in counts.items():
                if bool(ghost_n.any()):
                    ghost_weights[key] = -ghost_n / ghost_count.clamp(min=1.0)
                if bool(open_n.any()):
                    open_weights[key] = open_n / open_count.clamp(min=1.0)
            self._complete_const.append(U * fixed)
            self._open_weights.append(open_weights)
            self._ghost_const.append(U * interior * has_ghost)
            self._ghost_weights.append(ghost_weights)
            self._lap_offdiag.append({k: v[0] / self.h[k[0]] ** 2 for k, v in nbr.items() if bool(v[0].any())})
            self._nbr.append(nbr)
            self._nbr2.append(nbr2)
            self._lap_diag.append(diag)
            self._lap_const.append(const)

        # implicit diffusion: every component's operator zero-padded to one shape, stacked on batch
        self._stack_shape = tuple(n + (0 if p else 1) for n, p in zip(grid.shape, self.periodic))
        keys = sorted({k for offs in self._lap_offdiag for k in offs})
        zero = [torch.zeros_like(c) for c in self._lap_const]
        self._diffusion_stack = (
            self._pack(self._lap_diag),
            {k: self._pack([offs.get(k, z) for offs, z in zip(self._lap_offdiag, zero)]) for k in keys},
            self._pack(self._lap_const),
        )

        # face positions in grid coordinates (semi-Lagrangian)
        self._face_points = []
        for d in range(nd):
            shape = mac_face_shape(grid, d)
            axes = [(torch.arange(n, dtype=dtype, device=env.fluid.device) + (0.0 if a == d else 0.5)) * self.h[a]
                    for a, n in enumerate(shape)]
            self._face_points.append(torch.meshgrid(*axes, indexing="ij"))

    def _prepare_pressure(self) -> None:
        """The pressure operator on fluid cells, its deflation and the closed regions."""
        env = self._env
        grid = env.grid
        nd = grid.ndim
        dtype = env.fluid.dtype
        fluid = env.fluid
        pdiag = torch.zeros_like(fluid)
        for d in range(nd):
            free = self._free[d]
            n = grid.shape[d]
            if self.periodic[d]:
                lo, hi = free, shift(free, d + 2, 1, True)
            else:
                lo, hi = free.narrow(d + 2, 0, n), free.narrow(d + 2, 1, n)
            pdiag = pdiag + (lo + hi) / (self.h[d] ** 2)
        pdiag = pdiag * fluid
        self._pressure_center = pdiag
        self._pressure_offdiag = {}
        for d in range(nd):
            for s in (-1, 1):
                face = self._free[d]
                n = grid.shape[d]
                if not self.periodic[d]:
                    face = face.narrow(d + 2, 0 if s < 0 else 1, n)
                elif s > 0:
                    face = shift(face, d + 2, 1, True)
                self._pressure_offdiag[(d, s)] = fluid * face * shift(fluid, d + 2, s, self.periodic[d]) / self.h[d] ** 2
        self._pressure_diag = torch.where(pdiag > 0, pdiag, torch.ones_like(pdiag))
        self._deflation = None
        if self.deflation_block is not None:
            self._deflation = _Deflation(pdiag, self._pressure_offdiag, fluid, self.periodic, self.deflation_block)
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
        u = self.complete(self._check_velocity(velocity))
        u, _ = self._project(u, torch.zeros_like(env.fluid))
        return FlowState(u, torch.zeros_like(env.fluid), 0.0)

    def step(self, state: FlowState) -> FlowState:
        """One time step of size ``env.dt`` (see the class docstring)."""
        if not isinstance(state, FlowState):
            raise TypeError(f"state must be a FlowState, got {type(state).__name__}.")
        env = self._env
        grid = env.grid
        dt = env.dt
        u = self.complete(self._check_velocity(state.velocity))
        if state.pressure.shape != env.fluid.shape:
            raise ValueError(f"state.pressure must have shape {list(env.fluid.shape)}, got {list(state.pressure.shape)}.")
        p = state.pressure * env.fluid
        # forcing of the predictor: body force minus the old pressure gradient (incremental
        # projection: the predicted velocity is then divergence-free up to O(dt²))
        forcing = tuple(f * (g - gp / self._rho)
                        for f, g, gp in zip(self._free, self._force, mac_gradient(p, grid)))
        explicit = self._diffusion_scheme == "explicit"
        if self.advection == "semi_lagrangian":
            ua = self._semi_lagrangian(self._extended(u))
            if explicit:
                ua = tuple(x + dt * self._nu * lap for x, lap in zip(ua, self.laplacian(ua)))
            ua = tuple(x + dt * f for x, f in zip(ua, forcing))
        else:
            order = _UPWIND_ORDER[self.advection]

            def rate(v: Velocity) -> Velocity:
                r = tuple(a + f for a, f in zip(self._advection_rate(v, order), forcing))
                if explicit:
                    r = tuple(x + self._nu * lap for x, lap in zip(r, self.laplacian(v)))
                return r

            def euler(v: Velocity) -> Velocity:
                return tuple(x + dt * k for x, k in zip(v, rate(v)))

            # Shu–Osher SSP-RK3
            u1 = self.complete(euler(u))
            u2 = self.complete(tuple(0.75 * a + 0.25 * b for a, b in zip(u, euler(u1))))
            ua = tuple(a / 3.0 + 2.0 / 3.0 * b for a, b in zip(u, euler(u2)))
        us = ua if explicit else self._implicit_diffusion(ua)
        # the previous step's increment is a good first guess while the flow evolves smoothly
        guess = self._last_increment
        if guess is None or guess.shape != p.shape or guess.dtype != p.dtype:
            guess = torch.zeros_like(p)
        u_new, dphi = self._project(self.complete(us), guess)
        self._last_increment = dphi
        new = FlowState(u_new, p + self._rho * dphi / dt, state.time + dt)
        if env.has_moving_obstacles:
            self.env = env.shifted()
        return new

    def run(self, state: FlowState, steps: int,
            callback: Callable[[int, FlowState], None] | None = None) -> FlowState:
        """``steps`` time steps; ``callback(i, state)`` after each."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}.")
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
        return mac_divergence(self._check_velocity(velocity), self._env.grid) * self._env.fluid

    def complete(self, velocity: Velocity) -> Velocity:
        """Impose the boundary data: prescribed faces get their ``env.face_velocity`` value,
        faces inside outflow regions the mean of their free neighbours (zero gradient); free
        faces are unchanged."""
        out = []
        for d, u in enumerate(velocity):
            v = self._free[d] * u + self._complete_const[d]
            for (e, s), w in self._open_weights[d].items():
                v = v + w * self._nb(u, e, s)
            out.append(v)
        return tuple(out)

    def _extended(self, velocity: Velocity) -> Velocity:
        """A complete field whose faces inside walls hold the mirror image ``2U − u`` of their
        free neighbours, so that interpolating across a wall gives the wall's velocity on it."""
        out = []
        for d, u in enumerate(velocity):
            v = u + self._ghost_const[d]
            for (e, s), w in self._ghost_weights[d].items():
                v = v + w * self._nb(u, e, s)
            out.append(v)
        return tuple(out)

    def laplacian(self, velocity: Velocity) -> Velocity:
        """The diffusion operator ``L u`` on free faces (0 elsewhere), boundary values included."""
        out = []
        for d, u in enumerate(velocity):
            out.append(self._lap_linear(u, d) + self._lap_const[d])
        return tuple(out)

    def cfl(self, velocity: Velocity | FlowState) -> float:
        """Courant number ``dt · max_d max|u_d| / h_d`` over free faces."""
        if isinstance(velocity, FlowState):
            velocity = velocity.velocity
        return self._env.dt * max(float((u * f).abs().max()) / h for u, f, h in zip(velocity, self._free, self.h))

    # ---------------------------------------------------------------------------- internals
    @staticmethod
    def _nb(x: torch.Tensor, axis: int, offset: int) -> torch.Tensor:
        """``x[i + offset]`` along ``axis``, wrapped around every edge: across a bounded edge the
        wrapped value is always multiplied by a zero coefficient (no neighbour is free there)."""
        return torch.roll(x, -offset, dims=axis + 2)

    def _check_velocity(self, velocity) -> Velocity:
        env = self._env
        if not isinstance(velocity, (tuple, list)) or len(velocity) != env.ndim:
            raise ValueError(f"velocity must be a tuple of {env.ndim} face arrays, got {type(velocity).__name__}.")
        for d, (u, ref) in enumerate(zip(velocity, env.face_velocity)):
            if not isinstance(u, torch.Tensor) or u.shape != ref.shape:
                got = list(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
                raise ValueError(f"velocity[{d}] must have shape {list(ref.shape)}, got {got}.")
        return tuple(velocity)

    def _lap_linear(self, u: torch.Tensor, d: int) -> torch.Tensor:
        return _lap_apply(self._lap_diag[d], self._lap_offdiag[d], u)

    def _implicit_diffusion(self, ua: Velocity) -> Velocity:
        """Backward Euler ``(I − dt·ν·L) u* = ũ``: all components in one batched CG solve,
        each zero-padded to a common shape (padding rows are identity rows with zero data)."""
        dt = self._env.dt
        nd = len(ua)
        coef = dt * self._nu.repeat(nd, *([1] * (nd + 1)))
        diag, offdiag, const = self._diffusion_stack

        def matvec(v):
            return v - coef * _lap_apply(diag, offdiag, v)

        x = self._pack(ua)
        rhs = x + coef * const
        guess = rhs + coef * _lap_apply(diag, offdiag, x)
        op = LinearOperator(matvec, diagonal=1.0 - coef * diag, symmetric=True)
        result = self.diffusion_solver.solve(op, rhs, x0=guess)
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

    def advection_term(self, velocity: Velocity, scheme: Literal["central", "upwind", "upwind2", "upwind3"] = "central"
                  ) -> Velocity:
        """``(u·∇)u_d`` on free faces (0 elsewhere) of a velocity field, boundary values imposed
        first (:meth:`complete`). ``"central"``: second-order central differences
        ``(u_{i+1} − u_{i−1})/2h`` with the neighbours' boundary rules of the Laplacian — the
        advection term of Wandel et al.'s physics-constrained loss; the upwind schemes are the
        solver's own."""
        if scheme != "central" and scheme not in _UPWIND_ORDER:
            raise ValueError(f"scheme must be 'central' or one of {', '.join(_UPWIND_ORDER)}, got {scheme!r}.")
        u = self.complete(self._check_velocity(velocity))
        return tuple(-r for r in self._advection_rate(u, 0 if scheme == "central" else _UPWIND_ORDER[scheme]))

    def _advection_rate(self, u: Velocity, order: int) -> Velocity:
        """``−(u·∇)u_d`` on free faces by upwind differences of ``order`` (0: central; ``u`` complete)."""
        nd = len(u)
        out = []
        for d in range(nd):
            ud = u[d]
            rate = torch.zeros_like(ud)
            for e in range(nd):
                w = ud if e == d else self._to_faces(u[e], e, d)
                h = self.h[e]
                am, bm, cm = self._nbr[d][(e, -1)]
                ap, bp, cp = self._nbr[d][(e, 1)]
                um = am * self._nb(ud, e, -1) + bm * ud + cm
                up = ap * self._nb(ud, e, 1) + bp * ud + cp
                if order == 0:
                    back = fwd = (up - um) / (2.0 * h)
                elif order == 1:
                    back, fwd = (ud - um) / h, (up - ud) / h
                else:
                    # where the wider upwind stencil does not fit (next to a wall) central
                    # differences keep second order (the flow is slow there)
                    central = (up - um) / (2.0 * h)
                    valid_m, valid_p = self._nbr2[d][(e, -1)], self._nbr2[d][(e, 1)]
                    umm, upp = self._nb(ud, e, -2), self._nb(ud, e, 2)
                    if order == 2:
                        back = (3.0 * ud - 4.0 * um + umm) / (2.0 * h)
                        fwd = (-3.0 * ud + 4.0 * up - upp) / (2.0 * h)
                    else:
                        back = (2.0 * up + 3.0 * ud - 6.0 * um + umm) / (6.0 * h)
                        fwd = -(2.0 * um + 3.0 * ud - 6.0 * up + upp) / (6.0 * h)
                    back = torch.where(valid_m, back, central)
                    fwd = torch.where(valid_p, fwd, central)
                rate = rate - w * torch.where(w > 0, back, fwd)
            out.append(rate * self._free[d])
        return tuple(out)

    def _to_faces(self, ue: torch.Tensor, e: int, d: int) -> torch.Tensor:
        """Component e (on e-faces, complete) averaged onto the d-faces: mean of 4 neighbours."""
        de, dd = e + 2, d + 2
        # along e: the two e-faces bounding the cell row of the d-face
        if self.periodic[e]:
            x = 0.5 * (ue + torch.roll(ue, -1, dims=de))
        else:
            n = ue.shape[de] - 1
            x = 0.5 * (ue.narrow(de, 0, n) + ue.narrow(de, 1, n))
        # along d: the cells on both sides of the d-face (edge value repeated beyond the grid)
        if self.periodic[d]:
            return 0.5 * (x + torch.roll(x, 1, dims=dd))
        n = x.shape[dd]
        padded = torch.cat([x.narrow(dd, 0, 1), x, x.narrow(dd, n - 1, 1)], dd)
        return 0.5 * (padded.narrow(dd, 0, n + 1) + padded.narrow(dd, 1, n + 1))

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
            vel = [u[d][:, 0] if e == d else self._to_faces(u[e], e, d)[:, 0] for e in range(nd)]
            pts = [p.expand(B, *p.shape) for p in self._face_points[d]]
            mid = [p - 0.5 * dt * v for p, v in zip(pts, vel)]
            vmid = [self._sample(u[e], e, mid)[:, 0] for e in range(nd)]
            dep = [p - dt * v for p, v in zip(pts, vmid)]
            val = self._sample(u[d], d, dep)
            out.append(self._free[d] * val + (1.0 - self._free[d]) * u[d])
        return tuple(out)

    def _pressure_matvec(self, phi: torch.Tensor) -> torch.Tensor:
        """``−D M G φ`` on fluid cells: Σ over free faces of (φ_i − φ_neighbour)/h² (a
        neighbour that is an outflow cell has φ = 0, so only the diagonal sees it)."""
        out = self._pressure_center * phi
        for (d, s), w in self._pressure_offdiag.items():
            out = out - w * self._nb(phi, d, s)
        return out

    def _remove_closed_mean(self, x: torch.Tensor) -> torch.Tensor:
        if not self._n_closed:
            return x
        flat = x.flatten(1)
        sums = torch.zeros_like(self._label_counts).scatter_add_(1, self._labels, flat)
        mean = (sums / self._label_counts).gather(1, self._labels)
        return (flat - mean).view_as(x)

    def _project(self, us: Velocity, phi0: torch.Tensor) -> tuple[Velocity, torch.Tensor]:
        env = self._env
        b = -env.fluid * mac_divergence(us, env.grid)
        b = self._remove_closed_mean(b)
        x0 = self._remove_closed_mean(phi0 * env.fluid)
        # near a steady state ‖b‖ is round-off: never ask for less than round-off of the
        # divergence scale max|u|/h (summed over the cells), or CG would run its whole budget
        scale = max(float(u.abs().max()) for u in us) / min(self.h)
        # (positive even for a flow at rest: a zero threshold would mean "run the whole budget")
        floor = max(1e-13 * scale * math.sqrt(env.fluid[0].numel()), torch.finfo(b.dtype).tiny)
        cfg = self.pressure_solver
        if cfg.atol < floor:
            cfg = cfg.replace(atol=floor)
        defl = self._deflation
        if defl is None:
            op = LinearOperator(self._pressure_matvec, diagonal=self._pressure_diag, symmetric=True)
            result = cfg.solve(op, b, x0=x0)
            phi = result.solution
        else:
            A = self._pressure_matvec

            def deflated(x):
                y = A(x)
                return y - A(defl.correction(y))

            op = LinearOperator(deflated, diagonal=self._pressure_diag, symmetric=True)
            result = cfg.solve(op, b - A(defl.correction(b)), x0=x0)
            xh = result.solution
            phi = defl.correction(b) + xh - defl.correction(A(xh))
        self.last_pressure_solve = result
        phi = self._remove_closed_mean(phi * env.fluid)
        g = mac_gradient(phi, env.grid)
        u = tuple(ud - f * gd for ud, f, gd in zip(us, self._free, g))
        return self.complete(u), phi



class _Deflation:
    """Subdomain deflation (Nicolaides 1987) of the pressure operator A.

    ``Z`` maps one value per block of ``block^d`` cells to the fluid cells of that block; the
    coarse operator ``E = Zᵀ A Z`` (a weighted graph Laplacian of the blocks) is inverted once
    (pseudo-inverse: closed regions make it singular). CG then solves the deflated system
    ``P A x̂ = P b`` with ``P = I − A Z E⁺ Zᵀ`` (symmetric positive semi-definite), and
    ``x = Z E⁺ Zᵀ b + x̂ − Z E⁺ Zᵀ A x̂``. Its residual is exactly ``b − A x``, while its condition
    number depends on the block size instead of the grid size, so the iteration count stops
    growing with resolution. A by-product: ``Zᵀ(b − A x) = 0``, so the divergence summed over
    every block, hence the net flux through the domain boundary, vanishes to round-off.
    """

    #: the coarse pseudo-inverse is dense (B·m² entries): blocks grow until m ≤ MAX_COARSE and
    #: B·m² ≤ MAX_ENTRIES
    MAX_COARSE = 2048
    MAX_ENTRIES = 2**24

    def __init__(self, center: torch.Tensor, offdiag: dict, fluid: torch.Tensor, periodic, block: int) -> None:
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


def _lap_apply(diag: torch.Tensor, offdiag: dict, v: torch.Tensor) -> torch.Tensor:
    """The linear part of the face Laplacian, ``diag·v + Σ a·v[neighbour]`` (neighbours by a
    wrapped roll: every coefficient of a neighbour across a bounded edge is zero)."""
    out = diag * v
    for (e, s), a in offdiag.items():
        out = out + a * torch.roll(v, -s, dims=e + 2)
    return out
