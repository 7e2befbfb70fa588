"""The flow-model interface is open: a model kind registered from outside the package trains
through the real trainer, pool, validation, evaluation and CLI without touching them."""

from __future__ import annotations

import csv
import json

import torch
from torch import nn

from pdeaccel.cli import main
from pdeaccel.flow_model import MODEL_KINDS, FlowModel, register_model_kind
from pdeaccel.neural_flow import PotentialState, node_shape, velocity_from_potential


class LinearFlowModel(nn.Module):
    """A toy kind: the next potential is a learned per-channel affine map of the fluid mask plus
    the old potential (no U-Net), and the pressure a learned constant times the fluid mask."""

    steps_per_call = 1

    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.ndim = ndim
        self.weight = nn.Parameter(torch.zeros(3))
        self.calls = 0

    def initial_state(self, env):
        P = 1 if env.ndim == 2 else 3
        return PotentialState(torch.zeros((env.batch_size, P) + node_shape(env.grid)),
                              torch.zeros((env.batch_size, 1) + env.grid.shape))

    def latest(self, state):
        return state

    def velocity(self, state, env):
        return velocity_from_potential(state.potential, env.grid)

    def trajectory(self, old, new):
        return [old, new]

    def from_trajectory(self, states):
        return states[-1]

    def pack(self, state):
        return {"potential": state.potential, "pressure": state.pressure}

    def unpack(self, tensors):
        return PotentialState(tensors["potential"], tensors["pressure"])

    def forward(self, state, env):
        self.calls += 1
        y = torch.arange(state.potential.shape[-1], dtype=state.potential.dtype)
        a = state.potential * (1 + self.weight[0]) + self.weight[1] * y  # a shear flow u_x = w1
        return PotentialState(a, self.weight[2] * env.fluid)


def _toy(ndim, model_cfg, net_cfg, scales):
    return LinearFlowModel(ndim)


def test_a_model_kind_registered_outside_the_package_trains_through_the_cli(tmp_path):
    register_model_kind("toy-linear", _toy)
    try:
        assert isinstance(LinearFlowModel(2), FlowModel)
        args = ["physics.length=16", "physics.height=8", "pool.size=4", "data.validation=2", "data.validation_steps=2",
                "train.steps_per_epoch=5", "train.batch_size=2", "train.epochs=3", "train.lr=0.05",
                "model.kind=toy-linear", "net.levels=2"]
        assert main(["train", "flow-2d", *args, "--quiet", "--out", str(tmp_path / "run")]) == 0
        rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
        assert len(rows) == 3
        # the optimiser moved the toy model's parameters: the run used the registered kind
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 0
        meta = json.loads((tmp_path / "model" / "model.json").read_text())
        assert meta["config"]["model"]["kind"] == "toy-linear"
        from safetensors.torch import load_file
        weight = load_file(str(tmp_path / "model" / "model.safetensors"))["weight"]
        assert float(weight.abs().sum()) > 0
        assert main(["simulate", "--model", str(tmp_path / "model"), "--env", "box", "--steps", "3",
                     "--no-animation", "--quiet", "--out", str(tmp_path / "sim")]) == 0
        report = json.loads((tmp_path / "sim" / "report.json").read_text())
        assert report["stable"] and report["steps"] == 3
    finally:
        MODEL_KINDS.pop("toy-linear", None)
    # an unknown kind is a clear configuration error naming the key
    assert main(["train", "flow-2d", "model.kind=nope", "--out", str(tmp_path / "bad")]) == 2
