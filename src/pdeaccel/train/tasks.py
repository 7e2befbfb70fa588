"""Learning problems with a differentiable solver in the loop, as the trainer sees them.

* :class:`EmulatorTask` — the network predicts one step and the numerical stepper takes the
  next (``û₁ = f_θ(u₀)``, ``û₂ = P_K(û₁)``, loss ``‖û₂ − u₂‖²``): the PRDP paper's heat and Burgers
  emulator learning. Validation: the network's own rollout error.
* :class:`CorrectionTask` — hybrid solver+network: ``u_{t+1} = P_K(u_t) + C_θ(P_K(u_t))``,
  unrolled over several steps; validated with the converged solver.
* :class:`InverseTask` — recover parameters θ of a PDE from an observed solution
  (``‖u_K(θ) − u_ref‖²/2N``); validated by the relative parameter error.
* :class:`FlowPoolTask` — physics-constrained flow solver trained on a pool of environments
  from the residual of its own predictions (no simulation data, no solver in the loop).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..losses import FlowResidual, combined_flow_loss
from ..neural_flow import velocity_from_potential
from .budgets import LINEAR, Budgets

#: a differentiable numerical step under the current budgets, ``(u, budgets) -> u_next`` (the
#: experiment applies them: ``budgets.linear_solver(settings)``, ``budgets.stepper_options()``)
Stepper = Callable[[torch.Tensor, Budgets], torch.Tensor]


def normalised_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ‖pred − target‖² / ‖target‖²."""
    num = (pred - target).flatten(1).pow(2).sum(1)
    den = target.flatten(1).pow(2).sum(1).clamp_min(1e-30)
    return (num / den).mean()


def paper_emulator_metric(rollout: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The PRDP reference code's heat validation metric (``val_loss`` of its heat notebooks).

    With ``rollout`` the network's own states ``û_1 … û_R`` and ``reference`` the states
    ``u_0 … u_R`` (both ``[m, ·, C, *space]``): the mean over samples of
    ``‖û_R − u_R‖² / ‖u_{R−1}‖²`` — the last step's error, normalised (as the reference code
    does for its 2-step error) by the norm of the state one step *before* it.
    """
    err = (rollout[:, -1] - reference[:, -1]).flatten(1).pow(2).sum(1)
    den = reference[:, -2].flatten(1).pow(2).sum(1).clamp_min(1e-30)
    return (err / den).mean()


def paper_correction_metric(rollout: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The PRDP reference code's Navier–Stokes validation metric (what its controller reads):
    the last rollout step's error of the x-velocity, normalised by that target's norm,
    ``mean_samples ‖û_R,x − u_R,x‖² / ‖u_R,x‖²``."""
    err = (rollout[:, -1, 0] - reference[:, -1, 0]).flatten(1).pow(2).sum(1)
    den = reference[:, -1, 0].flatten(1).pow(2).sum(1).clamp_min(1e-30)
    return (err / den).mean()


VALIDATION_METRICS = ("ours", "paper")


def _check_metric(metric: str) -> str:
    if metric not in VALIDATION_METRICS:
        raise ValueError(f"validation metric must be one of {', '.join(VALIDATION_METRICS)}; got {metric!r}.")
    return metric


def _minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterable[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


class _NetTask:
    """Shared plumbing of tasks whose parameters are one network."""

    net: nn.Module

    def parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])


class EmulatorTask(_NetTask):
    """Network-then-solver emulator learning.

    Args:
        net: maps a state ``[B, C, *space]`` to the next state.
        stepper: the differentiable numerical step ``(u, budgets) -> u_next``.
        train: reference trajectories ``[n, T, C, *space]`` (T ≥ 3); every window of three
            consecutive states is one training sample.
        validation: reference trajectories ``[m, R+1, C, *space]``; the metric (``"ours"``) is
            the nMSE of the network's own R-step rollout from the first state, each step
            normalised by its own target, averaged over steps; ``"paper"``: the reference code's
            (:func:`paper_emulator_metric`).
        budgets: the budgets ``stepper`` reads.
    """

    def __init__(self, net: nn.Module, stepper: Stepper, train: torch.Tensor, validation: torch.Tensor,
                 batch_size: int, metric: str = "ours", budgets: tuple[str, ...] = (LINEAR,)) -> None:
        self.metric = _check_metric(metric)
        self.budgets = tuple(budgets)
        if train.shape[1] < 3:
            raise ValueError(f"emulator training needs trajectories of at least 3 states, got {train.shape[1]}")
        self.net, self.stepper, self.batch_size = net, stepper, batch_size
        windows = train.unfold(1, 3, 1)  # [n, T-2, C, *space, 3]
        windows = windows.movedim(-1, 2).flatten(0, 1)  # [n·(T-2), 3, C, *space]
        self.windows = windows.contiguous()
        self.validation = validation

    def train_batches(self, generator: torch.Generator) -> Iterable[torch.Tensor]:
        for idx in _minibatches(len(self.windows), self.batch_size, generator):
            yield self.windows[idx]

    def loss(self, batch: torch.Tensor, budgets: Budgets) -> torch.Tensor:
        u0, u2 = batch[:, 0], batch[:, 2]
        u1_hat = self.net(u0)
        u2_hat = self.stepper(u1_hat, budgets)
        return (u2_hat - u2).pow(2).mean()

    @torch.no_grad()
    def validate(self, budgets: Budgets) -> float:
        u = self.validation[:, 0]
        errors, states = [], []
        for t in range(1, self.validation.shape[1]):
            u = self.net(u)
            states.append(u)
            errors.append(normalised_mse(u, self.validation[:, t]))
        if self.metric == "paper":
            return float(paper_emulator_metric(torch.stack(states, 1), self.validation))
        return float(torch.stack(errors).mean())


