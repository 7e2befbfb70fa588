"""The flow environment: masks, boundary values and fluid parameters of a batch of flow problems."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..._checks import real
from ...grid import Grid
from ...stencils import mac_coordinates, mac_face_shape, mac_spacing
from .obstacles import Obstacle, rasterise
from .topology import (FLUID, FREE, INTERIOR, OPEN, OUTFLOW, PRESCRIBED, SOLID, boundary_flux_per_cell,
                       check_outflow_on_border, classify_faces, closed_components)


@dataclass(frozen=True, eq=False)
class FlowEnvironment:
    """Masks, boundary values and fluid parameters of a batch of flow problems (see the module
    docstring of :mod:`pdeaccel.physics.flow` for the layout and the meaning of every field).

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
            check_outflow_on_border(outflow, grid)
        mu = _per_sample(self.mu, B, "mu", dtype, fluid.device)
        rho = _per_sample(self.rho, B, "rho", dtype, fluid.device)
        dt = self.dt
        real("dt", dt, positive=True)
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
        object.__setattr__(self, "closed_components", closed_components(fluid, outflow, grid))
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
        return mac_coordinates(self.grid, None, self.origin, self.fluid.dtype, self.fluid.device)

    def face_coordinates(self, axis: int) -> tuple[torch.Tensor, ...]:
        """Physical coordinates of the faces normal to ``axis`` (one tensor per coordinate)."""
        return mac_coordinates(self.grid, axis, self.origin, self.fluid.dtype, self.fluid.device)

    def net_prescribed_flux(self) -> torch.Tensor:
        """Net volume flux into the fluid through prescribed faces, per sample (0 when balanced
        or when an outflow lets the difference leave)."""
        return boundary_flux_per_cell(self).sum(dim=1)

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
        flux_in = boundary_flux_per_cell(self)  # [B, cells]
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
