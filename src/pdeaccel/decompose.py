"""Spatial staggering of fields (NeuralStagger's decomposition), for any field on a 1–3D grid.

For strides ``s = (s_1, …, s_d)`` the sub-field at offset ``o ∈ ∏[0, s_k)`` is

    D_o(u)[n] = u[s ⊙ n + o],

``s_1·…·s_d`` sub-fields in all; :func:`assemble` is the exact inverse of :func:`decompose`. In 2D
this is PyTorch's pixel-unshuffle / pixel-shuffle, generalised to any number of axes and to
strides that differ per axis.

Sizes that are not a multiple of the stride: the field is zero-padded at the high end of each
axis to ``padded`` (a multiple of the stride that the caller chooses, at least the field's size),
and :func:`assemble` crops back to the requested shape. The padding never reaches the caller's
values: assembling and cropping returns the original field exactly. MAC node arrays are ``N + 1``
long where the cells are ``N``; :func:`staggered_shapes` gives the common choice that keeps a
sub-field of nodes one longer than its sub-field of cells (``ceil(N/s)`` cells, ``ceil(N/s) + 1``
nodes per axis), so each sub-field is again a MAC layout on a grid ``s`` times coarser.

Offsets are enumerated in row-major order (the last axis fastest), as :func:`offsets` lists them.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ._checks import integers


def as_stride(stride: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """One positive integer stride per spatial axis (an integer applies to every axis)."""
    return integers("stride", stride, ndim, minimum=1)


def offsets(stride: Sequence[int]) -> list[tuple[int, ...]]:
    """Every offset ``o`` of the decomposition, in the order of :func:`decompose`'s output."""
    return list(itertools.product(*(range(s) for s in stride)))


def decompose(x: torch.Tensor, stride: Sequence[int], padded: Sequence[int] | None = None) -> torch.Tensor:
    """``[B, C, *space]`` → ``[B, S, C, *sub]``: the ``S = ∏ s_k`` sub-fields ``D_o(x)``.

    Args:
        x: the field; its last ``len(stride)`` axes are spatial.
        stride: one stride per spatial axis.
        padded: the size each spatial axis is zero-padded to first (a multiple of the stride, at
            least the field's size); default the next multiple of the stride.
    """
    ndim = len(stride)
    space = tuple(x.shape[-ndim:])
    target = _padded(space, stride, padded)
    pad: list[int] = []
    for n, m in zip(reversed(space), reversed(target)):
        pad += [0, m - n]
    if any(pad):
        x = F.pad(x, pad)
    B, C = x.shape[0], x.shape[1]
    # [B, C, m_1, s_1, m_2, s_2, …]: index i = m·s + o along each axis
    split = [B, C] + [d for m, s in zip(target, stride) for d in (m // s, s)]
    x = x.reshape(split)
    order = [0] + [3 + 2 * k for k in range(ndim)] + [1] + [2 + 2 * k for k in range(ndim)]
    sub = tuple(m // s for m, s in zip(target, stride))
    return x.permute(order).reshape((B, math.prod(stride), C) + sub).contiguous()


def assemble(parts: torch.Tensor, stride: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """``[B, S, C, *sub]`` → ``[B, C, *shape]``: the inverse of :func:`decompose` (cropped to ``shape``)."""
    ndim = len(stride)
    S = math.prod(stride)
    if parts.dim() != ndim + 3 or parts.shape[1] != S:
        raise ValueError(f"expected [batch, {S} sub-fields, channel, {ndim} spatial axes], got {list(parts.shape)}.")
    B, C = parts.shape[0], parts.shape[2]
    sub = tuple(parts.shape[3:])
    x = parts.reshape((B,) + tuple(stride) + (C,) + sub)
    order = [0, ndim + 1] + [d for k in range(ndim) for d in (ndim + 2 + k, 1 + k)]
    full = tuple(m * s for m, s in zip(sub, stride))
    if any(n > m for n, m in zip(shape, full)):
        raise ValueError(f"shape {tuple(shape)} is larger than the assembled field {full}.")
    x = x.permute(order).reshape((B, C) + full)
    return x[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)]


def staggered_shapes(cells: Sequence[int], stride: Sequence[int], periodic: Sequence[bool]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Padded sizes ``(cells_padded, nodes_padded)`` for cell and node (``N + 1`` on bounded axes)
    arrays, such that every sub-field of cells has ``ceil(N/s)`` entries and every sub-field of
    nodes one more on bounded axes. Periodic axes must be divisible by their stride (a periodic
    sub-field of a size that is not would wrap onto the wrong neighbour)."""
    cells_p, nodes_p = [], []
    for n, s, per in zip(cells, stride, periodic):
        if per and n % s:
            raise ValueError(f"a periodic axis of {n} cells cannot be staggered with stride {s}: choose a stride "
                             "that divides it.")
        c = math.ceil(n / s)
        cells_p.append(c * s)
        nodes_p.append(c * s if per else (c + 1) * s)
    return tuple(cells_p), tuple(nodes_p)


def _padded(space: tuple[int, ...], stride: Sequence[int], padded: Sequence[int] | None) -> tuple[int, ...]:
    if padded is None:
        return tuple(math.ceil(n / s) * s for n, s in zip(space, stride))
    target = tuple(int(m) for m in padded)
    if len(target) != len(space) or any(m < n or m % s for n, m, s in zip(space, target, stride)):
        raise ValueError(f"padded size {target} must be a multiple of the stride {tuple(stride)} and at least "
                         f"the field's size {space} on every axis.")
    return target
