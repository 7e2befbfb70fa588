"""What a flow environment's masks mean: cell and face classes, closed fluid regions, and the
volume flux the prescribed faces carry into each cell (see :mod:`pdeaccel.physics.flow` for the
classification table)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...grid import Grid
from ...stencils import face_neighbour_cells, shift

if TYPE_CHECKING:
    from .environment import FlowEnvironment

# cell classes
FLUID, SOLID, OUTFLOW, OUTSIDE = 0, 1, 2, 3
# face classes (INTERIOR: prescribed face with no fluid/outflow cell on either side, i.e. inside
# a wall; BEYOND is only used for neighbours that fall off a bounded axis)
FREE, PRESCRIBED, INTERIOR, OPEN, BEYOND = 0, 1, 2, 3, 4


def classify_faces(cell_class: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, ...]:
    """Face classes (FREE, PRESCRIBED, INTERIOR, OPEN) per axis from cell classes."""
    out = []
    for axis in range(grid.ndim):
        left, right = face_neighbour_cells(cell_class, axis, grid.boundary[axis] == "periodic", OUTSIDE)
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


def check_outflow_on_border(outflow: torch.Tensor, grid: Grid) -> None:
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


def closed_components(fluid: torch.Tensor, outflow: torch.Tensor, grid: Grid) -> torch.Tensor:
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


def boundary_flux_per_cell(env: "FlowEnvironment") -> torch.Tensor:
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