class CorrectionTask(_NetTask):
    """Solver-then-network hybrid: ``u_{t+1} = P_K(u_t) + C_θ(P_K(u_t))``.

    Args:
        net: the correction C_θ (shape-preserving).
        stepper: the coarse differentiable solver P.
        train: reference trajectories ``[n, T, C, *space]``; windows of ``unroll + 1`` states.
        validation: reference trajectories ``[m, R+1, C, *space]``; metric = nMSE of the hybrid
            R-step rollout with the validation (converged) solver.
        unroll: steps unrolled in the training loss.
        metric: ``"ours"`` (above) or ``"paper"`` (:func:`paper_correction_metric`).
        budgets: the budgets ``stepper`` reads.
    """

    def __init__(self, net: nn.Module, stepper: Stepper, train: torch.Tensor, validation: torch.Tensor,
                 batch_size: int, unroll: int = 2, metric: str = "ours", budgets: tuple[str, ...] = (LINEAR,)) -> None:
        self.metric = _check_metric(metric)
        self.budgets = tuple(budgets)
        if train.shape[1] < unroll + 1:
            raise ValueError(f"need trajectories of at least unroll+1={unroll + 1} states, got {train.shape[1]}")
        self.net, self.stepper, self.batch_size, self.unroll = net, stepper, batch_size, unroll
        windows = train.unfold(1, unroll + 1, 1).movedim(-1, 2).flatten(0, 1)
        self.windows = windows.contiguous()
        self.validation = validation

    def _hybrid_step(self, u: torch.Tensor, budgets: Budgets) -> torch.Tensor:
        coarse = self.stepper(u, budgets)
        return coarse + self.net(coarse)

    def train_batches(self, generator: torch.Generator) -> Iterable[torch.Tensor]:
        for idx in _minibatches(len(self.windows), self.batch_size, generator):
            yield self.windows[idx]

    def loss(self, batch: torch.Tensor, budgets: Budgets) -> torch.Tensor:
        u = batch[:, 0]
        total = 0.0
        for t in range(1, self.unroll + 1):
            u = self._hybrid_step(u, budgets)
            total = total + (u - batch[:, t]).pow(2).mean()
        return total / self.unroll

    @torch.no_grad()
    def validate(self, budgets: Budgets) -> float:
        u = self.validation[:, 0]
        errors, states = [], []
        for t in range(1, self.validation.shape[1]):
            u = self._hybrid_step(u, budgets)
            states.append(u)
            errors.append(normalised_mse(u, self.validation[:, t]))
        if self.metric == "paper":
            return float(paper_correction_metric(torch.stack(states, 1), self.validation))
        return float(torch.stack(errors).mean())


class InverseTask:
    """Recover θ from an observation: minimise ``‖u_K(θ) − u_ref‖² / 2N`` by gradient descent.

    Args:
        forward_map: ``(theta [1, P], budgets) -> u`` (a differentiable PDE solve).
        observation: ``u_ref``.
        theta_init, theta_true: start and reference parameters (the metric is
            ``‖θ − θ_true‖ / ‖θ_true‖``).
        steps_per_epoch: optimiser steps per epoch (one "epoch" is a reporting unit here).
    """

    budgets = (LINEAR,)

    def __init__(self, forward_map: Callable[[torch.Tensor, Budgets], torch.Tensor],
                 observation: torch.Tensor, theta_init: torch.Tensor, theta_true: torch.Tensor,
                 steps_per_epoch: int = 1) -> None:
        self.forward_map = forward_map
        self.observation = observation
        self.theta = nn.Parameter(theta_init.clone())
        self.theta_true = theta_true
        self.steps_per_epoch = steps_per_epoch

    def parameters(self) -> list[nn.Parameter]:
        return [self.theta]

    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.theta.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.theta.copy_(state["theta"])

    def train_batches(self, generator: torch.Generator) -> Iterable[None]:
        return [None] * self.steps_per_epoch

    def loss(self, batch: None, budgets: Budgets) -> torch.Tensor:
        u = self.forward_map(self.theta, budgets)
        n = u[0].numel()
        return (u - self.observation).pow(2).sum() / (2 * n)

    @torch.no_grad()
    def validate(self, budgets: Budgets) -> float:
        return float(torch.linalg.vector_norm(self.theta - self.theta_true) / torch.linalg.vector_norm(self.theta_true))


