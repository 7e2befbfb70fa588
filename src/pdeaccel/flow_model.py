"""The flow-model interface: what the training pool, the pool task, validation, evaluation and
``pdeaccel simulate --model`` need of a learned flow solver, and the registry of model kinds a
run's config names (``model.kind``).

A model is an ``nn.Module`` whose call ``model(state, env)`` advances ``steps_per_call`` fine time
steps of ``env.dt``. Its state is opaque to everyone else: they go through

- ``initial_state(env)`` — the fluid at rest;
- ``latest(state)`` — the newest full-resolution :class:`~pdeaccel.neural_flow.PotentialState`;
- ``velocity(state, env)`` — the newest state's face velocities;
- ``trajectory(old, new)`` — the consecutive full-resolution states from the newest of ``old`` to
  the newest of ``new`` (the physics loss judges every consecutive pair);
- ``from_trajectory(states)`` — the state whose newest states are these consecutive
  full-resolution states (a warm pool starts environments from numerical solutions with it);
- ``pack(state)`` / ``unpack(tensors)`` — the state as named batch-first tensors, which a pool
  stores, indexes and checkpoints.

Kinds: ``vanilla`` (:class:`~pdeaccel.neural_flow.NeuralFlowSolver`) and ``staggered``
(:class:`~pdeaccel.stagger.StaggeredFlowSolver`); :func:`register_model_kind` adds one from
anywhere (a test registers a toy kind and trains it through the real trainer and CLI).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from .neural_flow import NeuralFlowSolver, PotentialState, Velocity
from .physics.flow import FlowEnvironment
from .stagger import StaggeredFlowSolver


@runtime_checkable
class FlowModel(Protocol):
    steps_per_call: int

    def initial_state(self, env: FlowEnvironment) -> Any: ...
    def latest(self, state: Any) -> PotentialState: ...
    def velocity(self, state: Any, env: FlowEnvironment) -> Velocity: ...
    def trajectory(self, old: Any, new: Any) -> list[PotentialState]: ...
    def from_trajectory(self, states: list[PotentialState]) -> Any: ...
    def pack(self, state: Any) -> dict[str, torch.Tensor]: ...
    def unpack(self, tensors: dict[str, torch.Tensor]) -> Any: ...
    def __call__(self, state: Any, env: FlowEnvironment) -> Any: ...


# A factory builds a model from the run's ``model`` config section, the ``net`` section and the
# physics-derived scales (velocity_scale, potential_scale, pressure_scale and the two bounds).
ModelFactory = Callable[[int, dict[str, Any], dict[str, Any], dict[str, float]], nn.Module]
MODEL_KINDS: dict[str, ModelFactory] = {}


def register_model_kind(kind: str, factory: ModelFactory) -> None:
    MODEL_KINDS[kind] = factory


def build_flow_model(ndim: int, model: dict[str, Any], net: dict[str, Any], scales: dict[str, float]) -> nn.Module:
    kind = model.get("kind", "vanilla")
    if kind not in MODEL_KINDS:
        raise ValueError(f"model.kind={kind!r} is not a registered flow-model kind; allowed: "
                         f"{', '.join(sorted(MODEL_KINDS))}.")
    return MODEL_KINDS[kind](ndim, model, net, scales)


def _vanilla(ndim: int, model: dict[str, Any], net: dict[str, Any], scales: dict[str, float]) -> nn.Module:
    if model.get("stride", 1) != 1 or model.get("window", 1) != 1:
        raise ValueError(f"model.kind=vanilla has no stride or window (got stride={model.get('stride')}, "
                         f"window={model.get('window')}); use model.kind=staggered to decompose the solver.")
    return NeuralFlowSolver(ndim, hidden=net["hidden"], levels=net["levels"], kernel_size=net["kernel_size"],
                            mirror=bool(model.get("mirror", False)), **scales)


def _staggered(ndim: int, model: dict[str, Any], net: dict[str, Any], scales: dict[str, float]) -> nn.Module:
    if model.get("mirror", False):
        raise ValueError("model.mirror=true is a vanilla-solver option: a reflection maps one staggered sub-field "
                         "onto another offset's, so the sub-solvers would no longer run independently; leave it false.")
    return StaggeredFlowSolver(ndim, stride=model["stride"], window=model["window"], hidden=net["hidden"],
                               levels=net["levels"], kernel_size=net["kernel_size"],
                               shared_weights=model.get("shared_weights", False),
                               offset_input=model.get("offset_input", True),
                               # a config from before model.gauge existed ran without it
                               gauge=model.get("gauge", "free"), **scales)


register_model_kind("vanilla", _vanilla)
register_model_kind("staggered", _staggered)
