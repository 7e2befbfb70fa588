"""Uniform 1D/2D/3D grids and the layout conventions every other module relies on.

Fields are tensors laid out ``[batch, channel, *space]``; ``space`` has ``grid.ndim`` axes in the
order ``(x,)``, ``(x, y)`` or ``(x, y, z)``.

Where the unknowns sit depends on the boundary kind (the choice that keeps every stencil a plain
3-point one and every boundary condition exact):

* ``periodic``  — N nodes ``x_i = i·h``, ``h = L/N``; node N is node 0.
* ``dirichlet`` — N *interior* nodes ``x_i = (i+1)·h``, ``h = L/(N+1)``; the boundary nodes
  ``x=0`` and ``x=L`` hold the prescribed value and are not unknowns.
* ``neumann``   — N cells with centres ``x_i = (i+½)·h``, ``h = L/N``; zero normal flux is imposed
  by mirroring the first/last cell into the ghost cell.

A MAC (staggered) grid for incompressible flow uses cell-centred pressure and face-normal
velocities; the helpers for that layout live in :mod:`pdeaccel.stencils` (``curl``, ``mac_*``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

import torch

BOUNDARY_KINDS = ("periodic", "dirichlet", "neumann")


@dataclass(frozen=True)
class Grid:
    """A uniform grid with one boundary kind per axis.

    Args:
        shape: number of unknowns per axis (1 to 3 axes).
        extent: physical length per axis (a single float applies to every axis).
        boundary: ``"periodic"``, ``"dirichlet"`` or ``"neumann"``, one per axis or one for all.
    """

    shape: tuple[int, ...]
    extent: tuple[float, ...]
    boundary: tuple[str, ...]

    def __init__(
        self,
        shape: int | Sequence[int],
        extent: float | Sequence[float] = 1.0,
        boundary: str | Sequence[str] = "periodic",
    ) -> None:
        shape_t = _int_shape(shape)
        if not 1 <= len(shape_t) <= 3:
            raise ValueError(f"Grid shape must have 1 to 3 axes, got {len(shape_t)} ({shape_t}).")
        if any(n < 1 for n in shape_t):
            raise ValueError(f"Grid shape entries must be positive integers, got {shape_t}.")
        extent_t = _per_axis(extent, len(shape_t), "extent")
        if any(isinstance(e, (bool, str)) or not isinstance(e, (int, float)) for e in extent_t):
            raise TypeError(f"Grid extent must be a number or one number per axis, got {extent!r}.")
        extent_t = tuple(float(e) for e in extent_t)
        if any(not (e > 0 and e < float("inf")) for e in extent_t):
            raise ValueError(f"Grid extent must be positive and finite per axis, got {extent_t}.")
        boundary_t = _per_axis(boundary, len(shape_t), "boundary")
        for b in boundary_t:
            if not isinstance(b, str) or b not in BOUNDARY_KINDS:
                raise ValueError(
                    f"Unknown boundary kind {b!r}; allowed kinds are {', '.join(BOUNDARY_KINDS)}."
                )
        object.__setattr__(self, "shape", shape_t)
        object.__setattr__(self, "extent", extent_t)
        object.__setattr__(self, "boundary", boundary_t)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(
            L / (n + 1) if b == "dirichlet" else L / n
            for n, L, b in zip(self.shape, self.extent, self.boundary)
        )

    def axis_coordinates(self, axis: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Positions of the unknowns along one axis (see the module docstring)."""
        n, h, b = self.shape[axis], self.spacing[axis], self.boundary[axis]
        i = torch.arange(n, dtype=dtype)
        if b == "periodic":
            return i * h
        if b == "dirichlet":
            return (i + 1) * h
        return (i + 0.5) * h

    def coordinates(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
        """Meshgrid (``indexing="ij"``) of unknown positions, each of shape ``grid.shape``."""
        axes = [self.axis_coordinates(a, dtype) for a in range(self.ndim)]
        return tuple(torch.meshgrid(*axes, indexing="ij"))

    def check_field(self, u: torch.Tensor, name: str = "field") -> None:
        """Raise a clear error if ``u`` is not laid out ``[batch, channel, *grid.shape]``."""
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(u).__name__}.")
        if u.dim() != self.ndim + 2 or tuple(u.shape[2:]) != self.shape:
            raise ValueError(
                f"{name} must have shape [batch, channel, {', '.join(map(str, self.shape))}] for this "
                f"{self.ndim}D grid, got {list(u.shape)}."
            )


def _int_shape(shape) -> tuple[int, ...]:
    entries = (shape,) if isinstance(shape, (int, str)) or not hasattr(shape, "__iter__") else tuple(shape)
    out = []
    for n in entries:
        try:
            if isinstance(n, bool):
                raise TypeError
            out.append(operator.index(n))  # an integer, not a float that happens to be whole
        except TypeError:
            raise TypeError(f"Grid shape must be an integer or a sequence of integers, got {shape!r}.") from None
    return tuple(out)


def _per_axis(value, ndim: int, name: str) -> tuple:
    if isinstance(value, (str, int, float)) or not hasattr(value, "__iter__"):
        return (value,) * ndim
    value = tuple(value)
    if len(value) != ndim:
        raise ValueError(f"Grid {name} needs one entry per axis ({ndim}), got {len(value)}: {value}.")
    return value
