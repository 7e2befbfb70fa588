"""Flow control (pdeaccel.control, pdeaccel.experiments.control, `pdeaccel control`): the
differentiable frequency estimate, the controlled environment, gradients through the numerical
and the learned solvers (checkpointed and not, against finite differences), NeuralStagger at a
coarser resolution, the optimiser on a toy problem, and the command. Tiny sizes throughout."""

from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch

from pdeaccel.cli import main
from pdeaccel.control import (ControlledEnvironment, ControlSettings, LearnedSimulator, NumericalSimulator, Probe,
                              evaluate, optimise, simulate, spectral_frequency)
from pdeaccel.experiments.control import build_problem, control_target, get_problem
from pdeaccel.experiments.flow import build_environment
from pdeaccel.experiments.flow_eval import probe_window
from pdeaccel.neural_flow import NeuralFlowSolver
from pdeaccel.stagger import StaggeredFlowSolver

PHYSICS = {"ndim": 2, "length": 24, "height": 12, "mu": 0.1, "rho": 4.0, "dt": 1.0}
BOX = {"kind": "box", "center": [6.0, 6.24], "size": [3.0, 3.0]}
MAGNUS = {"kind": "magnus", "center": [6.0, 6.24], "radius": 2.0}


@pytest.fixture(autouse=True)
def _quiet():
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")
        yield


def _sine(f, n=200, dt=1.0, phase=0.3, harmonic=0.0, offset=0.0):
    t = torch.arange(n, dtype=torch.float64) * dt
    return torch.sin(2 * math.pi * f * t + phase) + harmonic * torch.sin(4 * math.pi * f * t + 2 * phase) + offset


def _box_env(values=None):
    values = values or {}
    spec = {**BOX, "inflow": values.get("inflow_scale", 1.0)}
    return build_environment(PHYSICS, spec, dtype=torch.float64)


def _box_problem():
    cenv = ControlledEnvironment.from_builder(_box_env, {"inflow_scale": 0.8}, bounds={"inflow_scale": (0.2, 1.2)})
    c, size = BOX["center"], BOX["size"][0]
    return cenv, Probe(c[0] + size, c[0] + 3 * size, c[1] - size, c[1] + size)


# ------------------------------------------------------------------------------ frequency estimate
@pytest.mark.parametrize("f", [0.017, 0.02, 0.0275, 0.041, 0.11])
@pytest.mark.parametrize("phase", [0.0, 1.1, 2.9])
def test_spectral_frequency_recovers_sines(f, phase):
    n = 200
    # a sinusoid with a harmonic and an offset: exact within a small fraction of the resolution 1/N
    # once three periods fit in the signal
    est = float(spectral_frequency(_sine(f, n, phase=phase, harmonic=0.3, offset=0.5), 1.0))
    assert abs(est - f) < 0.05 / n
    # and within the resolution with fewer periods
    short = float(spectral_frequency(_sine(f, 100, phase=phase), 1.0))
    assert abs(short - f) < 1.0 / 100


def test_spectral_frequency_batched_and_sample_spacing():
    fs = [0.02, 0.05, 0.08]
    x = torch.stack([_sine(f, 400, dt=0.5) for f in fs])  # 200 time units: 4 periods and more
    est = spectral_frequency(x, 0.5)
    assert est.shape == (3,)
    assert torch.allclose(est, torch.tensor(fs, dtype=torch.float64), atol=0.05 / (400 * 0.5))


def test_spectral_frequency_gradient_follows_the_frequency():
    for f0 in (0.021, 0.033, 0.06):
        f = torch.tensor(f0, dtype=torch.float64, requires_grad=True)
        t = torch.arange(150, dtype=torch.float64)
        est = spectral_frequency(torch.sin(2 * math.pi * f * t + 0.7), 1.0)
        (grad,) = torch.autograd.grad(est, f)
        assert 0.9 < float(grad) < 1.1  # a shifted sinusoid moves the estimate with it


