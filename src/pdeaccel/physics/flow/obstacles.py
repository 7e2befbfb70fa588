"""Rigid obstacles (box, cylinder, sphere) in physical coordinates, and how they are burnt into
an environment's masks (:func:`rasterise`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from ..._checks import choice, real
from ...grid import Grid
from ...stencils import face_neighbour_cells, mac_coordinates

ObstacleShape = Literal["box", "cylinder", "sphere"]


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
        choice("Obstacle shape", self.shape, ("box", "cylinder", "sphere"))
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
            object.__setattr__(self, "radius", real(f"the radius of a {self.shape}", self.radius, positive=True))
        omega = self.angular_velocity
        if ndim == 2:
            object.__setattr__(self, "angular_velocity", real("a 2D obstacle's angular_velocity", omega))
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



def rasterise(grid: Grid, fluid: torch.Tensor, face_velocity: Sequence[torch.Tensor],
              obstacles: Sequence[Sequence[Obstacle]], origin: Sequence[float]):
    """Burn obstacles (per sample) into a background: cells whose centre is inside become solid;
    every face touching one of its cells takes the obstacle's rigid velocity (normal component)."""
    fluid = fluid.clone()
    faces = [f.clone() for f in face_velocity]
    B = fluid.shape[0]
    if len(obstacles) not in (1, B):
        raise ValueError(f"obstacles needs one tuple per sample ({B}), got {len(obstacles)}.")
    cell_pts = mac_coordinates(grid, None, origin, fluid.dtype, fluid.device)
    face_pts = [mac_coordinates(grid, d, origin, fluid.dtype, fluid.device) for d in range(grid.ndim)]
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
