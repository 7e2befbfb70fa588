"""The physics-constrained flow solver: residual against exact flows we did not produce (the
discrete plane Poiseuille solution, Taylor–Green decay with its second-order truncation error),
the curl parameterisation's divergence, bounded network updates, the training pool, and the
flow experiments through the shared trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdeaccel import Grid
from pdeaccel.experiments import runner
from pdeaccel.experiments.flow import build_environment, held_out_spec, sample_spec
from pdeaccel.losses import FlowResidual, combined_flow_loss
from pdeaccel.neural_flow import (NeuralFlowSolver, PotentialState, node_shape, potential_mask,
                                  velocity_from_potential)
from pdeaccel.physics.flow import FlowEnvironment, channel
from pdeaccel.stencils import mac_divergence, mac_face_shape
from pdeaccel.train.pool import FlowPool

torch.manual_seed(0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_curl_of_any_potential_is_divergence_free(ndim):
    grid = Grid((7, 5) if ndim == 2 else (6, 5, 4), boundary="neumann")
    P = 1 if ndim == 2 else 3
    a = torch.randn((3, P) + node_shape(grid), dtype=torch.float64) * potential_mask(grid, torch.float64)
    u = velocity_from_potential(a, grid)
    assert [tuple(c.shape[2:]) for c in u] == [mac_face_shape(grid, d) for d in range(ndim)]
    div = mac_divergence(u, grid)
    scale = max(float(c.abs().max()) for c in u) / min(grid.spacing)
    assert float(div.abs().max()) < 1e-14 * scale
    assert float(u[0].abs().max()) > 0.1  # a real field, not a trivially zero one


def discrete_poiseuille_env(mu: float = 0.1, rho: float = 4.0, G: float = 0.02):
    """Channel 16 × 8 cells with in- and outflow faces carrying the *discrete* steady profile
    u_j = (G/2μ)·(y_j(H − y_j) + h²/4) (the h²/4 offset makes the mirrored no-slip ghost exact:
    −u_0 equals the parabola continued to y = −h/2), and its potential and pressure p = −G·x."""
    env = channel(16.0, 8.0, 8, outflow="prescribed", mu=mu, rho=rho, dt=4.0, dtype=torch.float64)
    h, H = 1.0, 8.0
    ny = env.grid.shape[1]
    y = (torch.arange(ny, dtype=torch.float64) - 1 + 0.5) * h
    profile = G / (2 * mu) * (y * (H - y) + h * h / 4)
    profile[0] = profile[-1] = 0.0  # the wall layers
    faces = [f.clone() for f in env.face_velocity]
    faces[0][0, 0, :2] = profile
    faces[0][0, 0, -2:] = profile
    env = env.replace(face_velocity=tuple(faces), background=None, obstacles=None)
    nodes = node_shape(env.grid)
    a = torch.zeros((1, 1) + nodes, dtype=torch.float64)
    a[0, 0, :, 1:] = h * torch.cumsum(profile, 0)
    x = env.cell_coordinates()[0]
    p = (-G * x)[None, None] * env.fluid
    return env, a, p, profile


@pytest.mark.parametrize("theta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("advection", ["central", "upwind3"])
def test_discrete_poiseuille_has_zero_residual(theta, advection):
    env, a, p, profile = discrete_poiseuille_env()
    u = velocity_from_potential(a, env.grid)
    torch.testing.assert_close(u[0][0, 0, 5], profile)  # the curl reproduces the profile
    res = FlowResidual(env, theta=theta, advection=advection)
    terms = res.terms(u, u, p)
    assert float(terms.momentum_abs) < 1e-13
    assert float(terms.boundary_abs) < 1e-14
    assert float(terms.divergence_abs) < 1e-14
    # the right pressure gradient matters: without it the residual is G on every free x-face
    R = res.momentum(u, u, torch.zeros_like(p))
    free = env.face_free[0] > 0
    torch.testing.assert_close(R[0][free], torch.full_like(R[0][free], 0.02), rtol=1e-10, atol=1e-13)


def test_boundary_residual_sits_on_the_perturbed_face_only():
    env, a, p, _ = discrete_poiseuille_env()
    u = list(velocity_from_potential(a, env.grid))
    u[1] = u[1].clone()
    u[1][0, 0, 7, 0] += 0.3  # a y-face of the bottom wall: prescribed (no penetration)
    assert bool(env.face_mask[1][0, 0, 7, 0])
    b = FlowResidual(env).boundary(tuple(u))
    assert float(b[1][0, 0, 7, 0]) == pytest.approx(0.3)
    assert int((b[1].abs() > 1e-12).sum()) == 1 and float(b[0].abs().max()) < 1e-14


@pytest.mark.parametrize("advection", ["central", "upwind3"])
def test_taylor_green_residual_is_second_order(advection):
    # u = sin x cos y F, v = −cos x sin y F, p = ρ/4 (cos 2x + cos 2y) F², F = exp(−2νt) solve
    # the Navier–Stokes equations exactly; the IMEX residual (pressure at the half step) of the
    # exact fields must vanish at second order in h with Δt ∝ h
    mu, rho = 0.1, 2.0
    nu = mu / rho
    maxima = []
    for n in (16, 32, 64):
        L = 2 * math.pi
        h = L / n
        dt = 0.5 * h
        grid = Grid((n, n), (L, L), "periodic")
        faces = tuple(torch.zeros(mac_face_shape(grid, d), dtype=torch.float64) for d in range(2))
        env = FlowEnvironment(grid, torch.ones(grid.shape, dtype=torch.float64), faces, mu=mu, rho=rho, dt=dt)
        x = torch.arange(n, dtype=torch.float64) * h
        xu, yu = torch.meshgrid(x, x + h / 2, indexing="ij")
        xv, yv = torch.meshgrid(x + h / 2, x, indexing="ij")
        xc, yc = torch.meshgrid(x + h / 2, x + h / 2, indexing="ij")

        def vel(t):
            F = math.exp(-2 * nu * t)
            return ((torch.sin(xu) * torch.cos(yu) * F)[None, None], (-torch.cos(xv) * torch.sin(yv) * F)[None, None])

        t0 = 0.3
        F2 = math.exp(-4 * nu * (t0 + dt / 2))
        p = (rho / 4 * (torch.cos(2 * xc) + torch.cos(2 * yc)) * F2)[None, None]
        terms = FlowResidual(env, theta=0.5, advection=advection).momentum(vel(t0), vel(t0 + dt), p)
        maxima.append(max(float(r.abs().max()) for r in terms))
    orders = [math.log2(a / b) for a, b in zip(maxima, maxima[1:])]
    print(f"Taylor-Green residual ({advection}) max {maxima}, observed orders {orders}")
    assert all(o > 1.9 for o in orders)


def small_model(ndim: int = 2) -> NeuralFlowSolver:
    return NeuralFlowSolver(ndim, hidden=4, levels=2, potential_scale=2.0, potential_bound=5.0, pressure_bound=3.0)


def test_outputs_are_bounded_and_gauge_fixed_whatever_the_network_says():
    env = channel(16.0, 8.0, 8, outflow="prescribed", mu=0.1, rho=4.0, dt=4.0, dtype=torch.float32)
    model = small_model()
    with torch.no_grad():
        model.net.project.bias.fill_(1e6)  # a wildly diverging network
    new = model(model.initial_state(env), env)
    assert torch.isfinite(new.potential).all() and torch.isfinite(new.pressure).all()
    assert float(new.potential.detach().abs().max()) <= 5.0 and float(new.pressure.detach().abs().max()) <= 3.0
    # the pressure lives on fluid cells only
    assert not new.pressure[env.fluid == 0].any()
    with pytest.raises(ValueError, match="state.potential must have shape"):
        model(PotentialState(torch.zeros(1, 1, 3, 3), new.pressure), env)


def test_3d_step_trains_and_stays_divergence_free():
    physics = {"ndim": 3, "length": 12, "height": 8, "mu": 0.1, "rho": 4.0, "dt": 4.0, "inflow_min": 0.5,
               "inflow_max": 1.0, "obstacles": ["sphere"], "magnus_max": 1.0, "mu_range": [0.05, 0.2],
               "rho_range": [1.0, 4.0]}
    env = FlowEnvironment.stack([build_environment(physics, sample_spec(physics, torch.Generator().manual_seed(i)))
                                 for i in range(2)])
    assert float(env.mu[0]) != float(env.mu[1])  # per-environment viscosity
    model = small_model(3)
    state = model.initial_state(env)
    new = model(state, env)
    terms = FlowResidual(env).terms(model.velocity(state, env), model.velocity(new, env), new.pressure)
    loss = combined_flow_loss(terms)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert float(terms.divergence_abs.detach().max()) < 1e-5


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (they are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_physics() -> dict:
    return {"ndim": 2, "length": 16, "height": 8, "mu": 0.1, "rho": 4.0, "dt": 4.0, "inflow_min": 0.5,
            "inflow_max": 1.0, "obstacles": ["box", "cylinder", "magnus"], "magnus_max": 1.0,
            "mu_range": [0.1, 0.1], "rho_range": [4.0, 4.0]}


def test_pool_refuses_non_finite_predictions_and_resets_round_robin():
    physics = tiny_physics()
    model = small_model()
    pool = FlowPool(4, lambda g: sample_spec(physics, g), lambda s: build_environment(physics, s),
                    model, reset_every=3, seed=5)
    idx = torch.tensor([0, 2])
    env, state = pool.batch(idx)
    bad = PotentialState(state.potential + 1.0, state.pressure + 1.0)
    bad.potential[1, 0, 0, 0] = float("nan")
    old_spec = dict(pool.specs[2])
    assert pool.write_back(idx, bad) == 1
    assert bool((pool.potential[0] == 1.0).all())  # the finite one was written
    assert pool.specs[2] != old_spec and not pool.potential[2].any()  # the other was reset
    assert torch.isfinite(pool.potential).all() and pool.rejected == 1
    for _ in range(6):
        pool.advance()
    assert pool.next_reset == 2  # two round-robin resets after 6 steps with reset_every=3


def test_pool_state_round_trip_continues_identically():
    physics = tiny_physics()
    model = small_model()

    def make():
        return FlowPool(3, lambda g: sample_spec(physics, g), lambda s: build_environment(physics, s),
                        model, reset_every=2, seed=9)

    a = make()
    for _ in range(3):
        a.advance()
    saved = a.state_dict()
    b = make()
    b.load_state_dict(saved)
    for pool in (a, b):
        for _ in range(4):
            pool.advance()
    assert a.specs == b.specs and a.next_reset == b.next_reset
    torch.testing.assert_close(a.potential, b.potential)
    corrupt = dict(saved, potential=saved["potential"].clone().fill_(float("inf")))
    with pytest.raises(ValueError, match="non-finite"):
        b.load_state_dict(corrupt)


def test_held_out_specs_are_outside_the_training_draws():
    physics = tiny_physics()
    gen = torch.Generator().manual_seed(0)
    drawn = [sample_spec(physics, gen) for _ in range(200)]
    for kind in ("cylinder", "box"):
        spec = held_out_spec(physics, kind)
        assert spec not in drawn
        build_environment(physics, spec)


TINY = ["physics.length=16", "physics.height=8", "pool.size=4", "net.hidden=4", "net.levels=2",
        "data.validation=2", "data.validation_steps=2", "train.steps_per_epoch=3", "train.batch_size=2"]


def test_flow_training_runs_and_resumes_exactly(tmp_path):
    full = runner.train_run("flow-2d", overrides=TINY + ["train.epochs=3"], out=tmp_path / "full", progress=False)
    assert full["schedule"] == "none" and full["epochs"] == 3
    first = runner.train_run("flow-2d", overrides=TINY + ["train.epochs=2"], out=tmp_path / "part", progress=False)
    # continue the same run for one more epoch: the override extends it (and is recorded)
    resumed = runner.train_run("flow-2d", overrides=["train.epochs=3"], out=tmp_path / "part", resume=True,
                               progress=False)
    import yaml

    assert yaml.safe_load((tmp_path / "part" / "config.yaml").read_text())["config"]["train"]["epochs"] == 3
    assert first["epochs"] == 2 and resumed["epochs"] == 3
    assert resumed["final_val_metric"] == full["final_val_metric"]
    header = (tmp_path / "full" / "metrics.csv").read_text().splitlines()[0]
    assert "val_momentum_abs" in header and "val_boundary_abs" in header


def test_flow_experiments_refuse_budget_schedules(tmp_path):
    from pdeaccel.config import ConfigError

    with pytest.raises(ConfigError, match="no linear solver"):
        runner.train_run("flow-2d", schedule="prdp", overrides=TINY, out=tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="no linear solver"):
        runner.compare("flow-2d", seeds=1, overrides=TINY, out=tmp_path / "y", progress=False)
    with pytest.raises(ConfigError, match="net.levels"):
        runner.train_run("flow-2d", overrides=TINY + ["net.levels=4"], out=tmp_path / "z", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_flow_3d_experiment_trains(tmp_path):
    """flow-3d through the trainer at toy size, judged by what a broken run would not show: every
    optimiser step moved the weights and advanced the pool, the validation rollout's velocity is a
    curl (divergence at round-off), and the logged validation terms are finite and non-trivial."""
    from pdeaccel.train import io
    from pdeaccel.train.report import read_metrics

    over = ["physics.length=12", "physics.height=8", "pool.size=2", "net.hidden=4", "net.levels=2",
            "data.validation=1", "data.validation_steps=1", "train.steps_per_epoch=2", "train.batch_size=2",
            "train.epochs=2"]
    s = runner.train_run("flow-3d", overrides=over, out=tmp_path / "r", progress=False)
    rows = read_metrics(tmp_path / "r")
    assert s["epochs"] == len(rows) == 2 and s["final_val_metric"] == rows[-1]["val_metric"]
    for r in rows:
        assert r["val_divergence_abs"] < 1e-9
        assert 0 < r["val_momentum_abs"] < 10 and 0 < r["val_boundary_abs"] < 10 and 0 < r["val_metric"] < 100
    first, second = (io.load_checkpoint(tmp_path / "r" / "checkpoints" / f"epoch_{e:05d}.ckpt")["task"]
                     for e in (1, 2))
    assert first["pool"]["steps"] == 2 and second["pool"]["steps"] == 4  # 2 optimiser steps an epoch
    moved = [name for name, w in second["net"].items()
             if w.is_floating_point() and not torch.equal(w, first["net"][name])]
    assert len(moved) >= len([w for w in second["net"].values() if w.is_floating_point()]) // 2


def test_shedding_frequency_of_a_known_signal():
    from pdeaccel.experiments.flow_eval import shedding_frequency

    dt, f0 = 4.0, 0.0173
    t = np.arange(400) * dt
    rng = np.random.default_rng(0)
    signal = 0.3 * np.sin(2 * np.pi * f0 * t + 0.4) + 0.02 * rng.standard_normal(t.size) - 0.1 * np.exp(-t / 50)
    f, share = shedding_frequency(list(signal), dt, discard=50)
    assert f == pytest.approx(f0, rel=0.01) and share > 0.8
    assert math.isnan(shedding_frequency([0.0] * 5, dt)[0])  # too short to tell


def test_simulate_a_trained_model_writes_the_run_directory(tmp_path):
    from pdeaccel.cli import main
    from pdeaccel.experiments.flow_eval import simulate_trained

    runner.train_run("flow-2d", overrides=TINY + ["train.epochs=1"], out=tmp_path / "model", progress=False)
    report = simulate_trained(tmp_path / "model", "box", steps=6, out=tmp_path / "sim", progress=False)
    assert report["stable"] and report["max_divergence"] < 1e-5
    for name in ("trajectory.h5", "final.png", "animation.gif", "report.md", "report.json"):
        assert (tmp_path / "sim" / name).stat().st_size > 0
    mask = np.ones((12, 8))
    mask[4:6, 3:5] = 0
    np.save(tmp_path / "mask.npy", mask)
    assert main(["simulate", "--model", str(tmp_path / "model"), "--env", str(tmp_path / "mask.npy"),
                 "--steps", "3", "--no-animation", "--quiet", "--out", str(tmp_path / "sim2")]) == 0
    assert main(["simulate", "--model", str(tmp_path / "model"), "--env", "triangle",
                 "--out", str(tmp_path / "sim3")]) == 2
    assert not (tmp_path / "sim3").exists()
    # --mirror steps the same weights mirror-equivariantly: on a held-out box it is another trajectory
    mirrored = simulate_trained(tmp_path / "model", "box", steps=6, out=tmp_path / "sim4", progress=False, mirror=True)
    assert mirrored["mirror"] is True and report["mirror"] is False and mirrored["stable"]
    import h5py

    with h5py.File(tmp_path / "sim" / "trajectory.h5") as a, h5py.File(tmp_path / "sim4" / "trajectory.h5") as b:
        key = next(k for k in a if isinstance(a[k], h5py.Dataset) and a[k].ndim >= 3)
        assert not np.array_equal(a[key][()], b[key][()])
    assert main(["simulate", "--mirror", "--out", str(tmp_path / "sim5")]) == 2  # needs --model


def test_loss_optimal_step_keeps_the_steady_poiseuille_flow():
    from pdeaccel.experiments.flow_eval import loss_optimal_steps, potential_of, velocity_error

    env, a, p, _ = discrete_poiseuille_env()
    u = velocity_from_potential(a, env.grid)
    torch.testing.assert_close(potential_of(u, env), a)
    (u1,) = loss_optimal_steps(env, u, 1, pressure=p, advection="upwind3", max_iter=30, restarts=1)
    assert velocity_error(u1, u, env) < 1e-6


@pytest.mark.parametrize("name", ["flow-2d", "flow-3d"])
def test_paper_size_configurations_are_valid(name):
    from pdeaccel.experiments.flow import build_model, validate_flow
    from pdeaccel.experiments.registry import get_experiment
    from pdeaccel.nets import count_parameters

    cfg = get_experiment(name).config("paper")
    validate_flow(cfg)
    p = cfg["physics"]
    assert (p["length"], p["height"]) == ((300, 100) if name == "flow-2d" else (128, 64))
    n = count_parameters(build_model(cfg))
    if name == "flow-2d":  # the paper's U-Net: 4 levels, width 20, ≈1.7M parameters
        assert 1.6e6 < n < 1.8e6


def test_warm_start_from_another_flow_run(tmp_path):
    from pdeaccel.config import ConfigError
    from pdeaccel.experiments.flow import build_flow
    from pdeaccel.experiments.flow_eval import load_flow_model

    runner.train_run("flow-2d", overrides=TINY + ["train.epochs=1"], out=tmp_path / "first", progress=False)
    trained, _, _ = load_flow_model(tmp_path / "first")
    cfg = runner.resolve_config("flow-2d", overrides=TINY + [f"net.init_from={tmp_path / 'first'}"])
    started = build_flow(cfg).task.net
    for a, b in zip(trained.state_dict().values(), started.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="net.init_from"):
        runner.train_run("flow-2d", overrides=TINY + [f"net.init_from={tmp_path / 'nowhere'}"],
                         out=tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="does not match"):
        build_flow(runner.resolve_config("flow-2d", overrides=TINY + ["net.hidden=6", f"net.init_from={tmp_path / 'first'}"]))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("ndim", [2, 3])
def test_pool_perturbation_is_divergence_free_and_leaves_every_prescribed_face(ndim):
    from pdeaccel.neural_flow import random_potential_perturbation
    from pdeaccel.stencils import mac_divergence

    physics = tiny_physics() if ndim == 2 else {**tiny_physics(), "ndim": 3, "length": 12,
                                                "obstacles": ["sphere"], "mu_range": [0.1, 0.1],
                                                "rho_range": [4.0, 4.0]}
    gen = torch.Generator().manual_seed(3)
    env = build_environment(physics, sample_spec(physics, gen), dtype=torch.float64)
    delta = random_potential_perturbation(env, 0.4, gen)
    u = velocity_from_potential(delta, env.grid)
    assert max(float(c.abs().max()) for c in u) == pytest.approx(0.4)
    for c, prescribed in zip(u, env.face_mask):  # walls, obstacle, in- and outflow untouched
        assert float((c * prescribed).abs().max()) == 0.0
    assert float(mac_divergence(u, env.grid).abs().max()) < 1e-14
    assert float((u[0] * env.face_free[0]).abs().max()) > 0.1  # it does perturb the fluid


def test_pool_perturbs_random_states_and_resumes_them_identically():
    from pdeaccel.neural_flow import random_potential_perturbation

    physics = tiny_physics()
    model = small_model()

    def make():
        return FlowPool(3, lambda g: sample_spec(physics, g), lambda s: build_environment(physics, s),
                        model, reset_every=0, seed=2, perturb_every=2,
                        perturb=lambda spec, env, g: random_potential_perturbation(env, 0.2 * spec["inflow"], g))

    a = make()
    for _ in range(3):
        a.advance()
    assert a.perturbed == 1 and a.potential.abs().max() > 0
    b = make()
    b.load_state_dict(a.state_dict())
    for pool in (a, b):
        for _ in range(4):
            pool.advance()
    assert a.perturbed == b.perturbed == 3
    torch.testing.assert_close(a.potential, b.potential)
    with pytest.raises(ValueError, match="perturb function"):
        FlowPool(2, lambda g: sample_spec(physics, g), lambda s: build_environment(physics, s),
                 model, reset_every=0, perturb_every=1)


def test_moving_obstacles_bounce_inside_their_region_and_move_with_the_pool():
    from pdeaccel.experiments.flow import _moving_bounds, move_spec

    physics = {**tiny_physics(), "height": 12, "obstacles": ["moving"], "move_max": 0.5}
    spec = {"kind": "moving", "inflow": 1.0, "center": [6.0, 6.0], "radius": 1.2, "velocity": [0.3, 0.4]}
    xs, ys, vys = [], [], []
    for _ in range(40):
        spec = move_spec(physics, spec)
        xs.append(spec["center"][0]), ys.append(spec["center"][1]), vys.append(spec["velocity"][1])
    (lo_x, hi_x), (lo_y, hi_y) = (_moving_bounds(physics, spec["radius"], a) for a in range(2))
    assert lo_y >= spec["radius"] + 2 and hi_y <= physics["height"] - spec["radius"] - 2  # clear of the walls
    assert lo_x <= min(xs) and max(xs) <= hi_x and lo_y <= min(ys) and max(ys) <= hi_y
    assert max(ys) - min(ys) > 0.7 * (hi_y - lo_y) and min(vys) < 0 < max(vys)  # it travels back and forth
    env = build_environment(physics, spec)
    obstacle = env.obstacles[0][0]
    faces = env.face_velocity[1][0, 0][env.face_mask[1][0, 0] > 0]
    assert obstacle.moves and bool(torch.isclose(faces, torch.tensor(spec["velocity"][1], dtype=faces.dtype)).any())
    # in the pool, an environment moves one step per prediction written back
    model = small_model()
    pool = FlowPool(2, lambda g: sample_spec(physics, g), lambda s: build_environment(physics, s),
                    model, reset_every=0, seed=4, move=lambda s: move_spec(physics, s))
    before = [list(s["center"]) for s in pool.specs]
    fluid_before = pool.envs[0].fluid.clone()
    idx = torch.tensor([0])
    env, state = pool.batch(idx)
    pool.write_back(idx, model(state, env))
    assert pool.specs[0]["center"] != before[0] and pool.specs[1]["center"] == before[1]
    assert pool.envs[0].obstacles[0][0].center == tuple(pool.specs[0]["center"])
    for _ in range(5):
        env, state = pool.batch(idx)
        pool.write_back(idx, model(state, env))
    assert not torch.equal(pool.envs[0].fluid, fluid_before)  # the solid cells moved


def test_simulate_a_moving_obstacle_redraws_it_and_the_reference_follows(tmp_path):
    from pdeaccel.experiments.flow_eval import moving_environments, reference_rollout, simulate_trained

    runner.train_run("flow-2d", overrides=TINY + ["train.epochs=1"], out=tmp_path / "model", progress=False)
    report = simulate_trained(tmp_path / "model", "moving", steps=8, out=tmp_path / "sim", progress=False)
    assert report["stable"] and report["environment"]["kind"] == "moving"
    assert (tmp_path / "sim" / "animation.gif").stat().st_size > 0
    physics = tiny_physics()
    spec = held_out_spec(physics, "moving")
    env_at = moving_environments(physics, spec)
    env = env_at(0)
    ref = reference_rollout(env, 4, save_steps=[1, 4], env_at=env_at)
    assert not np.array_equal(ref.snapshot_solids[0], ref.snapshot_solids[1])  # the obstacle moved
    torch.testing.assert_close(torch.from_numpy(ref.snapshot_solids[1]), env_at(4).fluid[0, 0] == 0)
    from pdeaccel.stencils import mac_divergence

    assert float(mac_divergence(ref.snapshots[1], env.grid).abs().max()) < 1e-5  # mass conserved


@pytest.mark.parametrize("size", ["flow-2d", "flow-3d"])
def test_every_moving_obstacle_stays_a_valid_environment_along_its_path(size):
    from pdeaccel.experiments.flow import move_spec
    from pdeaccel.experiments.registry import get_experiment as get

    physics = {**get(size).sizes["cpu"]["physics"], "obstacles": ["moving"], "move_max": 1.0}
    gen = torch.Generator().manual_seed(11)
    for _ in range(12 if size == "flow-2d" else 6):
        spec = sample_spec(physics, gen)
        for _ in range(25):  # a wall-touching body would fail the environment's flux-balance check
            env = build_environment(physics, spec)
            assert float(env.net_prescribed_flux().abs().max()) < 1e-4
            spec = move_spec(physics, spec)


def test_velocity_error_is_the_relative_l2_difference_on_free_faces():
    """The benchmark's error column: 0 against itself, 1 for no flow, |c − 1| for a scaled copy; values on
    faces that are not free (walls, obstacle, inflow) do not count."""
    from pdeaccel.experiments.flow_eval import velocity_error

    env = build_environment(tiny_physics(), held_out_spec(tiny_physics(), "cylinder"))
    gen = torch.Generator().manual_seed(3)
    ref = tuple(torch.randn(f.shape, generator=gen, dtype=torch.float64) for f in env.face_free)
    assert velocity_error(ref, ref, env) == 0.0
    assert velocity_error(tuple(torch.zeros_like(c) for c in ref), ref, env) == pytest.approx(1.0, rel=1e-12)
    assert velocity_error(tuple(1.5 * c for c in ref), ref, env) == pytest.approx(0.5, rel=1e-12)
    off_free = tuple(c + 7.0 * (1 - f.double()) for c, f in zip(ref, env.face_free))
    assert velocity_error(off_free, ref, env) == 0.0


def test_flow_benchmark_script_writes_markdown_and_json(tmp_path, monkeypatch):
    """benchmarks/flow.py end to end at toy size: every table it promises is written, as markdown and the
    same numbers as JSON, and the numbers a toy model can be judged by are (stability, divergence at
    round-off, an error near 1 for a model that barely moves the fluid, consistent speed columns)."""
    import json
    bench = load_benchmark("flow")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(bench, "VORTICITY_STEP", 6)  # the figure's vorticity panels, at the last step here
    runner.train_run("flow-2d", overrides=TINY + ["train.epochs=1"], out=tmp_path / "model", progress=False)
    assert bench.main(["--model", str(tmp_path / "model"), "--steps", "6", "--large-batch", "2",
                       "--sustain-start", "2", "--sustain-steps", "2", "--scheme-steps", "0", "--quiet"]) == 0
    md = (tmp_path / "results" / "flow.md").read_text()
    data = json.loads((tmp_path / "results" / "flow.json").read_text())
    assert [d["kind"] for d in data["domains"]] == ["cylinder", "box", "moving"]
    assert data["trained_epochs"] == 1 and data["optimizer_steps"] == 3  # what the model's run did
    for d in data["domains"]:
        # the network's velocity is a curl: divergence at round-off over the whole rollout; bounded updates
        # keep a 6-step rollout finite and slow
        assert d["stable"] is True and d["first_unstable_step"] is None and d["divergence"] < 1e-8
        assert 0 < d["max_speed"] < 1.5 * d["spec"]["inflow"]
        # one epoch barely moves the fluid (max speed ~0.1 of the inflow): its relative L2 error against
        # the reference is close to 1, neither 0 (compared with itself) nor unnormalised
        assert sorted(d["error_vs_reference"]) == ["1", "6"]
        assert all(0.8 < e < 1.2 for e in d["error_vs_reference"].values())
        row = next(line for line in md.splitlines() if line.startswith(f"| {d['kind']} |"))
        assert f"| {bench.fmt(d['divergence'])} |" in row and f"6: {bench.fmt(d['error_vs_reference']['6'])}" in row
    for sp in data["speed"]:
        # steps per second count every sample of the batch
        assert sp["net_steps_per_second"] * sp["net_seconds_per_step"] == pytest.approx(sp["batch"])
        assert sp["reference_steps_per_second"] * sp["reference_seconds_per_step"] == pytest.approx(sp["batch"])
        assert sp["speedup"] == pytest.approx(sp["reference_seconds_per_step"] / sp["net_seconds_per_step"])
    assert "Does a developed wake survive?" in md and "wake amplitude" in md and "![flow](flow.png)" in md
    assert (tmp_path / "results" / "flow.png").stat().st_size > 0
    assert set(data["sustain"]["relative_std"]) == {"reference", "neural", "loss minimiser (no network)"}


def test_young_slots_are_reset_round_robin_among_themselves_and_resume_identically():
    physics = tiny_physics()
    model = small_model()

    def make():
        return FlowPool(6, lambda g: sample_spec(physics, g), lambda s: build_environment(physics, s),
                        model, reset_every=0, seed=3, young=2, young_reset_every=3)

    pool = make()
    pool.write_back(torch.arange(6), PotentialState(pool.potential + 1.0, pool.pressure + 1.0))
    for _ in range(3):
        pool.advance()
    # one young reset after 3 steps: slot 0 is back at rest, every other slot kept its state
    assert not pool.potential[0].any() and bool((pool.potential[1:] == 1.0).all())
    assert pool.age.tolist() == [0, 1, 1, 1, 1, 1]
    saved = pool.state_dict()
    other = make()
    other.load_state_dict(saved)
    for p in (pool, other):
        for _ in range(6):
            p.advance()
    # two more young resets: slot 1, then slot 0 again; the old slots were never reset
    assert pool.next_young == other.next_young == 1 and pool.specs == other.specs
    assert not pool.potential[:2].any() and bool((pool.potential[2:] == 1.0).all())
    with pytest.raises(ValueError, match="young"):
        FlowPool(2, lambda g: sample_spec(physics, g), lambda s: build_environment(physics, s), model,
                 reset_every=0, young=3, young_reset_every=1)
    with pytest.raises(ValueError, match="young_reset_every"):
        FlowPool(2, lambda g: sample_spec(physics, g), lambda s: build_environment(physics, s), model,
                 reset_every=0, young=1, young_reset_every=0)


def test_flow_learning_curve_trains_in_exact_segments_and_reports_each(tmp_path, monkeypatch):
    """benchmarks/flow_learning_curve.py at toy size: two segments of one run through the CLI (the second a
    --resume), one evaluated row each with the optimiser steps the run had, the targets judged, and a
    rerun of the same command skips what is done."""
    import json
    bench = load_benchmark("flow_learning_curve")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    run = tmp_path / "run"
    argv = ["--out", str(run), "--epochs", "2", "--every", "1", "--steps", "50", "--name", "curve", *TINY]
    assert bench.main(argv) == 0
    data = json.loads((tmp_path / "results" / "curve.json").read_text())
    assert [r["epochs"] for r in data["rows"]] == [1, 2]
    assert [r["optimizer_steps"] for r in data["rows"]] == [3, 6]  # TINY: 3 steps per epoch
    assert bench.done_epochs(run) == 2
    for r in data["rows"]:
        for kind in ("cylinder", "box"):
            d = r["domains"][kind]
            # a toy model barely moves the fluid: an error near 1 at t = 50
            assert d["stable"] and 0.8 < d["error_t50"] < 1.2
            assert 0.8 < d["error_t50"] < 1.2
    md = (tmp_path / "results" / "curve.md").read_text()
    assert "| 6 |" in md and "too few points for a trend" in md and (tmp_path / "results" / "curve.png").stat().st_size
    monkeypatch.setattr(bench, "train_to", lambda *a: pytest.fail("a finished segment was trained again"))
    assert bench.main(argv) == 0


def test_learning_curve_trend_extrapolates_a_log_linear_metric_to_its_target():
    bench = load_benchmark("flow_learning_curve")

    def rows(values):
        return [{"optimizer_steps": 10 ** (3 + i), "domains": {"box": {"amplitude_ratio": v, "error_t50": 0.3}}}
                for i, v in enumerate(values)]

    # amplitude 0.1 higher per decade, 0.6 at 1e7 steps: reaches 0.7 at 1e8; the first half of the points is ignored
    t = bench.trend(rows([0.9, 0.0, 0.4, 0.5, 0.6]), "box", "amplitude_ratio")
    assert t["slope_per_decade"] == pytest.approx(0.1) and t["steps_to_target"] == pytest.approx(1e8, rel=1e-6)
    assert bench.trend(rows([0.9, 0.0, 0.6, 0.5, 0.4]), "box", "amplitude_ratio")["steps_to_target"] is None
    assert bench.trend(rows([0.9, 0.0, 0.7, 0.8, 0.9]), "box", "amplitude_ratio")["met_now"] is True
    flat = bench.trend(rows([0.3] * 5), "box", "error_t50")
    assert flat["steps_to_target"] is None and not flat["met_now"]


def _mirrored_spec(spec: dict, height: float) -> dict:
    """The environment description reflected in y → H − y, built from the geometry (not by flipping arrays)."""
    out = dict(spec, center=[spec["center"][0], height - spec["center"][1]])
    if "omega" in spec:
        out["omega"] = -spec["omega"]  # a reflection reverses the sense of rotation
    return out


@pytest.mark.parametrize("kind", ["box", "magnus"])
def test_mirror_step_is_exactly_equivariant_under_the_channel_reflection(kind):
    physics = dict(tiny_physics(), obstacles=[kind])
    spec = sample_spec(physics, torch.Generator().manual_seed(3))
    env = build_environment(physics, spec)
    env_m = build_environment(physics, _mirrored_spec(spec, physics["height"]))
    assert torch.equal(env_m.fluid, torch.flip(env.fluid, dims=[-1]))  # the rasterisation is reflection-exact
    torch.manual_seed(0)
    model = NeuralFlowSolver(2, hidden=4, levels=2, potential_scale=2.0, potential_bound=5.0, pressure_bound=3.0,
                             mirror=True)
    plain = NeuralFlowSolver(2, hidden=4, levels=2, potential_scale=2.0, potential_bound=5.0, pressure_bound=3.0)
    plain.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    state = model.initial_state(env)
    state = PotentialState(torch.randn(state.potential.shape, generator=gen) * potential_mask(env.grid),
                           torch.randn(state.pressure.shape, generator=gen) * env.fluid)
    flip = lambda t: torch.flip(t, dims=[-1])  # noqa: E731
    mirrored = PotentialState(-flip(state.potential), flip(state.pressure))
    with torch.no_grad():
        new, new_m = model(state, env), model(mirrored, env_m)
        # F(M s, M env) = M F(s, env): stream function odd, pressure even
        torch.testing.assert_close(new_m.potential, -flip(new.potential), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(new_m.pressure, flip(new.pressure), atol=1e-6, rtol=1e-5)
        # the plain network with the same weights is not equivariant (so the check above can fail)
        a, b = plain(state, env), plain(mirrored, env_m)
        assert float((b.potential + flip(a.potential)).abs().max()) > 1e-3
        # and the mirror step is the mean of the plain step and its mirror image
        torch.testing.assert_close(new.potential, 0.5 * (a.potential - flip(b.potential)), atol=1e-6, rtol=1e-5)


def test_mirror_option_is_2d_vanilla_only_and_read_from_the_config():
    with pytest.raises(ValueError, match="2D only"):
        NeuralFlowSolver(3, hidden=4, levels=2, mirror=True)
    cfg = runner.resolve_config("flow-2d", overrides=["model.mirror=true"])
    from pdeaccel.experiments.flow import build_model

    assert build_model(cfg).mirror is True and build_model(runner.resolve_config("flow-2d")).mirror is False
    from pdeaccel.config import ConfigError

    from pdeaccel.experiments.flow import build_flow

    for bad in (["model.mirror=true", "model.kind=staggered", "model.stride=2"], ["model.mirror=2"]):
        with pytest.raises((ConfigError, ValueError), match="model.mirror"):
            build_flow(runner.resolve_config("flow-2d", overrides=TINY + bad))


def test_a_run_written_before_a_config_key_existed_resumes_with_the_old_behaviour(tmp_path):
    import yaml

    run = tmp_path / "run"
    runner.train_run("flow-2d", overrides=TINY + ["train.epochs=1"], out=run, progress=False)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    del stored["config"]["model"]["mirror"]
    del stored["config"]["pool"]["young"], stored["config"]["pool"]["young_reset_every"]
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    runner.train_run("flow-2d", overrides=["train.epochs=2"], out=run, resume=True, progress=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())["config"]
    assert cfg["model"]["mirror"] is False and cfg["pool"]["young"] == 0 and cfg["train"]["epochs"] == 2
    # a key that is not a known addition is still refused as missing
    del cfg["loss"]["beta"]
    (run / "config.yaml").write_text(yaml.safe_dump({**stored, "config": cfg}))
    from pdeaccel.config import ConfigError

    with pytest.raises(ConfigError, match="loss.beta"):
        runner.train_run("flow-2d", overrides=["train.epochs=3"], out=run, resume=True, progress=False)


def test_learning_curve_accepts_a_later_point_only_from_the_same_training(tmp_path):
    bench = load_benchmark("flow_learning_curve")
    header = "epoch,train_loss,val_metric\n"
    for name, rows in (("a", "1,0.5,0.1\n2,0.4,0.09\n"), ("b", "1,0.5,0.1\n2,0.4,0.09\n3,0.3,0.08\n"),
                       ("c", "1,0.5,0.1\n2,0.41,0.09\n3,0.3,0.08\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text(header + rows)
    bench.same_trajectory(tmp_path / "a", tmp_path / "b")  # b continues a
    with pytest.raises(SystemExit, match="differs"):
        bench.same_trajectory(tmp_path / "a", tmp_path / "c")


def test_flow_recipes_benchmark_charges_a_fine_tuned_recipe_its_whole_budget(tmp_path, monkeypatch):
    import json
    bench = load_benchmark("flow_recipes")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    runner.train_run("flow-2d", overrides=TINY + ["train.epochs=1"], out=tmp_path / "base", progress=False)
    runner.train_run("flow-2d", overrides=TINY + ["train.epochs=2", "model.mirror=true",
                                                  f"net.init_from={tmp_path / 'base'}"],
                     out=tmp_path / "tuned", progress=False)
    steps, seconds, chain = bench.budget(tmp_path / "tuned")
    assert steps == 3 + 6 and chain == [str(tmp_path / "tuned"), str(tmp_path / "base")] and seconds > 0
    assert bench.main([f"base={tmp_path / 'base'}", f"tuned={tmp_path / 'tuned'}", f"sym={tmp_path / 'base'}+mirror",
                       "--steps", "50"]) == 0
    data = json.loads((tmp_path / "results" / "flow_recipes.json").read_text())
    assert [r["label"] for r in data["rows"]] == ["base", "tuned", "sym"] and data["rows"][1]["optimizer_steps"] == 9
    # the same network stepped mirror-equivariantly at inference gives other numbers (so the flag took effect)
    assert data["rows"][2]["mirrored_at_inference"] and not data["rows"][0]["mirrored_at_inference"]
    assert data["rows"][2]["domains"]["box"]["error_t50"] != data["rows"][0]["domains"]["box"]["error_t50"]
    assert "model.mirror=True" in data["rows"][1]["command"]
    md = (tmp_path / "results" / "flow_recipes.md").read_text()
    assert "| tuned |" in md and "| 9 |" in md
    with pytest.raises(SystemExit):
        bench.main(["no-label-here"])


def test_mirror_cost_benchmark_times_both_steps_side_by_side(tmp_path, monkeypatch):
    import json
    bench = load_benchmark("flow_mirror_cost")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    runner.train_run("flow-2d", overrides=TINY + ["train.epochs=1"], out=tmp_path / "model", progress=False)
    assert bench.main(["--model", str(tmp_path / "model"), "--batches", "1,2", "--steps", "2", "--repeats", "2"]) == 0
    data = json.loads((tmp_path / "results" / "flow_mirror_cost.json").read_text())
    assert [r["batch"] for r in data["rows"]] == [1, 2]
    for r in data["rows"]:
        assert r["ratio"] == pytest.approx(r["mirror_seconds_per_step"] / r["plain_seconds_per_step"])
    assert "| 2 |" in (tmp_path / "results" / "flow_mirror_cost.md").read_text()
