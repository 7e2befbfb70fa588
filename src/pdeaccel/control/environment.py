"""What is controlled and what is observed: an environment affine in named scalar controls, and the probe
window whose mean cross-stream velocity is the signal."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from ..physics.flow import FlowEnvironment
from ..stencils import mac_face_shape

Velocity = tuple[torch.Tensor, ...]


class ControlledEnvironment:
    """``env(θ)``: an environment whose prescribed face velocities are affine in named controls,
    ``face_velocity(θ) = offset + Σ_k θ_k · basis_k``, everything else (masks, μ, ρ, Δt) fixed.

    Build it with :meth:`from_builder` from any function that makes the environment of given
    control values (e.g. a channel's inflow speed, a cylinder's angular velocity): the basis is
    read off by differences, and the builder is checked to be affine in each control.
    ``bounds`` (per control, ``(lo, hi)``) are the values the optimiser may use.
    """

    def __init__(self, base: FlowEnvironment, offset: Sequence[torch.Tensor], basis: Mapping[str, Sequence[torch.Tensor]],
                 reference: Mapping[str, float], bounds: Mapping[str, tuple[float, float]] | None = None) -> None:
        if not basis:
            raise ValueError("a controlled environment needs at least one control.")
        self.base = base
        self.offset = tuple(offset)
        self.basis = {k: tuple(v) for k, v in basis.items()}
        self.names = tuple(self.basis)
        self.reference = {k: float(reference[k]) for k in self.names}
        self.bounds = {k: tuple(float(b) for b in (bounds or {}).get(k, (-math.inf, math.inf))) for k in self.names}
        for k, (lo, hi) in self.bounds.items():
            if not lo < hi:
                raise ValueError(f"control {k!r}: bounds must be (lo, hi) with lo < hi, got {(lo, hi)}.")

    @classmethod
    def from_builder(cls, build: Callable[[Mapping[str, float]], FlowEnvironment], reference: Mapping[str, float],
                     bounds: Mapping[str, tuple[float, float]] | None = None) -> "ControlledEnvironment":
        """``build(values)`` → the environment of those control values; ``reference``: values at
        which it is read off (and the default starting point)."""
        ref = {k: float(v) for k, v in reference.items()}
        base = build(ref)
        f0 = base.face_velocity
        basis, offset = {}, [f.clone() for f in f0]
        for k in ref:
            unit = max(1.0, abs(ref[k]))
            one = build({**ref, k: ref[k] + unit}).face_velocity
            two = build({**ref, k: ref[k] + 2 * unit}).face_velocity
            b = tuple((a - c) / unit for a, c in zip(one, f0))
            # affine: the second difference vanishes
            for d, (x0, x1, x2) in enumerate(zip(f0, one, two)):
                err = float((x2 - 2 * x1 + x0).abs().max())
                scale = max(float(x1.abs().max()), float(x0.abs().max()), 1e-30)
                if err > 1e-5 * scale:
                    raise ValueError(f"the environment's face velocities are not affine in control {k!r} "
                                     f"(second difference {err:.3g} on axis {d}).")
            basis[k] = b
            offset = [o - ref[k] * bd for o, bd in zip(offset, b)]
        return cls(base, offset, basis, ref, bounds)

    def face_velocity(self, controls: Mapping[str, torch.Tensor | float]) -> Velocity:
        out = []
        for d, off in enumerate(self.offset):
            v = off
            for k in self.names:
                c = controls[k]
                c = c.to(off.dtype) if isinstance(c, torch.Tensor) else float(c)
                v = v + c * self.basis[k][d]
            out.append(v)
        return tuple(out)

    def __call__(self, controls: Mapping[str, torch.Tensor | float]) -> FlowEnvironment:
        missing = [k for k in self.names if k not in controls]
        if missing:
            raise ValueError(f"missing control value(s) {', '.join(missing)}; controls: {', '.join(self.names)}.")
        return self.base.replace(face_velocity=self.face_velocity(controls))


# ------------------------------------------------------------------------------ probes
@dataclass(frozen=True)
class Probe:
    """The observable: the mean cross-stream (y) velocity over the y-faces whose centres lie
    strictly inside the rectangle ``x0 < x < x1``, ``y0 < y < y1`` (physical coordinates) and are
    free (between two fluid cells) — the probe of :func:`pdeaccel.experiments.flow_eval.probe_window`."""

    x0: float
    x1: float
    y0: float
    y1: float

    def mask(self, env: FlowEnvironment) -> torch.Tensor:
        """``[B, 1, *y-face shape]`` on the environment's own grid."""
        x, y = env.face_coordinates(1)[:2]
        inside = (x > self.x0) & (x < self.x1) & (y > self.y0) & (y < self.y1)
        return inside.to(env.fluid.dtype) * env.face_free[1]

    def coarse_mask(self, env: FlowEnvironment, space: int, grid) -> torch.Tensor:
        """The same window on a grid ``space`` times coarser (cells ``space·i`` of the fine one;
        the same origin): a coarse y-face is free when both its coarse cells are fluid."""
        hc = [L / n for n, L in zip(grid.shape, grid.extent)]
        shape = mac_face_shape(grid, 1)
        xs = (torch.arange(shape[0], dtype=env.fluid.dtype) + 0.5) * hc[0] - env.origin[0]
        ys = torch.arange(shape[1], dtype=env.fluid.dtype) * hc[1] - env.origin[1]
        x, y = torch.meshgrid(xs, ys, indexing="ij")
        inside = (x > self.x0) & (x < self.x1) & (y > self.y0) & (y < self.y1)
        fluid = env.fluid[:, :, ::space, ::space][:, :, :grid.shape[0], :grid.shape[1]]
        lo = torch.nn.functional.pad(fluid, (1, 0))  # cell j−1 (outside the grid: solid)
        hi = torch.nn.functional.pad(fluid, (0, 1))  # cell j
        free = lo * hi
        return inside.to(env.fluid.dtype) * free

    @staticmethod
    def value(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B]``: the mean of ``v`` over the mask."""
        return (v * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1.0)
