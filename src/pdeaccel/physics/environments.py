"""Flow environments on a bounded MAC grid: where the fluid is and what the boundaries prescribe.

An environment is *data*, the same for the numerical reference solver
(:class:`~pdeaccel.physics.incompressible.MACFlowSolver`) and for a physics-constrained network:

* ``fluid`` — cell mask ``[B, 1, *cells]``, 1 = fluid, 0 = not fluid (wall, obstacle, inflow or
  outflow cell).
* ``outflow`` — cell mask ``[B, 1, *cells]`` of *open* cells (a subset of the non-fluid ones, on
  the outer layer of the grid): the pressure there is 0 and the velocity leaves freely
  (zero normal gradient).
* ``face_velocity`` — one array per axis ``d``, ``[B, 1, *mac_face_shape(grid, d)]``: the velocity
  component ``d`` prescribed on faces normal to ``d`` (no-slip walls 0, the lid speed, the inflow
  profile, the rigid motion of an obstacle). It is used wherever the face is not free.
* ``face_mask`` / ``face_free`` / ``face_open`` (derived) — per face: prescribed, free unknown,
  or extrapolated (inside an outflow region).
* ``mu``, ``rho`` (per sample), ``dt``, ``body_force`` (per sample, an acceleration).

Layout (that of :mod:`pdeaccel.stencils`): N cells of width ``h = L/N`` per axis; face ``k`` of
axis ``d`` sits at ``x_d = k·h`` (the left face of cell ``k``), N+1 faces on a bounded axis, N on
a periodic one. Walls are *cells*: the builders surround the fluid by one layer of non-fluid
cells (as in Wandel et al. 2021), so that the fluid/solid interface lies on cell faces and a
wall, a lid, an inflow and an obstacle are the same kind of data. Physical coordinates are grid
coordinates minus ``origin`` (the builders put the origin on the first wall face, so a cavity of
side L occupies ``[0, L]²`` while the grid spans ``[−h, L+h]²``). Space outside the grid counts
as a wall at rest.

Classification of a face from its two adjacent cells (F fluid, S solid, O outflow, · outside):

=================  =========================================================================
free               FF, FO — an unknown of the solver
prescribed         any pair with S, and F· — value from ``face_velocity`` (``face_mask`` = 1)
open               OO, O· — extrapolated from the neighbouring free faces (zero gradient)
=================  =========================================================================

Obstacles (:class:`Obstacle`: box, cylinder, sphere) may translate (``velocity``) and rotate
(``angular_velocity``, a prescribed surface velocity; the shape itself is not rotated). They are
rasterised onto cell centres; :meth:`FlowEnvironment.shifted` moves them by ``velocity·dt`` and
rasterises again.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from ..grid import Grid
from ..stencils import mac_face_shape

# cell classes
FLUID, SOLID, OUTFLOW, OUTSIDE = 0, 1, 2, 3
# face classes (INTERIOR: prescribed face with no fluid/outflow cell on either side, i.e. inside
# a wall; BEYOND is only used for neighbours that fall off a bounded axis)
FREE, PRESCRIBED, INTERIOR, OPEN, BEYOND = 0, 1, 2, 3, 4

ObstacleShape = Literal["box", "cylinder", "sphere"]


# ----------------------------------------------------------------------------------------------
# small MAC helpers shared with the solver
# ----------------------------------------------------------------------------------------------


def shift(x: torch.Tensor, dim: int, offset: int, periodic: bool, fill: float | int = 0) -> torch.Tensor:
    """``y[…, i, …] = x[…, i + offset, …]`` along ``dim``; wraps if periodic, else ``fill``."""
    if offset == 0:
        return x
    if periodic:
        return torch.roll(x, -offset, dims=dim)
    n = x.shape[dim]
    k = min(abs(offset), n)
    pad_shape = list(x.shape)
    pad_shape[dim] = k
    pad = torch.full(pad_shape, fill, dtype=x.dtype, device=x.device)
    if offset > 0:
        return torch.cat([x.narrow(dim, k, n - k), pad], dim)
    return torch.cat([pad, x.narrow(dim, 0, n - k)], dim)


def mac_spacing(grid: Grid) -> tuple[float, ...]:
    """Cell width ``L/N`` per axis (a MAC grid is cell-based whatever the boundary kind)."""
    return tuple(L / n for n, L in zip(grid.shape, grid.extent))


def face_neighbour_cells(cells: torch.Tensor, axis: int, periodic: bool, outside: int = OUTSIDE):
    """The two cells adjacent to every face normal to ``axis``: (cell k−1, cell k)."""
    dim = axis + 2
    if periodic:
        return torch.roll(cells, 1, dims=dim), cells
    pad_shape = list(cells.shape)
    pad_shape[dim] = 1
    pad = torch.full(pad_shape, outside, dtype=cells.dtype, device=cells.device)
    padded = torch.cat([pad, cells, pad], dim)
    n = cells.shape[dim]
    return padded.narrow(dim, 0, n + 1), padded.narrow(dim, 1, n + 1)


def classify_faces(cell_class: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, ...]:
    """Face classes (FREE, PRESCRIBED, INTERIOR, OPEN) per axis from cell classes."""
    out = []
    for axis in range(grid.ndim):
        left, right = face_neighbour_cells(cell_class, axis, grid.boundary[axis] == "periodic")
        has_f = (left == FLUID) | (right == FLUID)
        has_o = (left == OUTFLOW) | (right == OUTFLOW)
        has_s = (left == SOLID) | (right == SOLID)
        has_out = (left == OUTSIDE) | (right == OUTSIDE)
        cls = torch.full_like(left, PRESCRIBED)
        cls = torch.where(has_f & ~has_s & ~has_out, torch.full_like(cls, FREE), cls)
        cls = torch.where(~has_f & has_o & ~has_s, torch.full_like(cls, OPEN), cls)
        cls = torch.where(~has_f & ~has_o, torch.full_like(cls, INTERIOR), cls)
        out.append(cls)
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# obstacles
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Obstacle:
    """A rigid obstacle, in physical coordinates.

    ``shape``: ``"box"`` (axis-aligned, side lengths ``size``), ``"cylinder"`` (radius ``radius``;
    a disc in 2D, a cylinder along z in 3D) or ``"sphere"`` (3D ball; in 2D the same as a
    cylinder). Its surface moves with the rigid velocity ``velocity + ω × (x − center)``
    (2D: ``ω`` is a scalar, ``ω × r = (−ω r_y, ω r_x)``).
    """

    shape: ObstacleShape
    center: tuple[float, ...]
    size: tuple[float, ...] = ()
    radius: float = 0.0
    velocity: tuple[float, ...] = ()
    angular_velocity: float | tuple[float, float, float] = 0.0

    def __post_init__(self) -> None:
        if self.shape not in ("box", "cylinder", "sphere"):
            raise ValueError(f"Obstacle shape must be 'box', 'cylinder' or 'sphere', got {self.shape!r}.")
        center = _float_tuple(self.center, "Obstacle center")
        ndim = len(center)
        if ndim not in (2, 3):
            raise ValueError(f"Obstacle center must have 2 or 3 coordinates, got {center}.")
        object.__setattr__(self, "center", center)
        velocity = _float_tuple(self.velocity or (0.0,) * ndim, "Obstacle velocity")
        if len(velocity) != ndim:
            raise ValueError(f"Obstacle velocity needs {ndim} components (like center), got {velocity}.")
        object.__setattr__(self, "velocity", velocity)
        if self.shape == "box":
            size = _float_tuple(self.size, "Obstacle size")
            if len(size) != ndim or any(s <= 0 for s in size):
                raise ValueError(f"a box needs {ndim} positive side lengths, got size={size}.")
            object.__setattr__(self, "size", size)
        else:
            r = float(self.radius)
            if not (math.isfinite(r) and r > 0):
                raise ValueError(f"a {self.shape} needs a positive finite radius, got radius={self.radius!r}.")
            object.__setattr__(self, "radius", r)
        omega = self.angular_velocity
        if ndim == 2:
            if not isinstance(omega, (int, float)) or not math.isfinite(omega):
                raise ValueError(f"a 2D obstacle's angular_velocity is one finite number, got {omega!r}.")
            object.__setattr__(self, "angular_velocity", float(omega))
        else:
            omega = (0.0, 0.0, float(omega)) if isinstance(omega, (int, float)) else _float_tuple(omega, "angular_velocity")
            if len(omega) != 3:
                raise ValueError(f"a 3D obstacle's angular_velocity has 3 components, got {omega}.")
            object.__setattr__(self, "angular_velocity", omega)

    @classmethod
    def box(cls, center: Sequence[float], size: Sequence[float], *, velocity: Sequence[float] = (),
            angular_velocity: float | Sequence[float] = 0.0) -> "Obstacle":
        return cls("box", tuple(center), size=tuple(size), velocity=tuple(velocity),
                   angular_velocity=_omega_arg(angular_velocity))

    @classmethod
    def cylinder(cls, center: Sequence[float], radius: float, *, velocity: Sequence[float] = (),
                 angular_velocity: float | Sequence[float] = 0.0) -> "Obstacle":
        return cls("cylinder", tuple(center), radius=radius, velocity=tuple(velocity),
                   angular_velocity=_omega_arg(angular_velocity))

    @classmethod
    def sphere(cls, center: Sequence[float], radius: float, *, velocity: Sequence[float] = (),
               angular_velocity: float | Sequence[float] = 0.0) -> "Obstacle":
        return cls("sphere", tuple(center), radius=radius, velocity=tuple(velocity),
                   angular_velocity=_omega_arg(angular_velocity))

    @property
    def ndim(self) -> int:
        return len(self.center)

    @property
    def moves(self) -> bool:
        return any(v != 0.0 for v in self.velocity)

    def contains(self, points: Sequence[torch.Tensor]) -> torch.Tensor:
        """Boolean mask of the points (one coordinate tensor per axis) inside the obstacle."""
        r = [p - c for p, c in zip(points, self.center)]
        if self.shape == "box":
            inside = torch.ones_like(r[0], dtype=torch.bool)
            for ra, s in zip(r, self.size):
                inside = inside & (ra.abs() <= 0.5 * s)
            return inside
        axes = r[:2] if (self.shape == "cylinder" and self.ndim == 3) else r
        return sum(ra * ra for ra in axes) <= self.radius**2

    def velocity_at(self, points: Sequence[torch.Tensor], axis: int) -> torch.Tensor:
        """Component ``axis`` of the rigid velocity ``U + ω × (x − c)`` at the points."""
        r = [p - c for p, c in zip(points, self.center)]
        v = torch.full_like(r[0], self.velocity[axis])
        if self.ndim == 2:
            w = self.angular_velocity
            return v + (-w * r[1] if axis == 0 else w * r[0])
        w = self.angular_velocity
        a, b = (axis + 1) % 3, (axis + 2) % 3
        return v + w[a] * r[b] - w[b] * r[a]

    def shifted(self, dt: float) -> "Obstacle":
        """The obstacle after translating for a time ``dt`` (its shape does not rotate)."""
        center = tuple(c + v * dt for c, v in zip(self.center, self.velocity))
        return dataclasses.replace(self, center=center)


# ----------------------------------------------------------------------------------------------
# the environment
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FlowEnvironment:
    """Masks, boundary values and fluid parameters of a batch of flow problems (see the module
    docstring for the layout and the meaning of every field).

    Args:
        grid: the cell grid; bounded axes may be ``"neumann"`` or ``"dirichlet"`` (both mean "a
            bounded MAC axis with N cells of width L/N"), or ``"periodic"``.
        fluid: cell mask, 1 = fluid; shape ``grid.shape``, ``[1, *grid.shape]`` or
            ``[B, 1, *grid.shape]`` (tensor or NumPy array, values in {0, 1}).
        face_velocity: per axis, the prescribed normal velocity on the faces (shapes as
            :func:`~pdeaccel.stencils.mac_face_shape`, optionally with ``[B, 1]`` in front).
        mu, rho: dynamic viscosity and density (> 0), one value or one per sample.
        dt: the time step (> 0).
        outflow: open cells (subset of the non-fluid cells on the outer layer of the grid).
        body_force: an acceleration per sample (``[B, ndim]``) or one for all (``ndim`` values).
        obstacles: per sample, the obstacles already rasterised into ``fluid``/``face_velocity``
            (needed only to move them: :meth:`shifted`).
        background: ``(fluid, face_velocity)`` without the obstacles (needed by :meth:`shifted`).
        origin: grid coordinates of the physical origin (see the module docstring).
    """

    grid: Grid
    fluid: torch.Tensor
    face_velocity: tuple[torch.Tensor, ...]
    mu: torch.Tensor | float
    rho: torch.Tensor | float
    dt: float
    outflow: torch.Tensor | None = None
    body_force: torch.Tensor | Sequence[float] | None = None
    obstacles: tuple[tuple[Obstacle, ...], ...] | None = None
    background: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None
    origin: tuple[float, ...] | None = None
    face_class: tuple[torch.Tensor, ...] = field(init=False, repr=False)
    closed_components: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        grid = self.grid
        if not isinstance(grid, Grid):
            raise TypeError(f"grid must be a pdeaccel Grid, got {type(grid).__name__}.")
        if grid.ndim not in (2, 3):
            raise ValueError(f"flow environments are 2D or 3D, got a {grid.ndim}D grid {grid.shape}.")
        if any(n < 2 for n in grid.shape):
            raise ValueError(f"every axis needs at least 2 cells, got grid shape {grid.shape}.")
        fluid = _as_batched(self.fluid, grid.shape, "fluid", None)
        dtype = fluid.dtype if fluid.is_floating_point() else torch.get_default_dtype()
        fluid = fluid.to(dtype)
        values = torch.unique(fluid)
        if not bool(((values == 0) | (values == 1)).all()):
            bad = [float(v) for v in values if v not in (0, 1)][:5]
            raise ValueError(f"fluid mask values must be 0 (solid) or 1 (fluid), found {bad}.")
        if not isinstance(self.face_velocity, (tuple, list)) or len(self.face_velocity) != grid.ndim:
            got = len(self.face_velocity) if isinstance(self.face_velocity, (tuple, list)) else type(self.face_velocity).__name__
            raise ValueError(f"face_velocity needs one array per axis ({grid.ndim}), got {got}.")
        faces = [_as_batched(fv, mac_face_shape(grid, d), f"face_velocity[{d}]", None).to(dtype=dtype, device=fluid.device)
                 for d, fv in enumerate(self.face_velocity)]
        batches = {fluid.shape[0]} | {f.shape[0] for f in faces}
        B = max(batches)
        if not batches <= {1, B}:
            raise ValueError(f"fluid and face_velocity have incompatible batch sizes {sorted(batches)}.")
        for d, f in enumerate(faces):
            if not bool(torch.isfinite(f).all()):
                raise ValueError(f"face_velocity[{d}] contains NaN or inf values.")
        fluid = _expand(fluid, B)
        faces = [_expand(f, B) for f in faces]
        if self.outflow is None:
            outflow = torch.zeros_like(fluid)
        else:
            outflow = _as_batched(self.outflow, grid.shape, "outflow", B).to(dtype=dtype, device=fluid.device)
            outflow = _expand(outflow, B)
            vals = torch.unique(outflow)
            if not bool(((vals == 0) | (vals == 1)).all()):
                raise ValueError("outflow mask values must be 0 or 1.")
            if bool(((outflow > 0) & (fluid > 0)).any()):
                raise ValueError("outflow cells must be non-fluid cells (fluid=0 there); found cells marked both.")
            _check_outflow_on_border(outflow, grid)
        mu = _per_sample(self.mu, B, "mu", dtype, fluid.device)
        rho = _per_sample(self.rho, B, "rho", dtype, fluid.device)
        dt = self.dt
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive finite number, got {dt!r}.")
        if self.body_force is None:
            body = torch.zeros(B, grid.ndim, dtype=dtype, device=fluid.device)
        else:
            body = torch.as_tensor(self.body_force, dtype=dtype, device=fluid.device)
            if body.dim() == 1:
                body = body[None].expand(B, -1)
            if tuple(body.shape) != (B, grid.ndim):
                raise ValueError(f"body_force must have {grid.ndim} components (or shape [{B}, {grid.ndim}]), "
                                 f"got shape {list(body.shape)}.")
            if not bool(torch.isfinite(body).all()):
                raise ValueError("body_force contains NaN or inf values.")
        obstacles = tuple(tuple(o) for o in self.obstacles) if self.obstacles is not None else tuple(() for _ in range(B))
        if len(obstacles) != B:
            raise ValueError(f"obstacles needs one tuple per sample ({B}), got {len(obstacles)}.")
        for sample in obstacles:
            for o in sample:
                if not isinstance(o, Obstacle) or o.ndim != grid.ndim:
                    raise ValueError(f"obstacles must be {grid.ndim}D Obstacle objects, got {o!r}.")
        origin = tuple(float(o) for o in self.origin) if self.origin is not None else (0.0,) * grid.ndim
        if len(origin) != grid.ndim:
            raise ValueError(f"origin needs {grid.ndim} coordinates, got {origin}.")

        object.__setattr__(self, "fluid", fluid)
        object.__setattr__(self, "face_velocity", tuple(faces))
        object.__setattr__(self, "outflow", outflow)
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "rho", rho)
        object.__setattr__(self, "dt", float(dt))
        object.__setattr__(self, "body_force", body)
        object.__setattr__(self, "obstacles", obstacles)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "face_class", classify_faces(self.cell_class, grid))
        object.__setattr__(self, "closed_components", _closed_components(fluid, outflow, grid))
        self._check_flux_balance()

    # -------------------------------------------------------------------------------- views
    @property
    def ndim(self) -> int:
        return self.grid.ndim

    @property
    def batch_size(self) -> int:
        return self.fluid.shape[0]

    @property
    def spacing(self) -> tuple[float, ...]:
        return mac_spacing(self.grid)

    @property
    def nu(self) -> torch.Tensor:
        """Kinematic viscosity ``μ/ρ`` per sample."""
        return self.mu / self.rho

    @property
    def cell_class(self) -> torch.Tensor:
        """Integer cell classes: 0 fluid, 1 solid, 2 outflow."""
        cls = torch.where(self.fluid > 0, FLUID, SOLID).to(torch.int8)
        return torch.where(self.outflow > 0, torch.full_like(cls, OUTFLOW), cls)

    @property
    def face_mask(self) -> tuple[torch.Tensor, ...]:
        """Per axis, 1 on faces whose normal velocity is prescribed (walls, inflow, obstacles)."""
        return tuple(((c == PRESCRIBED) | (c == INTERIOR)).to(self.fluid.dtype) for c in self.face_class)

    @property
    def face_free(self) -> tuple[torch.Tensor, ...]:
        """Per axis, 1 on faces whose velocity is an unknown (between two fluid/outflow cells)."""
        return tuple((c == FREE).to(self.fluid.dtype) for c in self.face_class)

    @property
    def face_open(self) -> tuple[torch.Tensor, ...]:
        """Per axis, 1 on faces inside outflow regions (velocity extrapolated, not prescribed)."""
        return tuple((c == OPEN).to(self.fluid.dtype) for c in self.face_class)

    @property
    def has_moving_obstacles(self) -> bool:
        return any(o.moves for sample in self.obstacles for o in sample)

    def cell_coordinates(self) -> tuple[torch.Tensor, ...]:
        """Physical coordinates of the cell centres, one ``grid.shape`` tensor per axis."""
        return _coordinates(self.grid, None, self.origin, self.fluid.dtype, self.fluid.device)

    def face_coordinates(self, axis: int) -> tuple[torch.Tensor, ...]:
        """Physical coordinates of the faces normal to ``axis`` (one tensor per coordinate)."""
        return _coordinates(self.grid, axis, self.origin, self.fluid.dtype, self.fluid.device)

    def net_prescribed_flux(self) -> torch.Tensor:
        """Net volume flux into the fluid through prescribed faces, per sample (0 when balanced
        or when an outflow lets the difference leave)."""
        return _boundary_flux_per_cell(self).sum(dim=1)

    # -------------------------------------------------------------------------------- changes
    def replace(self, **changes) -> "FlowEnvironment":
        """A copy with some fields changed (validated again)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        fields.update(changes)
        return FlowEnvironment(**fields)

    def shifted(self, dt: float | None = None) -> "FlowEnvironment":
        """The environment after its obstacles translated for ``dt`` (default: one time step).

        Obstacles are rasterised again onto the background, so cells they leave become fluid
        (their faces keep the values the solver last gave them) and cells they enter become solid.
        """
        dt = self.dt if dt is None else dt
        if not self.has_moving_obstacles:
            return self
        if self.background is None:
            raise ValueError("this environment has moving obstacles but no background (the masks without "
                             "the obstacles); build it with a builder or pass background=(fluid, face_velocity).")
        moved = tuple(tuple(o.shifted(dt) for o in sample) for sample in self.obstacles)
        fluid, faces = rasterise(self.grid, self.background[0], self.background[1], moved, self.origin)
        return self.replace(fluid=fluid, face_velocity=faces, obstacles=moved)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "FlowEnvironment":
        def conv(t):
            return t.to(device=device, dtype=dtype)

        background = None
        if self.background is not None:
            background = (conv(self.background[0]), tuple(conv(f) for f in self.background[1]))
        return self.replace(fluid=conv(self.fluid), face_velocity=tuple(conv(f) for f in self.face_velocity),
                            outflow=conv(self.outflow), mu=conv(self.mu), rho=conv(self.rho),
                            body_force=conv(self.body_force), background=background)

    @staticmethod
    def stack(envs: Sequence["FlowEnvironment"]) -> "FlowEnvironment":
        """One batched environment from several (same grid, dt and origin)."""
        envs = list(envs)
        if not envs:
            raise ValueError("stack needs at least one environment.")
        first = envs[0]
        for e in envs[1:]:
            if e.grid != first.grid or e.dt != first.dt or e.origin != first.origin:
                raise ValueError(f"environments to stack must share grid, dt and origin; got {e.grid}/{e.dt}/"
                                 f"{e.origin} vs {first.grid}/{first.dt}/{first.origin}.")
        cat = torch.cat
        background = None
        if all(e.background is not None for e in envs):
            background = (cat([e.background[0] for e in envs]),
                          tuple(cat([e.background[1][d] for e in envs]) for d in range(first.ndim)))
        return FlowEnvironment(
            grid=first.grid, fluid=cat([e.fluid for e in envs]),
            face_velocity=tuple(cat([e.face_velocity[d] for e in envs]) for d in range(first.ndim)),
            mu=cat([e.mu for e in envs]), rho=cat([e.rho for e in envs]), dt=first.dt,
            outflow=cat([e.outflow for e in envs]), body_force=cat([e.body_force for e in envs]),
            obstacles=sum((e.obstacles for e in envs), ()), background=background, origin=first.origin)

    # -------------------------------------------------------------------------------- checks
    def _check_flux_balance(self) -> None:
        """A closed fluid region (no outflow) must receive zero net flux through its prescribed
        faces, otherwise no divergence-free velocity exists (the pressure equation has no
        solution)."""
        labels = self.closed_components
        if int(labels.max()) == 0:
            return
        flux_in = _boundary_flux_per_cell(self)  # [B, cells]
        lab = labels.flatten(1).long()
        K = int(lab.max()) + 1
        net = torch.zeros(self.batch_size, K, dtype=flux_in.dtype, device=flux_in.device).scatter_add_(1, lab, flux_in)
        scale = torch.zeros_like(net).scatter_add_(1, lab, flux_in.abs())
        # relative to the gross flux at the dtype's round-off (float32 profiles sum to ~1e-7·gross)
        rel = max(1e-9, 100 * torch.finfo(flux_in.dtype).eps)
        bad = (net[:, 1:].abs() > rel * (scale[:, 1:] + 1e-300)) & (net[:, 1:].abs() > 1e-12)
        if bool(bad.any()):
            b, k = [int(i) for i in torch.nonzero(bad)[0]]
            raise ValueError(
                f"sample {b}: the closed fluid region {k + 1} receives a net volume flux of "
                f"{float(net[b, k + 1]):.6g} through its prescribed faces (gross flux "
                f"{float(scale[b, k + 1]):.6g}); incompressible flow needs zero. Balance inflow and "
                "outflow velocities or add an open outflow.")


# ----------------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------------


def lid_driven_cavity(
    n: int | Sequence[int] = 32,
    *,
    ndim: int = 2,
    length: float = 1.0,
    lid_speed: float = 1.0,
    reynolds: float = 100.0,
    rho: float = 1.0,
    dt: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> FlowEnvironment:
    """A square (cubic) cavity of side ``length`` with ``n`` fluid cells per side, closed by no-slip
    walls; the top wall (high y) slides along +x at ``lid_speed``.

    ``μ = ρ·lid_speed·length / reynolds``. Default ``dt``: half a cell per lid passage
    (``0.5·h/lid_speed``). The grid has ``n+2`` cells per axis (the wall layer).
    """
    sizes = _int_tuple(n, ndim, "n")
    _positive(length, "length"), _finite(lid_speed, "lid_speed"), _positive(reynolds, "reynolds"), _positive(rho, "rho")
    h = length / sizes[0]
    if any(abs(length / s - h) > 1e-12 * h for s in sizes):
        raise ValueError(f"a cavity needs square cells; got n={sizes} for one side length {length}.")
    grid = Grid(tuple(s + 2 for s in sizes), tuple((s + 2) * h for s in sizes), "neumann")
    fluid = torch.zeros((1, 1) + grid.shape, dtype=dtype)
    fluid[(slice(None), slice(None)) + (slice(1, -1),) * ndim] = 1.0
    faces = [torch.zeros((1, 1) + mac_face_shape(grid, d), dtype=dtype) for d in range(ndim)]
    # the lid is the top layer of wall cells (high y): the x-faces inside it carry the lid speed
    faces[0][:, :, :, -1] = lid_speed
    mu = rho * abs(lid_speed) * length / reynolds if lid_speed != 0 else rho * length / reynolds
    dt = 0.5 * h / max(abs(lid_speed), 1e-12) if dt is None else dt
    return FlowEnvironment(grid, fluid, tuple(faces), mu=mu, rho=rho, dt=dt, origin=(h,) * ndim)


def channel(
    length: float,
    height: float,
    resolution: int,
    *,
    ndim: int = 2,
    depth: float | None = None,
    inflow_speed: float = 1.0,
    profile: Literal["parabolic", "uniform"] = "parabolic",
    outflow: Literal["open", "prescribed"] = "open",
    obstacles: Sequence[Obstacle] = (),
    mu: float = 0.01,
    rho: float = 1.0,
    dt: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> FlowEnvironment:
    """A channel along x of ``length`` × ``height`` (× ``depth`` in 3D) with no-slip walls.

    ``resolution`` cells span the height (``h = height/resolution``). The fluid enters at x = 0
    with mean speed ``inflow_speed`` (``profile="parabolic"``: plane Poiseuille
    ``6Ū·y(H−y)/H²``, in 3D the product profile ``36Ū·y(H−y)z(W−z)/(H²W²)``; or uniform) and
    leaves at x = length through an open outflow (pressure 0, zero normal gradient) or, with
    ``outflow="prescribed"``, through faces carrying the inflow profile (Wandel et al.'s
    in/outflow cells; the flow then has no open boundary). ``obstacles`` are in physical
    coordinates (origin at the inflow wall corner). Default ``dt``: half a cell at the peak
    inflow speed.
    """
    _positive(length, "length"), _positive(height, "height"), _finite(inflow_speed, "inflow_speed")
    if profile not in ("parabolic", "uniform"):
        raise ValueError(f"profile must be 'parabolic' or 'uniform', got {profile!r}.")
    if outflow not in ("open", "prescribed"):
        raise ValueError(f"outflow must be 'open' or 'prescribed', got {outflow!r}.")
    if not _is_int(ndim) or ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}.")
    if not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution (cells across the height) must be an integer >= 2, got {resolution!r}.")
    h = height / resolution
    extents = [length, height] + ([height if depth is None else depth] if ndim == 3 else [])
    _positive(extents[-1], "depth")
    cells = [max(2, round(e / h)) for e in extents]
    grid = Grid(tuple(c + 2 for c in cells), tuple((c + 2) * h for c in cells), "neumann")
    origin = (h,) * ndim
    fluid = torch.zeros((1, 1) + grid.shape, dtype=dtype)
    fluid[(slice(None), slice(None)) + (slice(1, -1),) * ndim] = 1.0
    faces = [torch.zeros((1, 1) + mac_face_shape(grid, d), dtype=dtype) for d in range(ndim)]
    coords = _coordinates(grid, 0, origin, dtype, "cpu")
    shape_fn = torch.ones_like(coords[1])
    if profile == "parabolic":
        for a in range(1, ndim):
            H = cells[a] * h
            y = coords[a].clamp(0.0, H)
            shape_fn = shape_fn * 6.0 * y * (H - y) / H**2
    u_in = inflow_speed * shape_fn
    # the inflow column x-faces (and the outer boundary face) carry the profile
    faces[0][0, 0, :2] = u_in[:2]
    out = torch.zeros_like(fluid)
    if outflow == "prescribed":
        faces[0][0, 0, -2:] = u_in[-2:]
    else:
        interior = (slice(1, -1),) * (ndim - 1)
        out[(0, 0, -1) + interior] = 1.0
    fluid_bg, faces_bg = fluid, tuple(faces)
    fluid, faces = rasterise(grid, fluid_bg, faces_bg, (tuple(obstacles),), origin)
    peak = abs(inflow_speed) * (1.5 ** (ndim - 1) if profile == "parabolic" else 1.0)
    dt = 0.5 * h / max(peak, 1e-12) if dt is None else dt
    return FlowEnvironment(grid, fluid, faces, mu=mu, rho=rho, dt=dt, outflow=out,
                           obstacles=(tuple(obstacles),), background=(fluid_bg, faces_bg), origin=origin)


def channel_with_box(
    length: float = 3.0,
    height: float = 1.0,
    resolution: int = 32,
    *,
    box_center: Sequence[float] | None = None,
    box_size: Sequence[float] | None = None,
    box_velocity: Sequence[float] = (),
    **channel_kwargs,
) -> FlowEnvironment:
    """:func:`channel` with an axis-aligned box (default: a square of side height/5 at x = height,
    centred in the cross-section). Extra keyword arguments go to :func:`channel`."""
    ndim = channel_kwargs.get("ndim", 2)
    depth = channel_kwargs.get("depth") or height
    center = box_center or ((height, height / 2) if ndim == 2 else (height, height / 2, depth / 2))
    size = box_size or (height / 5,) * ndim
    return channel(length, height, resolution,
                   obstacles=(Obstacle.box(center, size, velocity=box_velocity),), **channel_kwargs)


def channel_with_cylinder(
    length: float = 2.2,
    height: float = 0.41,
    resolution: int = 41,
    *,
    center: Sequence[float] = (0.2, 0.2),
    radius: float = 0.05,
    angular_velocity: float | Sequence[float] = 0.0,
    reynolds: float | None = None,
    **channel_kwargs,
) -> FlowEnvironment:
    """:func:`channel` with a cylinder; the defaults are Schäfer & Turek's (1996) benchmark
    channel (2.2 × 0.41, cylinder of diameter 0.1 at (0.2, 0.2), parabolic inflow).

    ``angular_velocity`` spins the cylinder (a prescribed tangential surface velocity, the
    "magnus" environments). ``reynolds`` (if given) sets ``μ = ρ·Ū·D/Re`` with Ū the mean inflow
    speed and D = 2·radius.
    """
    ndim = channel_kwargs.get("ndim", 2)
    if ndim == 3 and len(center) == 2:
        center = (center[0], center[1], (channel_kwargs.get("depth") or height) / 2)
    if reynolds is not None:
        _positive(reynolds, "reynolds")
        rho = channel_kwargs.get("rho", 1.0)
        channel_kwargs["mu"] = rho * abs(channel_kwargs.get("inflow_speed", 1.0)) * 2 * radius / reynolds
    obstacle = Obstacle.cylinder(center, radius, angular_velocity=angular_velocity)
    return channel(length, height, resolution, obstacles=(obstacle,), **channel_kwargs)


def pipe(
    length: float = 4.0,
    diameter: float = 1.0,
    resolution: int = 16,
    *,
    ndim: int = 2,
    inflow_speed: float = 1.0,
    mu: float = 0.01,
    rho: float = 1.0,
    dt: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> FlowEnvironment:
    """A straight pipe along x with Poiseuille inflow of mean speed ``inflow_speed`` and an open
    outflow. 2D: the plane channel of width ``diameter``. 3D: a circular cross-section (cells
    whose centre lies farther than ``diameter/2`` from the axis are wall), inflow
    ``2Ū(1 − r²/R²)``. ``resolution`` cells span the diameter."""
    if ndim == 2:
        return channel(length, diameter, resolution, inflow_speed=inflow_speed, mu=mu, rho=rho, dt=dt, dtype=dtype)
    if dt is None:  # half a cell at the peak speed 2Ū
        dt = 0.25 * diameter / resolution / max(abs(inflow_speed), 1e-12)
    env = channel(length, diameter, resolution, ndim=3, inflow_speed=inflow_speed, profile="uniform",
                  mu=mu, rho=rho, dt=dt, dtype=dtype)
    R = diameter / 2
    _, y, z = env.cell_coordinates()
    inside = ((y - R) ** 2 + (z - R) ** 2 <= R * R)[None, None]
    fluid = env.fluid * inside
    outflow = env.outflow * inside
    _, fy, fz = env.face_coordinates(0)
    r2 = ((fy - R) ** 2 + (fz - R) ** 2) / (R * R)
    u_in = (2 * inflow_speed * (1 - r2)).clamp(min=0.0)
    faces = [f.clone() for f in env.face_velocity]
    faces[0][0, 0, :2] = u_in[:2]
    return env.replace(fluid=fluid, outflow=outflow, face_velocity=tuple(faces), background=(fluid, tuple(faces)))


def from_mask(
    mask: np.ndarray | torch.Tensor | str | Path,
    *,
    cell_size: float = 1.0,
    frame: Literal["channel", "closed", "none"] = "channel",
    inflow_speed: float = 1.0,
    profile: Literal["parabolic", "uniform"] = "uniform",
    outflow: Literal["open", "prescribed"] = "open",
    threshold: float = 0.5,
    mu: float = 0.1,
    rho: float = 1.0,
    dt: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> FlowEnvironment:
    """An environment from a user-drawn 2D mask.

    ``mask`` is either an array indexed ``[x, y]`` (grid order) with 1/True = fluid and 0/False =
    solid, or the path of an image (read with ``matplotlib.image.imread``; rows are y from the
    top, as displayed) whose dark pixels (grey level below ``threshold``, on a 0–1 scale) are
    solid. ``frame`` adds a layer of cells around it: ``"channel"`` — inflow at low x (speed
    ``inflow_speed``, ``profile``), outflow at high x, no-slip walls along y; ``"closed"`` —
    no-slip walls all around; ``"none"`` — nothing added (outside the grid counts as a wall at
    rest).
    """
    arr = _read_mask(mask, threshold)
    if frame not in ("channel", "closed", "none"):
        raise ValueError(f"frame must be 'channel', 'closed' or 'none', got {frame!r}.")
    _positive(cell_size, "cell_size")
    nx, ny = arr.shape
    pad = 0 if frame == "none" else 1
    grid = Grid((nx + 2 * pad, ny + 2 * pad), ((nx + 2 * pad) * cell_size, (ny + 2 * pad) * cell_size), "neumann")
    fluid = torch.zeros((1, 1) + grid.shape, dtype=dtype)
    fluid[0, 0, pad:pad + nx, pad:pad + ny] = torch.as_tensor(arr, dtype=dtype)
    faces = [torch.zeros((1, 1) + mac_face_shape(grid, d), dtype=dtype) for d in range(2)]
    origin = (pad * cell_size,) * 2
    out = torch.zeros_like(fluid)
    if frame == "channel":
        if profile not in ("parabolic", "uniform"):
            raise ValueError(f"profile must be 'parabolic' or 'uniform', got {profile!r}.")
        _, y = _coordinates(grid, 0, origin, dtype, "cpu")
        H = ny * cell_size
        yc = y.clamp(0.0, H)
        u_in = inflow_speed * (6.0 * yc * (H - yc) / H**2 if profile == "parabolic" else torch.ones_like(yc))
        faces[0][0, 0, :2] = u_in[:2]
        if outflow == "prescribed":
            faces[0][0, 0, -2:] = u_in[-2:]
        elif outflow == "open":
            out[0, 0, -1, 1:-1] = 1.0
        else:
            raise ValueError(f"outflow must be 'open' or 'prescribed', got {outflow!r}.")
        # inflow/outflow cells next to a solid pixel of the mask's first/last column stay walls
        faces[0][0, 0, 1] *= fluid[0, 0, 1]
        out[0, 0, -1] *= fluid[0, 0, -2]
        if outflow == "prescribed":
            faces[0][0, 0, -2] *= fluid[0, 0, -2]
    h = cell_size
    dt = 0.5 * h / max(abs(inflow_speed), 1e-12) if dt is None else dt
    return FlowEnvironment(grid, fluid, tuple(faces), mu=mu, rho=rho, dt=dt, outflow=out, origin=origin,
                           background=(fluid, tuple(faces)))


def rasterise(grid: Grid, fluid: torch.Tensor, face_velocity: Sequence[torch.Tensor],
              obstacles: Sequence[Sequence[Obstacle]], origin: Sequence[float]):
    """Burn obstacles (per sample) into a background: cells whose centre is inside become solid;
    every face touching one of its cells takes the obstacle's rigid velocity (normal component)."""
    fluid = fluid.clone()
    faces = [f.clone() for f in face_velocity]
    B = fluid.shape[0]
    if len(obstacles) not in (1, B):
        raise ValueError(f"obstacles needs one tuple per sample ({B}), got {len(obstacles)}.")
    cell_pts = _coordinates(grid, None, origin, fluid.dtype, fluid.device)
    face_pts = [_coordinates(grid, d, origin, fluid.dtype, fluid.device) for d in range(grid.ndim)]
    if fluid.shape[0] != len(obstacles) and len(obstacles) == 1:
        obstacles = tuple(obstacles) * B
    for b, sample in enumerate(obstacles):
        for o in sample:
            if o.ndim != grid.ndim:
                raise ValueError(f"a {o.ndim}D obstacle in a {grid.ndim}D grid: {o!r}.")
            inside = o.contains(cell_pts)
            fluid[b, 0][inside] = 0.0
            for d in range(grid.ndim):
                left, right = face_neighbour_cells(inside[None, None].to(torch.int8), d,
                                                   grid.boundary[d] == "periodic", outside=0)
                touch = ((left > 0) | (right > 0))[0, 0]
                faces[d][b, 0] = torch.where(touch, o.velocity_at(face_pts[d], d), faces[d][b, 0])
    return fluid, tuple(faces)


# ----------------------------------------------------------------------------------------------
# private helpers
# ----------------------------------------------------------------------------------------------


def _coordinates(grid: Grid, axis: int | None, origin, dtype, device) -> tuple[torch.Tensor, ...]:
    """Physical coordinates of cell centres (axis=None) or of the faces normal to ``axis``."""
    h = mac_spacing(grid)
    shape = grid.shape if axis is None else mac_face_shape(grid, axis)
    axes = []
    for a, (n, ha) in enumerate(zip(shape, h)):
        offset = 0.0 if a == axis else 0.5
        axes.append((torch.arange(n, dtype=dtype, device=device) + offset) * ha - origin[a])
    return tuple(torch.meshgrid(*axes, indexing="ij"))


def _as_batched(x, space_shape: tuple[int, ...], name: str, batch: int | None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a NumPy array, got {type(x).__name__}.")
    if x.dtype == torch.bool:
        x = x.to(torch.get_default_dtype())
    nd = len(space_shape)
    if x.dim() == nd:
        x = x[None, None]
    elif x.dim() == nd + 1:
        x = x[None]
    if x.dim() != nd + 2 or x.shape[1] != 1 or tuple(x.shape[2:]) != tuple(space_shape):
        raise ValueError(f"{name} must have shape {list(space_shape)} or [batch, 1, {', '.join(map(str, space_shape))}] "
                         f"for this grid, got {list(x.shape)}.")
    if batch is not None and x.shape[0] not in (1, batch):
        raise ValueError(f"{name} has batch size {x.shape[0]}, the fluid mask has {batch}.")
    return x


def _expand(x: torch.Tensor, B: int) -> torch.Tensor:
    return x.expand(B, *x.shape[1:]).clone() if x.shape[0] != B else x


def _per_sample(value, B: int, name: str, dtype, device) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device).flatten()
    if t.numel() == 1:
        t = t.expand(B).clone()
    if t.numel() != B:
        raise ValueError(f"{name} must be one number or one per sample ({B}), got {t.numel()} values.")
    if not bool((torch.isfinite(t) & (t > 0)).all()):
        raise ValueError(f"{name} must be positive and finite, got {t.tolist()}.")
    return t


def _check_outflow_on_border(outflow: torch.Tensor, grid: Grid) -> None:
    border = torch.zeros(grid.shape, dtype=torch.bool, device=outflow.device)
    for a in range(grid.ndim):
        if grid.boundary[a] == "periodic":
            continue
        idx = [slice(None)] * grid.ndim
        idx[a] = 0
        border[tuple(idx)] = True
        idx[a] = -1
        border[tuple(idx)] = True
    if bool((outflow[:, 0] * (~border).to(outflow.dtype)).any()):
        raise ValueError("outflow cells must lie on the outer layer of cells of a bounded axis.")


def _closed_components(fluid: torch.Tensor, outflow: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Label (1, 2, …) the connected fluid regions that touch no outflow cell; 0 elsewhere.

    Their pressure is defined up to a constant each, so the solver removes the mean of its
    right-hand side and of its solution per closed region."""
    from scipy import ndimage

    f = fluid[:, 0].detach().cpu().numpy() > 0
    o = outflow[:, 0].detach().cpu().numpy() > 0
    out = np.zeros(f.shape, dtype=np.int64)
    structure = ndimage.generate_binary_structure(grid.ndim, 1)
    for b in range(f.shape[0]):
        labels, count = ndimage.label(f[b], structure=structure)
        parent = list(range(count + 1))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for a, kind in enumerate(grid.boundary):
            if kind != "periodic":
                continue
            first, last = np.take(labels, 0, axis=a), np.take(labels, -1, axis=a)
            for i, j in zip(first[(first > 0) & (last > 0)], last[(first > 0) & (last > 0)]):
                parent[find(int(i))] = find(int(j))
        roots = np.array([find(i) for i in range(count + 1)])
        labels = roots[labels]
        near_outflow = ndimage.binary_dilation(o[b], structure=structure)
        for a, kind in enumerate(grid.boundary):
            if kind == "periodic":
                near_outflow |= np.roll(o[b], 1, axis=a) | np.roll(o[b], -1, axis=a)
        open_labels = np.unique(labels[near_outflow & f[b]])
        closed = np.setdiff1d(np.unique(labels[f[b]]), open_labels)
        relabel = np.zeros(count + 1, dtype=np.int64)
        relabel[closed] = np.arange(1, len(closed) + 1)
        out[b] = relabel[labels]
    return torch.from_numpy(out)[:, None].to(fluid.device)


def _boundary_flux_per_cell(env: FlowEnvironment) -> torch.Tensor:
    """Volume flux into every fluid cell through its prescribed faces: ``[B, cells]``."""
    h = env.spacing
    vol = math.prod(h)
    total = torch.zeros_like(env.fluid)
    for d, (fv, cls) in enumerate(zip(env.face_velocity, env.face_class)):
        fixed = ((cls == PRESCRIBED) | (cls == INTERIOR)).to(fv.dtype)
        u = fv * fixed
        periodic = env.grid.boundary[d] == "periodic"
        dim = d + 2
        n = env.grid.shape[d]
        lo = u if periodic else u.narrow(dim, 0, n)
        hi = shift(u, dim, 1, True) if periodic else u.narrow(dim, 1, n)
        total = total + (lo - hi) * (vol / h[d])
    return (total * env.fluid).flatten(1)


def _read_mask(mask, threshold: float) -> np.ndarray:
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        if not path.is_file():
            raise ValueError(f"mask image {str(path)!r} does not exist or is not a file.")
        import matplotlib.image as mpimg

        try:
            img = np.asarray(mpimg.imread(str(path)), dtype=np.float64)
        except (OSError, SyntaxError, ValueError) as exc:  # PIL reports a damaged PNG as SyntaxError
            raise ValueError(f"mask image {str(path)!r} cannot be read as an image: {exc}") from None
        if img.max() > 1.0:  # 8-bit images other than PNG come back as 0..255
            img = img / 255.0
        if img.ndim == 3:
            img = img[..., :3].mean(axis=-1)
        if img.ndim != 2:
            raise ValueError(f"mask image must be greyscale or RGB(A), got array of shape {img.shape}.")
        return (np.flipud(img).T >= threshold).astype(np.float64)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a NumPy array, a torch tensor or an image path, got {type(mask).__name__}.")
    if not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool) or np.iscomplexobj(mask):
        raise TypeError(f"mask must hold real numbers (0 solid, 1 fluid), got dtype {mask.dtype}.")
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2D array indexed [x, y], got shape {mask.shape}.")
    arr = mask.astype(np.float64)
    if not np.all(np.isin(arr, (0.0, 1.0))):
        bad = np.unique(arr[~np.isin(arr, (0.0, 1.0))])[:5]
        raise ValueError(f"mask values must be 0 (solid) or 1 (fluid), found {bad.tolist()}.")
    if arr.sum() == 0:
        raise ValueError("mask has no fluid cell (all zeros); 1 marks fluid, 0 solid.")
    return arr


def _float_tuple(value, name: str) -> tuple[float, ...]:
    try:
        t = tuple(float(v) for v in value)
    except TypeError as exc:
        raise ValueError(f"{name} must be a sequence of numbers, got {value!r}.") from exc
    if not all(math.isfinite(v) for v in t):
        raise ValueError(f"{name} must be finite, got {t}.")
    return t


def _omega_arg(value):
    return float(value) if isinstance(value, (int, float)) else tuple(float(v) for v in value)


def _int_tuple(n, ndim: int, name: str) -> tuple[int, ...]:
    if not _is_int(ndim) or ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}.")
    t = (n,) * ndim if isinstance(n, int) else tuple(n)
    if len(t) != ndim or not all(isinstance(v, int) and v >= 2 for v in t):
        raise ValueError(f"{name} must be an integer >= 2 (or {ndim} of them), got {n!r}.")
    return t


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def _finite(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
