"""The models shipped under models/ load by name on a fresh clone (safetensors + JSON only), run,
and still say how to reproduce them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pdeaccel.experiments.flow import held_out_environment
from pdeaccel.experiments.flow_eval import MODELS_DIR, load_flow_model, neural_rollout, training_command


@pytest.mark.parametrize("name", ["flow-2d", "flow-3d"])
def test_a_shipped_model_loads_by_name_and_runs(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # found in the repository's models/, not relative to the working directory
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a shipped model must not be unpickled"))
    model, cfg, epochs = load_flow_model(name)
    meta = json.loads((MODELS_DIR / name / "model.json").read_text())["meta"]
    assert meta["command"] == training_command(cfg)  # the recorded command rebuilds this config
    assert meta["optimizer_steps"] == epochs * cfg["train"]["steps_per_epoch"] > 0
    assert (MODELS_DIR / name / "model.safetensors").stat().st_size < 5e6
    env = held_out_environment(cfg["physics"], "cylinder")
    roll = neural_rollout(model, env, 3)
    assert roll.stable and max(roll.diagnostics["divergence_abs"]) < 1e-6
    assert max(roll.diagnostics["max_speed"]) > 0.1  # a flow, not the rest state


def test_an_unknown_model_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="shipped models: flow-2d, flow-3d"):
        load_flow_model("flow-9d")
