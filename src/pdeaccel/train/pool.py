"""The training pool of physics-constrained flow training (Wandel et al. 2021).

A pool holds ``size`` environments and the current state of each, as the named tensors of the
flow model's ``pack`` (:mod:`pdeaccel.flow_model`; a staggered model's state is a window of T
states). Every optimiser step draws a batch, the model advances it by one call
(``steps_per_call`` time steps), and the prediction is written back, so the pool holds
states from every stage of many long rollouts without any simulation data. Every
``reset_every`` steps the next environment (round-robin) is replaced by a freshly sampled one at
rest. Environments with moving obstacles move ``steps_per_call`` steps with each prediction
written back (``move``), so the obstacle position and the state stay in step. Optionally
(``perturb_every``) a random environment's state gets a random divergence-free perturbation
that leaves its boundary faces unchanged, so the pool also holds asymmetric states; without it
every state is a network rollout from rest, and a network that damps an instability (a shedding
wake) never meets a developed one. A *warm* pool (``warm_fraction``) starts that fraction of its
resets from developed states of the numerical solver instead of rest: a bank of ``warm_bank``
environments with their developed states is computed once (``warm``: specs -> model states)
and kept in the checkpoint. *Young* slots (``young``) are the first ``young`` environments of the
pool, reset again round-robin every ``young_reset_every`` optimiser steps on top of the pool-wide
resets: with lifetimes long enough to develop a shedding wake, the start-up from rest is
otherwise a tiny share of what the network meets (one reset per 100 steps in a pool of 64 at
batch 8 puts about 1 in 800 samples at the first step from rest), and the network's first
steps and start-up transient are the worst it predicts. The loss stays the physics residual: the states are initial
conditions, never targets. A prediction that is not finite is never written back: that
environment is reset instead, and the event is counted, so a diverged state cannot poison the
pool.

Environments are rebuilt from their *specs* (small JSON-able dicts that an experiment samples and
turns into a :class:`~pdeaccel.physics.flow.FlowEnvironment`), so the pool's state —
specs, states, ages, reset pointer and its own random generator — is a checkpointable dict, and a
resumed run continues the same pool.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from .._checks import integer
from ..physics.flow import FlowEnvironment

Spec = dict[str, Any]


class FlowPool:
    """Args:
        size: number of environments.
        sample_spec: ``generator -> spec`` (a random environment description).
        build_env: ``spec -> FlowEnvironment`` (batch 1, deterministic).
        model: the flow model (:class:`~pdeaccel.flow_model.FlowModel`): its ``initial_state``,
            ``pack``/``unpack`` and ``steps_per_call``.
        reset_every: optimiser steps between two round-robin resets (0: never).
        seed: seeds the pool's own generator (environment sampling, perturbations).
        perturb: ``(spec, env, generator) -> potential increment`` (``[1, P, *nodes]``; added to
            every state of a window).
        perturb_every: optimiser steps between two perturbations of a random environment
            (0: never).
        warm: ``(specs, generator) -> list of (spec, model state)`` developed numerically (batch 1
            each; the spec may differ from the one given, e.g. an obstacle that moved), for a warm
            pool.
        warm_fraction: the probability that a reset (and an initial environment) starts from a
            state of the warm bank instead of rest.
        warm_bank: number of environments in the warm bank.
        young: number of young slots (0: none).
        young_reset_every: optimiser steps between two round-robin resets among the young slots.
        move: ``spec -> spec`` one time step later (moving obstacles); called for every
            environment whose prediction is written back (``steps_per_call`` times), which is
            rebuilt when its spec changed.
    """

    def __init__(self, size: int, sample_spec: Callable[[torch.Generator], Spec],
                 build_env: Callable[[Spec], FlowEnvironment],
                 model: Any,
                 reset_every: int, seed: int = 0,
                 perturb: Callable[[Spec, FlowEnvironment, torch.Generator], torch.Tensor] | None = None,
                 perturb_every: int = 0, move: Callable[[Spec], Spec] | None = None,
                 warm: Callable[[list[Spec], torch.Generator], list[tuple[Spec, Any]]] | None = None,
                 warm_fraction: float = 0.0, warm_bank: int = 8,
                 young: int = 0, young_reset_every: int = 0) -> None:
        size = integer("pool size", size, minimum=1)
        reset_every = integer("reset_every", reset_every, minimum=0)
        perturb_every = integer("perturb_every", perturb_every, minimum=0)
        young = integer("young", young, minimum=0, maximum=size)
        young_reset_every = integer("young_reset_every", young_reset_every, minimum=0)
        if (young > 0) != (young_reset_every > 0):
            raise ValueError(f"young_reset_every must be a positive integer when young > 0 (and 0 otherwise), "
                             f"got young={young!r}, young_reset_every={young_reset_every!r}.")
        if perturb_every and perturb is None:
            raise ValueError("perturb_every > 0 needs a perturb function.")
        if not 0.0 <= warm_fraction <= 1.0 or (warm_fraction > 0 and warm is None):
            raise ValueError(f"warm_fraction must be in [0, 1] (and > 0 needs a warm function), got {warm_fraction!r}.")
        self.size = size
        self.warm_fn, self.warm_fraction, self.warm_bank_size = warm, float(warm_fraction), int(warm_bank)
        self.warm_specs: list[Spec] = []
        self.warm_tensors: dict[str, torch.Tensor] = {}
        self.perturb_fn = perturb
        self.perturb_every = perturb_every
        self.move = move
        # where batches are handed out (the model's device); the pool stays in host memory
        self.device = torch.device("cpu")
        self.sample_spec = sample_spec
        self.build_env = build_env
        self.model = model
        self.reset_every = reset_every
        self.young, self.young_reset_every = young, young_reset_every
        self.next_young = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.specs: list[Spec] = [sample_spec(self.generator) for _ in range(size)]
        self.envs: list[FlowEnvironment] = [build_env(s) for s in self.specs]
        packed = [model.pack(model.initial_state(e)) for e in self.envs]
        self.tensors: dict[str, torch.Tensor] = {k: torch.cat([p[k] for p in packed]) for k in packed[0]}
        if self.warm_fraction > 0:
            for i in range(size):
                self._maybe_warm(i)
        self.age = torch.zeros(size, dtype=torch.long)
        self.steps = 0
        self.next_reset = 0
        self.rejected = 0  # non-finite predictions refused (their environments were reset)
        self.perturbed = 0

    # ------------------------------------------------------------------ use
    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of a batch (without replacement; the whole pool if it is smaller)."""
        return torch.randperm(self.size, generator=generator)[:batch_size]

    @property
    def potential(self) -> torch.Tensor:
        return self.tensors["potential"]

    @property
    def pressure(self) -> torch.Tensor:
        return self.tensors["pressure"]

    def to(self, device: torch.device | str) -> "FlowPool":
        """Hand out batches on ``device`` (a GPU): the pool's states and environments stay in
        host memory, where a paper-size pool fits, and only each step's batch is copied over and
        its predictions back."""
        self.device = torch.device(device)
        return self

    def batch(self, idx: torch.Tensor) -> tuple[FlowEnvironment, Any]:
        env = FlowEnvironment.stack([self.envs[int(i)] for i in idx])
        state = {k: t[idx].clone() for k, t in self.tensors.items()}
        if self.device.type != "cpu":
            env = env.to(self.device)
            state = {k: t.to(self.device) for k, t in state.items()}
        return env, self.model.unpack(state)

    def write_back(self, idx: torch.Tensor, state: Any, calls: int = 1) -> int:
        """Store the predictions of a batch, ``calls`` model calls after the batch was drawn
        (moving obstacles advance that many calls' steps); returns how many were refused as
        non-finite."""
        new = {k: t.detach().to(self.tensors[k].device) for k, t in self.model.pack(state).items()}
        finite = torch.ones(len(idx), dtype=torch.bool)
        for t in new.values():
            finite &= torch.isfinite(t.flatten(1)).all(1)
        good = idx[finite]
        for k, t in new.items():
            self.tensors[k][good] = t[finite].to(self.tensors[k].dtype)
        self.age[good] += 1
        if self.move is not None:
            for i in (int(j) for j in good):
                moved = self.specs[i]
                for _ in range(self.model.steps_per_call * calls):
                    moved = self.move(moved)
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
        if self.young and self.steps % self.young_reset_every == 0:
            i = self.next_young % self.young  # a pointer from a pool resumed with more young slots per rank
            self.reset(i)
            self.next_young = (i + 1) % self.young
        if self.perturb_every and self.steps % self.perturb_every == 0:
            self.perturb(int(torch.randint(self.size, (), generator=self.generator)))

    def perturb(self, i: int) -> None:
        """Add a random divergence-free perturbation to environment ``i``'s state."""
        delta = self.perturb_fn(self.specs[i], self.envs[i], self.generator)
        self.tensors["potential"][i] = self.potential[i] + delta[0].to(self.potential.dtype)
        self.perturbed += 1

    def reset(self, i: int) -> None:
        """Replace environment ``i`` by a new random one, at rest (or, in a warm pool, by one of
        the warm bank's developed states)."""
        self.specs[i] = self.sample_spec(self.generator)
        self.envs[i] = self.build_env(self.specs[i])
        packed = self.model.pack(self.model.initial_state(self.envs[i]))
        for k, t in packed.items():
            self.tensors[k][i] = t[0].to(self.tensors[k].dtype)
        self.age[i] = 0
        if self.warm_fraction > 0:
            self._maybe_warm(i)

    def _maybe_warm(self, i: int) -> None:
        if float(torch.rand((), generator=self.generator)) >= self.warm_fraction:
            return
        if not self.warm_specs:  # built on first use, then kept (and checkpointed)
            developed = self.warm_fn([self.sample_spec(self.generator) for _ in range(self.warm_bank_size)],
                                     self.generator)
            self.warm_specs = [spec for spec, _ in developed]
            states = [self.model.pack(state) for _, state in developed]
            self.warm_tensors = {k: torch.cat([s[k] for s in states]).to(self.tensors[k].dtype) for k in self.tensors}
        j = int(torch.randint(len(self.warm_specs), (), generator=self.generator))
        self.specs[i] = copy.deepcopy(self.warm_specs[j])
        self.envs[i] = self.build_env(self.specs[i])
        for k in self.tensors:
            self.tensors[k][i] = self.warm_tensors[k][j]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"specs": copy.deepcopy(self.specs), **{k: t.clone() for k, t in self.tensors.items()},
                "age": self.age.clone(), "steps": self.steps,
                "next_reset": self.next_reset, "next_young": self.next_young, "rejected": self.rejected, "perturbed": self.perturbed,
                "warm_specs": copy.deepcopy(self.warm_specs), "warm_tensors": {k: t.clone() for k, t in self.warm_tensors.items()},
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["specs"]) != self.size:
            raise ValueError(f"pool state holds {len(state['specs'])} environments, this pool has {self.size}.")
        for name, own in self.tensors.items():
            t = state.get(name)
            if t is None:
                raise ValueError(f"pool state has no '{name}' tensor: it was written by another flow-model kind.")
            if tuple(t.shape) != tuple(own.shape) or not bool(torch.isfinite(t).all()):
                raise ValueError(f"pool state '{name}' has shape {list(t.shape)} or non-finite values; "
                                 f"expected a finite {list(own.shape)} tensor (the same model kind, stride "
                                 "and window as the run that wrote it).")
        for i, spec in enumerate(state["specs"]):
            if spec != self.specs[i]:  # only environments reset since the state was taken are rebuilt
                self.specs[i] = copy.deepcopy(spec)
                self.envs[i] = self.build_env(spec)
        self.tensors = {k: state[k].clone() for k in self.tensors}
        self.age = state["age"].clone()
        self.steps = int(state["steps"])
        self.next_reset = int(state["next_reset"])
        self.next_young = int(state.get("next_young", 0))  # absent in checkpoints from before young slots
        self.rejected = int(state["rejected"])
        self.perturbed = int(state.get("perturbed", 0))  # absent in checkpoints from before perturbations
        self.warm_specs = copy.deepcopy(state.get("warm_specs", []))
        self.warm_tensors = {k: t.clone() for k, t in state.get("warm_tensors", {}).items()}
        self.generator.set_state(state["generator"])