def test_spectral_frequency_gradcheck():
    gen = torch.Generator().manual_seed(0)
    x = (_sine(0.07, 64) + 0.1 * torch.randn(64, generator=gen, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: spectral_frequency(s, 1.0), (x,), eps=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------ environment and probe
def test_controlled_environment_is_the_builders_environment():
    cenv, _ = _box_problem()
    for s in (0.35, 1.1):
        env, ref = cenv({"inflow_scale": s}), _box_env({"inflow_scale": s})
        for a, b in zip(env.face_velocity, ref.face_velocity):
            assert torch.allclose(a, b, atol=1e-12)
        assert torch.equal(env.fluid, ref.fluid)
    # a spinning cylinder: affine in the rotation too
    def build(v):
        return build_environment(PHYSICS, {**MAGNUS, "inflow": 1.0, "omega": v["rotation"] / 2.0}, dtype=torch.float64)

    cm = ControlledEnvironment.from_builder(build, {"rotation": 0.0})
    for a, b in zip(cm({"rotation": 0.7}).face_velocity, build({"rotation": 0.7}).face_velocity):
        assert torch.allclose(a, b, atol=1e-12)


def test_controlled_environment_refuses_a_non_affine_builder():
    with pytest.raises(ValueError, match="not affine"):
        ControlledEnvironment.from_builder(lambda v: _box_env({"inflow_scale": v["inflow_scale"] ** 2}),
                                           {"inflow_scale": 0.8})


def test_probe_is_the_flow_benchmarks_probe_window():
    cenv, probe = _box_problem()
    env = cenv({"inflow_scale": 1.0})
    assert torch.equal(probe.mask(env)[0, 0], probe_window(env))
    # on a grid coarsened by 1 the coarse mask is the same window
    assert torch.equal(probe.coarse_mask(env, 1, env.grid), probe.mask(env))


# ------------------------------------------------------------------------------ gradients
def _window_objective(sim, cenv, probe, state0, value, calls, checkpoint_every=0):
    bound = sim.bind(cenv({"inflow_scale": value}), probe)
    state = state0 if state0 is not None else bound.rest()
    _, p = simulate(bound, state, calls, checkpoint_every=checkpoint_every)
    return (p ** 2).sum() + p.sum()


def test_numerical_solver_gradient_matches_finite_differences_with_and_without_checkpoints():
    cenv, probe = _box_problem()
    sim = NumericalSimulator(2)
    grads = []
    for ck in (0, 4):
        u = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(_window_objective(sim, cenv, probe, None, u, 10, ck), u)
        grads.append(float(g))
    eps = 1e-4
    with torch.no_grad():
        fd = (float(_window_objective(sim, cenv, probe, None, 0.9 + eps, 10))
              - float(_window_objective(sim, cenv, probe, None, 0.9 - eps, 10))) / (2 * eps)
    assert grads[0] == pytest.approx(grads[1], rel=1e-10)
    assert grads[0] == pytest.approx(fd, rel=1e-3)
    assert abs(fd) > 1e-6


def test_learned_solver_gradient_matches_finite_differences_with_and_without_checkpoints():
    torch.manual_seed(0)
    model = NeuralFlowSolver(2, hidden=4, levels=2, velocity_scale=1.0, potential_scale=3.0).double()
    for p in model.parameters():  # an untrained U-Net's output layer starts at zero: no flow at all
        torch.nn.init.normal_(p, std=0.1)
    cenv, probe = _box_problem()
    sim = LearnedSimulator(model)
    assert not any(p.requires_grad for p in model.parameters())  # only the controls get gradients
    with torch.no_grad():  # a warmed-up state, fixed: the window's gradient is truncated there
        bound = sim.bind(cenv({"inflow_scale": 0.9}), probe)
        state0, _ = simulate(bound, bound.rest(), 5)
    grads = []
    for ck in (0, 3):
        u = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(_window_objective(sim, cenv, probe, state0, u, 8, ck), u)
        grads.append(float(g))
    eps = 1e-5
    with torch.no_grad():
        fd = (float(_window_objective(sim, cenv, probe, state0, 0.9 + eps, 8))
              - float(_window_objective(sim, cenv, probe, state0, 0.9 - eps, 8))) / (2 * eps)
    assert grads[0] == pytest.approx(grads[1], rel=1e-10)
    assert grads[0] == pytest.approx(fd, rel=1e-4)
    assert abs(fd) > 1e-8


def test_neuralstagger_controls_at_a_coarser_resolution():
    torch.manual_seed(0)
    model = StaggeredFlowSolver(2, stride=2, window=2, hidden=4, levels=1, shared_weights=True,
                                potential_scale=3.0).double()
    for p in model.parameters():  # the zero-initialised output layer would predict no change at all
        torch.nn.init.normal_(p, std=0.1)
    cenv, probe = _box_problem()
    full = LearnedSimulator(model).bind(cenv({"inflow_scale": 0.9}), probe)
    assert (full.samples_per_call, full.sample_dt) == (2, 1.0)
    coarse_sim = LearnedSimulator(model, space=2, time=2)
    coarse = coarse_sim.bind(cenv({"inflow_scale": 0.9}), probe)
    assert (coarse.samples_per_call, coarse.sample_dt, coarse.count) == (1, 2.0, 1)  # one sub-solver alone
    assert float(coarse.mask.sum()) > 0
    u = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    bound = coarse_sim.bind(cenv({"inflow_scale": u}), probe)
    state, p = simulate(bound, bound.rest(), 8, checkpoint_every=2)
    assert p.shape == (1, 8)
    (g,) = torch.autograd.grad((p ** 2).sum() + p.sum(), u)
    assert math.isfinite(float(g)) and float(g) != 0.0
    u_snap, solid, h = bound.snapshot(state)
    assert u_snap[0].shape[2:] == (solid.shape[0] + 1, solid.shape[1]) and h == 2.0
    with pytest.raises(ValueError, match="NeuralStagger"):
        LearnedSimulator(NeuralFlowSolver(2, hidden=4, levels=1), space=2)


# ------------------------------------------------------------------------------ optimiser
class _ToyEnv:
    """Duck-typed controlled environment: the 'environment' is the control values themselves."""

    names = ("rate",)
    bounds = {"rate": (0.1, 3.0)}

    def __call__(self, controls):
        return dict(controls)


class _ToySim:
    """A 'flow' whose probe oscillates at f = 0.02·rate^1.1."""

    def bind(self, env, probe):
        rate = env["rate"]

        class B:
            samples_per_call, steps_per_call, sample_dt = 1, 1, 1.0

            def rest(self):
                return (torch.zeros(1, dtype=torch.float64),)

            def step(self, state):
                (t,) = state
                f = 0.02 * torch.as_tensor(rate, dtype=torch.float64) ** 1.1
                return (t + 1,), torch.sin(2 * math.pi * f * t + 0.4)[:, None]

        return B()


@pytest.mark.parametrize("target", [0.016, 0.025, 0.032])
def test_adam_reaches_the_target_frequency(target):
    settings = ControlSettings(warmup=7, window=160, iterations=10, tolerance=0.01)
    run = optimise(_ToySim(), _ToyEnv(), {"rate": 1.0}, target, None, settings)
    assert run.converged, run.history
    assert abs(run.best_frequency - target) <= 0.01 * target
    rate = run.best["rate"]
    assert abs(0.02 * rate ** 1.1 - target) < 0.03 * target
    assert all(h["gradient_seconds"] >= 0 for h in run.history)


def test_it_stops_on_a_bound_the_gradient_pushes_beyond():
    class Bounded(_ToyEnv):
        bounds = {"rate": (0.8, 3.0)}  # f(0.8) = 0.0157: the target 0.012 lies below the bound

    settings = ControlSettings(warmup=0, window=200, iterations=20, lr=0.5)
    run = optimise(_ToySim(), Bounded(), {"rate": 1.5}, 0.012, None, settings)
    assert run.stop_reason == "at a bound" and not run.converged
    assert run.history[-1]["control.rate"] == pytest.approx(0.8)
    assert len(run.history) < 20


def test_the_learning_rate_halves_where_the_frequency_crosses_the_target():
    settings = ControlSettings(warmup=0, window=160, iterations=8, tolerance=0.001, lr=0.3)
    run = optimise(_ToySim(), _ToyEnv(), {"rate": 1.0}, 0.027, None, settings)
    rows = run.history
    crossings = 0
    for prev, row in zip(rows, rows[1:]):
        crossed = (row["frequency"] > 0.027) != (prev["frequency"] > 0.027)
        crossings += crossed
        assert row["lr"] == pytest.approx(prev["lr"] * (0.5 if crossed else 1.0))
    assert crossings >= 1


# ------------------------------------------------------------------------------ problems and the command
def test_named_problems_build_at_both_sizes():
    for name in ("inflow", "magnus"):
        for size in ("cpu", "paper"):
            cfg = get_problem(name).config(size)
            if size == "paper":
                assert (cfg["physics"]["length"], cfg["physics"]["height"]) == (300, 100)
                assert (cfg["settings"]["warmup"], cfg["settings"]["window"]) == (500, 200)
            cenv, probe = build_problem(cfg)
            assert cenv.names == (cfg["control"]["name"],)
            assert float(probe.mask(cenv.base).sum()) > 0
    assert get_problem("inflow").config("paper")["obstacle"]["size"] == [10.0, 20.0]


TINY = ["physics.length=24", "physics.height=12", "obstacle.center=[6,6.24]", "obstacle.size=[3,3]",
        "settings.warmup=8", "settings.window=24", "settings.iterations=2", "numerical.substeps=2"]


def test_a_control_found_through_a_learned_model_is_re_simulated_by_the_numerical_solver():
    torch.manual_seed(0)
    model = NeuralFlowSolver(2, hidden=4, levels=2, potential_scale=3.0).double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    cenv, probe = _box_problem()
    settings = ControlSettings(warmup=4, window=20, iterations=1)
    verifier = NumericalSimulator(2)
    row = control_target(LearnedSimulator(model), verifier, cenv, probe, settings, 0.05, {"inflow_scale": 0.8}, 1.0,
                         progress=False)
    with torch.no_grad():
        ref = evaluate(verifier, cenv, row["best"], probe, settings)
    assert row["frequency_numerical"] == pytest.approx(float(ref.frequency), rel=1e-12)
    assert row["frequency_numerical"] != row["frequency_model"]
    assert row["error_numerical"] == pytest.approx((row["frequency_numerical"] - 0.05) / 0.05)
    assert np.allclose(row["_signals"]["numerical_best"], ref.signal)


def test_cli_control_lists_runs_and_writes_a_run_directory(tmp_path, capsys):
    assert main(["control"]) == 0
    assert "inflow" in capsys.readouterr().out
    assert main(["control", "magnus", "--show"]) == 0
    assert "rotation" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["control", "inflow", "--target", "0.06", "--out", str(out), "--quiet", *TINY]) == 0
    for name in ("config.yaml", "history.csv", "report.md", "report.json", "frequency.png", "spectra.png", "flow.png"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    (row,) = report["targets"]
    assert row["target"] == 0.06 and 1 <= row["iterations"] <= 2
    assert row["frequency_numerical"] == row["frequency_model"]  # the model is the numerical solver here
    assert "f re-simulated" in (out / "report.md").read_text()


def _untrained_run(tmp_path, length=24, height=12):
    """A flow-2d run directory with an untrained (zero-output: it never sheds) tiny vanilla model."""
    import yaml

    from pdeaccel.experiments.flow import _CPU_2D, build_model
    from pdeaccel.train import io

    cfg = copy.deepcopy(_CPU_2D)
    cfg["physics"].update({"length": length, "height": height})
    cfg["net"].update({"hidden": 4, "levels": 2})
    cfg.update({"experiment": "flow-2d", "size": "cpu"})
    run = tmp_path / "model"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"config": cfg}))
    io.save_checkpoint(run / "checkpoints" / "epoch_00000.ckpt", {"task": {"net": build_model(cfg).state_dict()},
                                                                   "epoch": 0})
    return run


def test_a_learned_model_that_does_not_shed_is_reported_and_not_optimised(tmp_path, capsys):
    run = _untrained_run(tmp_path)
    out = tmp_path / "out"
    assert main(["control", "inflow", "--model", str(run), "--out", str(out), "--quiet", *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    assert not report["initial_model"]["shedding"]
    for row in report["targets"]:
        assert "does not shed" in row["skipped"] and row["iterations"] == 0
    assert "does not shed" in (out / "report.md").read_text()
    # a model of another grid is refused, naming what differs
    assert main(["control", "inflow", "--model", str(run), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "trained for length=24" in capsys.readouterr().err


def test_cli_control_refuses_bad_arguments(tmp_path, capsys):
    assert main(["control", "nonsense"]) == 2
    assert main(["control", "inflow", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "a")]) == 2
    assert main(["control", "inflow", "--resolution", "2", "--out", str(tmp_path / "b")]) == 2
    assert main(["control", "inflow", "settings.windw=10", "--out", str(tmp_path / "c")]) == 2
    assert main(["control", "inflow", "--target", "0.7", "--out", str(tmp_path / "d")]) == 2  # above Nyquist
    err = capsys.readouterr().err
    assert "unknown control problem" in err and "Nyquist" in err and "settings.window" in err
