"""The training pool of physics-constrained flow training (Wandel et al. 2021).

A pool holds ``size`` environments and the current state of each. Every optimiser step draws a
batch, the network advances it by one step, and the prediction is written back, so the pool holds
states from every stage of many long rollouts without any simulation data. Every
``reset_every`` steps the next environment (round-robin) is replaced by a freshly sampled one at
rest. Environments with moving obstacles move one step with each prediction written back
(``move``), so the obstacle position and the state stay in step. Optionally
(``perturb_every``) a random environment's state gets a random divergence-free perturbation
that leaves its boundary faces unchanged, so the pool also holds asymmetric states; without it
every state is a network rollout from rest, and a network that damps an instability (a shedding
wake) never meets a developed one. A prediction that is not finite is never written back: that
environment is reset instead, and the event is counted, so a diverged state cannot poison the
pool.

Environments are rebuilt from their *specs* (small JSON-able dicts that an experiment samples and
turns into a :class:`~pdeaccel.physics.environments.FlowEnvironment`), so the pool's state —
specs, states, ages, reset pointer and its own random generator — is a checkpointable dict, and a
resumed run continues the same pool.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from ..neural_flow import PotentialState
from ..physics.environments import FlowEnvironment

Spec = dict[str, Any]


class FlowPool:
    """Args:
        size: number of environments.
        sample_spec: ``generator -> spec`` (a random environment description).
        build_env: ``spec -> FlowEnvironment`` (batch 1, deterministic).
        initial_state: ``env -> PotentialState`` (the fluid at rest).
        reset_every: optimiser steps between two round-robin resets (0: never).
        seed: seeds the pool's own generator (environment sampling, perturbations).
        perturb: ``(spec, env, generator) -> potential increment`` (``[1, P, *nodes]``).
        perturb_every: optimiser steps between two perturbations of a random environment
            (0: never).
        move: ``spec -> spec`` one time step later (moving obstacles); called for every
            environment whose prediction is written back, which is rebuilt when its spec changed.
    """

    def __init__(self, size: int, sample_spec: Callable[[torch.Generator], Spec],
                 build_env: Callable[[Spec], FlowEnvironment],
                 initial_state: Callable[[FlowEnvironment], PotentialState],
                 reset_every: int, seed: int = 0,
                 perturb: Callable[[Spec, FlowEnvironment, torch.Generator], torch.Tensor] | None = None,
                 perturb_every: int = 0, move: Callable[[Spec], Spec] | None = None) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"pool size must be a positive integer, got {size!r}.")
        if isinstance(reset_every, bool) or not isinstance(reset_every, int) or reset_every < 0:
            raise ValueError(f"reset_every must be a non-negative integer, got {reset_every!r}.")
        if isinstance(perturb_every, bool) or not isinstance(perturb_every, int) or perturb_every < 0:
            raise ValueError(f"perturb_every must be a non-negative integer, got {perturb_every!r}.")
        if perturb_every and perturb is None:
            raise ValueError("perturb_every > 0 needs a perturb function.")
        self.size = size
        self.perturb_fn = perturb
        self.perturb_every = perturb_every
        self.move = move
        self.sample_spec = sample_spec
        self.build_env = build_env
        self.initial_state = initial_state
        self.reset_every = reset_every
        self.generator = torch.Generator().manual_seed(seed)
        self.specs: list[Spec] = [sample_spec(self.generator) for _ in range(size)]
        self.envs: list[FlowEnvironment] = [build_env(s) for s in self.specs]
        states = [initial_state(e) for e in self.envs]
        self.potential = torch.cat([s.potential for s in states])
        self.pressure = torch.cat([s.pressure for s in states])
        self.age = torch.zeros(size, dtype=torch.long)
        self.steps = 0
        self.next_reset = 0
        self.rejected = 0  # non-finite predictions refused (their environments were reset)
        self.perturbed = 0

    # ------------------------------------------------------------------ use
    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of a batch (without replacement; the whole pool if it is smaller)."""
        return torch.randperm(self.size, generator=generator)[:batch_size]

    def batch(self, idx: torch.Tensor) -> tuple[FlowEnvironment, PotentialState]:
        env = FlowEnvironment.stack([self.envs[int(i)] for i in idx])
        return env, PotentialState(self.potential[idx].clone(), self.pressure[idx].clone())

    def write_back(self, idx: torch.Tensor, state: PotentialState) -> int:
        """Store the predictions of a batch; returns how many were refused as non-finite."""
        pot, pres = state.potential.detach(), state.pressure.detach()
        finite = torch.isfinite(pot.flatten(1)).all(1) & torch.isfinite(pres.flatten(1)).all(1)
        good = idx[finite]
        self.potential[good] = pot[finite].to(self.potential.dtype)
        self.pressure[good] = pres[finite].to(self.pressure.dtype)
        self.age[good] += 1
        if self.move is not None:
            for i in (int(j) for j in good):
                moved = self.move(self.specs[i])
                if moved is not self.specs[i] and moved != self.specs[i]:
                    self.specs[i] = moved
                    self.envs[i] = self.build_env(moved)
        bad = [int(i) for i in idx[~finite]]
        for i in bad:
            self.reset(i)
        self.rejected += len(bad)
        return len(bad)

    def advance(self) -> None:
        """Count one optimiser step; reset the next environment when it is due."""
        self.steps += 1
        if self.reset_every and self.steps % self.reset_every == 0:
            self.reset(self.next_reset)
            self.next_reset = (self.next_reset + 1) % self.size
        if self.perturb_every and self.steps % self.perturb_every == 0:
            self.perturb(int(torch.randint(self.size, (), generator=self.generator)))

    def perturb(self, i: int) -> None:
        """Add a random divergence-free perturbation to environment ``i``'s state."""
        delta = self.perturb_fn(self.specs[i], self.envs[i], self.generator)
        self.potential[i] = self.potential[i] + delta[0].to(self.potential.dtype)
        self.perturbed += 1

    def reset(self, i: int) -> None:
        """Replace environment ``i`` by a new random one, at rest."""
        self.specs[i] = self.sample_spec(self.generator)
        self.envs[i] = self.build_env(self.specs[i])
        s = self.initial_state(self.envs[i])
        self.potential[i] = s.potential[0].to(self.potential.dtype)
        self.pressure[i] = s.pressure[0].to(self.pressure.dtype)
        self.age[i] = 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"specs": copy.deepcopy(self.specs), "potential": self.potential.clone(),
                "pressure": self.pressure.clone(), "age": self.age.clone(), "steps": self.steps,
                "next_reset": self.next_reset, "rejected": self.rejected, "perturbed": self.perturbed,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["specs"]) != self.size:
            raise ValueError(f"pool state holds {len(state['specs'])} environments, this pool has {self.size}.")
        for name in ("potential", "pressure"):
            t = state[name]
            if tuple(t.shape) != tuple(getattr(self, name).shape) or not bool(torch.isfinite(t).all()):
                raise ValueError(f"pool state '{name}' has shape {list(t.shape)} or non-finite values; "
                                 f"expected a finite {list(getattr(self, name).shape)} tensor.")
        for i, spec in enumerate(state["specs"]):
            if spec != self.specs[i]:  # only environments reset since the state was taken are rebuilt
                self.specs[i] = copy.deepcopy(spec)
                self.envs[i] = self.build_env(spec)
        self.potential = state["potential"].clone()
        self.pressure = state["pressure"].clone()
        self.age = state["age"].clone()
        self.steps = int(state["steps"])
        self.next_reset = int(state["next_reset"])
        self.rejected = int(state["rejected"])
        self.perturbed = int(state.get("perturbed", 0))  # absent in checkpoints from before perturbations
        self.generator.set_state(state["generator"])