class FlowPoolTask(_NetTask):
    """Physics-constrained training of a neural flow solver on a pool (no simulation data).

    Each minibatch draws environments from the pool, advances them by one model call, and
    minimises ``log(β·L_boundary + L_momentum)`` (:mod:`pdeaccel.losses`) averaged over every
    consecutive pair of full-resolution states of :meth:`trajectory` (one pair for the vanilla
    solver; T for a staggered one with temporal stride T); the (detached) predictions go back
    into the pool. It declares no budget: the network replaces the solver. Validation: the
    network's own rollout from rest on held-out environments (``validation_steps`` fine steps,
    rounded up to whole calls); the metric is the mean over steps and samples of
    ``L_momentum + β·L_boundary``; :attr:`last_validation` keeps E|R|, E|u − u_cond| and E|∇·u|.

    Args:
        model: a flow model (:class:`~pdeaccel.flow_model.FlowModel`): vanilla or staggered.
        pool: the :class:`~pdeaccel.train.pool.FlowPool`.
        validation_env: batched held-out environments.
        steps_per_epoch, batch_size: optimiser steps per epoch and environments per step.
        beta, theta, advection: the loss (see :class:`~pdeaccel.losses.FlowResidual`).
        validation_steps: length of the validation rollout.
        unroll: model calls per optimiser step; the loss averages the residual of every call's
            pairs and back-propagates through all of them (the network learns from the
            consequences of its own outputs); the last prediction goes back into the pool. The
            environment is held for the unrolled calls (moving obstacles move on write-back).
    """

    budgets = ()

    def __init__(self, model: nn.Module, pool: Any, validation_env: Any, *, steps_per_epoch: int,
                 batch_size: int, beta: float = 20.0, theta: float = 0.5, advection: str = "upwind3",
                 validation_steps: int = 20, unroll: int = 1) -> None:
        self.net, self.pool, self.validation_env = model, pool, validation_env
        self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
        self.beta, self.theta, self.advection = beta, theta, advection
        self.validation_steps = validation_steps
        self.unroll = unroll
        self.last_validation: dict[str, float] = {}
        self._validation_residual: FlowResidual | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.pool.load_state_dict(state["pool"])

    def to(self, device: torch.device) -> "FlowPoolTask":
        """Train on ``device`` (a GPU): the model and the validation environments move there; the
        pool hands out each batch there and keeps its states in host memory."""
        self.net.to(device)
        self.validation_env = self.validation_env.to(device)
        self._validation_residual = None
        self.pool.to(device)
        return self

    def train_batches(self, generator: torch.Generator) -> Iterable[torch.Tensor]:
        for _ in range(self.steps_per_epoch):
            yield self.pool.draw(self.batch_size, generator)

    def _pair_terms(self, residual: FlowResidual, state: Any, new: Any) -> list:
        """Residual terms of every consecutive pair of full-resolution states from ``state`` to ``new``."""
        grid = residual.env.grid
        states = self.net.trajectory(state, new)
        u = [velocity_from_potential(s.potential, grid) for s in states]
        return [residual.terms(u[j], u[j + 1], states[j + 1].pressure) for j in range(len(states) - 1)]

    def loss(self, batch: torch.Tensor, budgets: Budgets) -> torch.Tensor:
        env, state = self.pool.batch(batch)
        residual = FlowResidual(env, theta=self.theta, advection=self.advection)
        pairs = []
        for _ in range(self.unroll):
            new = self.net(state, env)
            pairs += self._pair_terms(residual, state, new)
            state = new
        loss = sum(combined_flow_loss(t, self.beta) for t in pairs) / len(pairs)
        self.pool.write_back(batch, new.detach(), calls=self.unroll)
        self.pool.advance()
        return loss

    @torch.no_grad()
    def validate(self, budgets: Budgets) -> float:
        env = self.validation_env
        # the validation environments never change: their stencils are built once, not per step
        if self._validation_residual is None:
            self._validation_residual = FlowResidual(env, theta=self.theta, advection=self.advection)
        state = self.net.initial_state(env)
        sums = {"metric": 0.0, "momentum_abs": 0.0, "boundary_abs": 0.0, "divergence_abs": 0.0}
        steps = 0
        while steps < self.validation_steps:
            new = self.net(state, env)
            for t in self._pair_terms(self._validation_residual, state, new):
                sums["metric"] += float((t.momentum + self.beta * t.boundary).mean())
                for key in ("momentum_abs", "boundary_abs", "divergence_abs"):
                    sums[key] += float(getattr(t, key).mean())
                steps += 1
            state = new
        self.last_validation = {f"val_{k}": v / steps for k, v in sums.items() if k != "metric"}
        return sums["metric"] / steps
