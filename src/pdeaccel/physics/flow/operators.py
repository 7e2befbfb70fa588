"""The MAC operators of a flow environment: the stencils the reference solver steps with and the
physics-constrained loss evaluates, built once from the masks and boundary values.

:class:`MACOperators` knows the environment's boundary rules per face (free, prescribed, inside a
wall, open) and gives the boundary-aware operators on face velocities — completion of the
boundary data, the mirrored-ghost extension, the (2d+1)-point Laplacian, central and upwind
advection with the transverse component averaged onto the face — and the pressure operator
``−D M G`` on the fluid cells. :class:`~pdeaccel.physics.incompressible.MACFlowSolver` time-steps
with them; :class:`~pdeaccel.losses.FlowResidual` evaluates a network's step with the same ones, so
a perfect network and the reference discretise the same boundary conditions.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..._checks import choice
from ...stencils import mac_spacing, shift
from .environment import FlowEnvironment
from .topology import BEYOND, FREE, INTERIOR, OPEN, PRESCRIBED

Velocity = tuple[torch.Tensor, ...]

#: upwind advection schemes and their order (0 would be central differences)
UPWIND_ORDER = {"upwind": 1, "upwind2": 2, "upwind3": 3}


class MACOperators:
    """The boundary-aware MAC operators of ``env`` (coefficients computed once, at construction).

    Attributes:
        h: cell widths; periodic: per axis, whether it wraps.
        free: per axis, 1 on the faces whose velocity is an unknown.
        lap_diag, lap_offdiag, lap_const: the face Laplacian per component, ``L u = diag·u +
            Σ offdiag·u[neighbour] + const`` (``const`` carries the boundary values).
        pressure_center, pressure_offdiag, pressure_diagonal: the pressure operator's coefficients
            (``pressure_diagonal`` has 1 outside the fluid, for a Jacobi preconditioner).
    """

    def __init__(self, env: FlowEnvironment) -> None:
        if not isinstance(env, FlowEnvironment):
            raise TypeError(f"env must be a FlowEnvironment, got {type(env).__name__}.")
        self.env = env
        grid = env.grid
        nd = grid.ndim
        dtype = env.fluid.dtype
        self.h = mac_spacing(grid)
        self.periodic = tuple(b == "periodic" for b in grid.boundary)
        self._prepare_faces(nd, dtype)
        self._prepare_pressure(nd)

    def _prepare_faces(self, nd: int, dtype: torch.dtype) -> None:
        """Per face component: neighbour rules (stencils), Laplacian coefficients, completion."""
        env = self.env
        self.free = env.face_free
        self._nbr = []      # per d: {(e, s): (a, b, c)} neighbour value = a·u[g] + b·u[f] + c
        self._nbr2 = []     # per d: {(e, s): bool} the second neighbour is free too (wide stencils)
        self.lap_diag = []
        self.lap_offdiag = []
        self.lap_const = []
        self._complete_const = []
        self._open_weights = []
        self._ghost_const = []
        self._ghost_weights = []
        for d in range(nd):
            cls = env.face_class[d]
            U = env.face_velocity[d]
            free = self.free[d]
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
            self.lap_offdiag.append({k: v[0] / self.h[k[0]] ** 2 for k, v in nbr.items() if bool(v[0].any())})
            self._nbr.append(nbr)
            self._nbr2.append(nbr2)
            self.lap_diag.append(diag)
            self.lap_const.append(const)

    def _prepare_pressure(self, nd: int) -> None:
        """The pressure operator ``−D M G`` on fluid cells."""
        env = self.env
        grid = env.grid
        fluid = env.fluid
        pdiag = torch.zeros_like(fluid)
        for d in range(nd):
            free = self.free[d]
            n = grid.shape[d]
            if self.periodic[d]:
                lo, hi = free, shift(free, d + 2, 1, True)
            else:
                lo, hi = free.narrow(d + 2, 0, n), free.narrow(d + 2, 1, n)
            pdiag = pdiag + (lo + hi) / (self.h[d] ** 2)
        pdiag = pdiag * fluid
        self.pressure_center = pdiag
        self.pressure_offdiag = {}
        for d in range(nd):
            for s in (-1, 1):
                face = self.free[d]
                n = grid.shape[d]
                if not self.periodic[d]:
                    face = face.narrow(d + 2, 0 if s < 0 else 1, n)
                elif s > 0:
                    face = shift(face, d + 2, 1, True)
                self.pressure_offdiag[(d, s)] = fluid * face * shift(fluid, d + 2, s, self.periodic[d]) / self.h[d] ** 2
        self.pressure_diagonal = torch.where(pdiag > 0, pdiag, torch.ones_like(pdiag))

    def check_velocity(self, velocity) -> Velocity:
        """``velocity`` as a tuple, after checking one face array per axis of the right shape."""
        env = self.env
        if not isinstance(velocity, (tuple, list)) or len(velocity) != env.ndim:
            raise ValueError(f"velocity must be a tuple of {env.ndim} face arrays, got {type(velocity).__name__}.")
        for d, (u, ref) in enumerate(zip(velocity, env.face_velocity)):
            if not isinstance(u, torch.Tensor) or u.shape != ref.shape:
                got = list(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
                raise ValueError(f"velocity[{d}] must have shape {list(ref.shape)}, got {got}.")
        return tuple(velocity)

    def complete(self, velocity: Velocity) -> Velocity:
        """Impose the boundary data: prescribed faces get their ``env.face_velocity`` value,
        faces inside outflow regions the mean of their free neighbours (zero gradient); free
        faces are unchanged."""
        out = []
        for d, u in enumerate(velocity):
            v = self.free[d] * u + self._complete_const[d]
            for (e, s), w in self._open_weights[d].items():
                v = v + w * neighbour(u, e, s)
            out.append(v)
        return tuple(out)

    def extended(self, velocity: Velocity) -> Velocity:
        """A complete field whose faces inside walls hold the mirror image ``2U − u`` of their
        free neighbours, so that interpolating across a wall gives the wall's velocity on it."""
        out = []
        for d, u in enumerate(velocity):
            v = u + self._ghost_const[d]
            for (e, s), w in self._ghost_weights[d].items():
                v = v + w * neighbour(u, e, s)
            out.append(v)
        return tuple(out)

    def laplacian(self, velocity: Velocity) -> Velocity:
        """The diffusion operator ``L u`` on free faces (0 elsewhere), boundary values included."""
        out = []
        for d, u in enumerate(velocity):
            out.append(self.laplacian_linear(u, d) + self.lap_const[d])
        return tuple(out)

    def laplacian_linear(self, u: torch.Tensor, d: int) -> torch.Tensor:
        """The linear part of the Laplacian of component ``d`` (no boundary values)."""
        return laplacian_apply(self.lap_diag[d], self.lap_offdiag[d], u)

    def advection_term(self, velocity: Velocity, scheme: Literal["central", "upwind", "upwind2", "upwind3"] = "central"
                  ) -> Velocity:
        """``(u·∇)u_d`` on free faces (0 elsewhere) of a velocity field, boundary values imposed
        first (:meth:`complete`). ``"central"``: second-order central differences
        ``(u_{i+1} − u_{i−1})/2h`` with the neighbours' boundary rules of the Laplacian — the
        advection term of Wandel et al.'s physics-constrained loss; the upwind schemes are the
        solver's own."""
        choice("scheme", scheme, ("central", *UPWIND_ORDER))
        u = self.complete(self.check_velocity(velocity))
        return tuple(-r for r in self.advection_rate(u, 0 if scheme == "central" else UPWIND_ORDER[scheme]))

    def advection_rate(self, u: Velocity, order: int) -> Velocity:
        """``−(u·∇)u_d`` on free faces by upwind differences of ``order`` (0: central; ``u`` complete)."""
        nd = len(u)
        out = []
        for d in range(nd):
            ud = u[d]
            rate = torch.zeros_like(ud)
            for e in range(nd):
                w = ud if e == d else self.to_faces(u[e], e, d)
                h = self.h[e]
                am, bm, cm = self._nbr[d][(e, -1)]
                ap, bp, cp = self._nbr[d][(e, 1)]
                um = am * neighbour(ud, e, -1) + bm * ud + cm
                up = ap * neighbour(ud, e, 1) + bp * ud + cp
                if order == 0:
                    back = fwd = (up - um) / (2.0 * h)
                elif order == 1:
                    back, fwd = (ud - um) / h, (up - ud) / h
                else:
                    # where the wider upwind stencil does not fit (next to a wall) central
                    # differences keep second order (the flow is slow there)
                    central = (up - um) / (2.0 * h)
                    valid_m, valid_p = self._nbr2[d][(e, -1)], self._nbr2[d][(e, 1)]
                    umm, upp = neighbour(ud, e, -2), neighbour(ud, e, 2)
                    if order == 2:
                        back = (3.0 * ud - 4.0 * um + umm) / (2.0 * h)
                        fwd = (-3.0 * ud + 4.0 * up - upp) / (2.0 * h)
                    else:
                        back = (2.0 * up + 3.0 * ud - 6.0 * um + umm) / (6.0 * h)
                        fwd = -(2.0 * um + 3.0 * ud - 6.0 * up + upp) / (6.0 * h)
                    back = torch.where(valid_m, back, central)
                    fwd = torch.where(valid_p, fwd, central)
                rate = rate - w * torch.where(w > 0, back, fwd)
            out.append(rate * self.free[d])
        return tuple(out)

    def to_faces(self, ue: torch.Tensor, e: int, d: int) -> torch.Tensor:
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

    def pressure_matvec(self, phi: torch.Tensor) -> torch.Tensor:
        """``−D M G φ`` on fluid cells: Σ over free faces of (φ_i − φ_neighbour)/h² (a
        neighbour that is an outflow cell has φ = 0, so only the diagonal sees it)."""
        out = self.pressure_center * phi
        for (d, s), w in self.pressure_offdiag.items():
            out = out - w * neighbour(phi, d, s)
        return out



def neighbour(x: torch.Tensor, axis: int, offset: int) -> torch.Tensor:
    """``x[i + offset]`` along ``axis``, wrapped around every edge: across a bounded edge the
    wrapped value is always multiplied by a zero coefficient (no neighbour is free there)."""
    return torch.roll(x, -offset, dims=axis + 2)


def laplacian_apply(diag: torch.Tensor, offdiag: dict, v: torch.Tensor) -> torch.Tensor:
    """The linear part of the face Laplacian, ``diag·v + Σ a·v[neighbour]`` (neighbours by a
    wrapped roll: every coefficient of a neighbour across a bounded edge is zero)."""
    out = diag * v
    for (e, s), a in offdiag.items():
        out = out + a * torch.roll(v, -s, dims=e + 2)
    return out
