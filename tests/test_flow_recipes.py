"""Training recipes of the flow solver: a warm pool (developed numerical states as initial
conditions) and the unrolled physics loss."""

from __future__ import annotations

import pytest
import torch

from pdeaccel.experiments import runner
from pdeaccel.experiments.flow import build_environment, developed_states
from pdeaccel.experiments.flow_eval import reference_rollout
from pdeaccel.experiments.registry import get_experiment
from pdeaccel.losses import FlowResidual, combined_flow_loss
from pdeaccel.neural_flow import velocity_from_potential
from pdeaccel.train.budgets import Budgets

TINY = ["physics.length=16", "physics.height=8", "pool.size=4", "net.hidden=4", "net.levels=2",
        "data.validation=2", "data.validation_steps=2", "train.steps_per_epoch=3", "train.batch_size=2"]


def _build(name, extra):
    cfg = runner.resolve_config(name, overrides=TINY + extra)
    return cfg, get_experiment(name).build(cfg)


@pytest.mark.parametrize("name", ["flow-2d", "flow-2d-s2t2"])
def test_warm_pool_starts_from_the_numerical_solution(name):
    cfg, built = _build(name, ["pool.warm_fraction=1.0", "pool.warm_bank=2", "pool.warm_time=12"])
    pool, model = built.task.pool, built.task.net
    assert len(pool.warm_specs) == 2 and all(s in pool.warm_specs for s in pool.specs)
    # the newest state of environment 0 is the reference's velocity at t = 12 on its spec
    spec = pool.specs[0]
    env = build_environment(cfg["physics"], spec)
    ref = reference_rollout(env, 12, save_steps=[12])
    state = model.latest(model.unpack({k: t[:1] for k, t in pool.tensors.items()}))
    u = velocity_from_potential(state.potential.double(), env.grid)
    for a, b in zip(u, ref.snapshots[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert float(ref.snapshots[0][0].abs().max()) > 0.1
    if model.steps_per_call == 2:  # a window holds two consecutive reference states, not one repeated
        assert not torch.equal(pool.tensors["potential"][0, 0], pool.tensors["potential"][0, 1])
    # the bank is pool state: a rebuilt pool restores it without recomputing
    state_dict = pool.state_dict()
    _, again = _build(name, [])
    again.task.pool.load_state_dict(state_dict)
    assert again.task.pool.warm_specs == pool.warm_specs
    assert torch.equal(again.task.pool.warm_tensors["potential"], pool.warm_tensors["potential"])


def test_moving_obstacles_are_held_still_in_the_warm_bank():
    cfg = runner.resolve_config("flow-2d", overrides=TINY)
    spec = {"kind": "moving", "inflow": 0.5, "center": [5.0, 4.0], "radius": 1.2, "velocity": [0.0, 0.1]}
    model = get_experiment("flow-2d").build(cfg).task.net
    (out_spec, state), = developed_states(cfg["physics"], [spec], 3.0, model)
    assert out_spec["kind"] == "cylinder" and "velocity" not in out_spec


def test_unrolled_loss_averages_the_residual_of_every_call_and_writes_back_the_last():
    cfg, built = _build("flow-2d", ["loss.unroll=3"])
    task = built.task
    torch.manual_seed(0)
    with torch.no_grad():
        for p in task.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    idx = torch.tensor([0, 2])
    env, state = task.pool.batch(idx)
    residual = FlowResidual(env)
    expected, s = [], state
    for _ in range(3):
        new = task.net(s, env)
        u0, u1 = (velocity_from_potential(x.potential, env.grid) for x in (s, new))
        expected.append(combined_flow_loss(residual.terms(u0, u1, new.pressure), task.beta))
        s = new
    loss = task.loss(idx, Budgets({}))
    torch.testing.assert_close(loss, sum(expected) / 3)
    assert torch.equal(task.pool.potential[idx], s.potential.detach())
    # the gradient reaches through the unrolled calls: the first call's parameters feel the third residual
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in task.net.parameters())


def test_recipes_train_through_the_cli(tmp_path):
    from pdeaccel.cli import main

    assert main(["train", "flow-2d", *TINY, "train.epochs=1", "pool.warm_fraction=0.5", "pool.warm_bank=2",
                 "pool.warm_time=8", "loss.unroll=2", "--quiet", "--out", str(tmp_path / "r")]) == 0
    assert main(["train", "flow-3d", "pool.warm_fraction=0.5", "--quiet", "--out", str(tmp_path / "x")]) == 2
