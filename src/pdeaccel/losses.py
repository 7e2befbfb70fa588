"""Physics-constrained losses: discrete PDE residuals evaluated on a network's own prediction.

:class:`FlowResidual` is the loss of the physics-constrained incompressible flow solver of
Wandel et al. (ICLR 2021), on the MAC grid and the boundary data of a
:class:`~pdeaccel.physics.flow.FlowEnvironment`. With the new velocity the discrete curl
of a vector potential (divergence exactly zero), the residual of the momentum equation on every
free face is::

    R = ρ [(u_new − u_old)/Δt + (ū·∇)ū] + ∇p_new − μ Δū − ρ g,      ū = θ u_new + (1 − θ) u_old

(θ = ½ is the IMEX mean of the paper; 1 implicit, 0 explicit). The discrete operators are those
of the numerical reference solver (:class:`~pdeaccel.physics.flow.operators.MACOperators`):
advection by its third-order upwind differences (or the paper's second-order central ones) with
the transverse component averaged onto the face, the
(2d+1)-point Laplacian, and the boundary data entering both as Dirichlet values on prescribed
faces and mirrored ghosts across walls (no-slip at the wall surface). *Design*: the paper uses a
9-point isotropic Laplacian and the network's own wall values in the stencils; we use the
reference solver's stencils so that a perfect network and the reference discretise the same
boundary conditions; and upwind advection, because the exact minimiser of the central-difference
loss at the paper's Δt = 4 (cell Reynolds number 40) oscillates ahead of a prescribed outflow and is
17% off the resolved reference after one step (upwind3: 0.6%; ``benchmarks/flow.py``). The
boundary residual is ``u − u_prescribed`` on every prescribed face.

The combined per-sample loss is ``log(β·L_boundary + L_momentum)`` with the mean squares taken
over free (momentum) and prescribed (boundary) faces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .physics.flow import FlowEnvironment
from .physics.flow.operators import MACOperators
from .stencils import mac_divergence, mac_gradient

Velocity = tuple[torch.Tensor, ...]


@dataclass
class FlowResidualTerms:
    """Per-sample ``[B]`` summaries of the residuals of one step."""

    momentum: torch.Tensor  # mean square of R over free faces
    boundary: torch.Tensor  # mean square of u − u_prescribed over prescribed faces
    momentum_abs: torch.Tensor  # E|R| over free faces
    boundary_abs: torch.Tensor  # E|u − u_prescribed| over prescribed faces
    divergence_abs: torch.Tensor  # E|∇·u| over fluid cells


class FlowResidual:
    """Residuals of one time step of the incompressible Navier–Stokes equations in ``env``.

    Args:
        env: the batch of environments (masks, boundary values, μ, ρ, Δt, body force).
        theta: weight of the new velocity in the non-time-derivative terms (½: IMEX mean).
        advection: ``"upwind3"`` (default, the reference solver's scheme), ``"upwind2"``,
            ``"upwind"``, or ``"central"`` (the paper's).
    """

    def __init__(self, env: FlowEnvironment, theta: float = 0.5,
                 advection: Literal["central", "upwind", "upwind2", "upwind3"] = "upwind3") -> None:
        if not isinstance(env, FlowEnvironment):
            raise TypeError(f"env must be a FlowEnvironment, got {type(env).__name__}.")
        if not (0.0 <= float(theta) <= 1.0):
            raise ValueError(f"theta must be in [0, 1] (0 explicit, 0.5 IMEX, 1 implicit), got {theta!r}.")
        self.env = env
        self.theta = float(theta)
        self.advection = advection
        # the reference solver's boundary-aware operators
        self.ops = MACOperators(env)
        nd = env.ndim
        shape = (-1,) + (1,) * (nd + 1)
        self._rho = env.rho.reshape(shape)
        self._mu = env.mu.reshape(shape)
        self._force = [env.body_force[:, d].reshape(shape) for d in range(nd)]
        self._free = env.face_free
        self._prescribed = env.face_mask

    def momentum(self, u_old: Velocity, u_new: Velocity, p_new: torch.Tensor) -> Velocity:
        """The momentum residual R per face component (zero on faces that are not free)."""
        env = self.env
        th = self.theta
        mean = tuple(th * a + (1.0 - th) * b for a, b in zip(u_new, u_old))
        adv = self.ops.advection_term(mean, self.advection)
        lap = self.ops.laplacian(mean)
        grad = mac_gradient(p_new * env.fluid, env.grid)
        out = []
        for d in range(env.ndim):
            r = (self._rho * ((u_new[d] - u_old[d]) / env.dt + adv[d] - self._force[d])
                 + grad[d] - self._mu * lap[d])
            out.append(r * self._free[d])
        return tuple(out)

    def boundary(self, u: Velocity) -> Velocity:
        """``u − u_prescribed`` on prescribed faces (zero elsewhere)."""
        return tuple((a - U) * m for a, U, m in zip(u, self.env.face_velocity, self._prescribed))

    def terms(self, u_old: Velocity, u_new: Velocity, p_new: torch.Tensor) -> FlowResidualTerms:
        R = self.momentum(u_old, u_new, p_new)
        Bd = self.boundary(u_new)
        n_free = sum(_per_sample(f) for f in self._free).clamp(min=1.0)
        n_pres = sum(_per_sample(m) for m in self._prescribed).clamp(min=1.0)
        fluid = self.env.fluid
        div = mac_divergence(u_new, self.env.grid) * fluid
        return FlowResidualTerms(
            momentum=sum(_per_sample(r * r) for r in R) / n_free,
            boundary=sum(_per_sample(b * b) for b in Bd) / n_pres,
            momentum_abs=sum(_per_sample(r.abs()) for r in R) / n_free,
            boundary_abs=sum(_per_sample(b.abs()) for b in Bd) / n_pres,
            divergence_abs=_per_sample(div.abs()) / _per_sample(fluid).clamp(min=1.0),
        )


def combined_flow_loss(terms: FlowResidualTerms, beta: float = 20.0) -> torch.Tensor:
    """Mean over the batch of ``log(β·L_boundary + L_momentum)`` (Wandel et al.'s weighting: the
    logarithm keeps the gradient scale steady while both terms fall by orders of magnitude)."""
    return torch.log((beta * terms.boundary + terms.momentum).clamp_min(1e-30)).mean()


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)
