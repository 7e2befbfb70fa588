"""The paper's configuration (issue 16): paper-size configs, the zero initial guess, the
reference controller's history, the reference validation metrics, the LR schedules, the
interleaved comparison and the solver-share bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from pdeaccel.config import ConfigError
from pdeaccel.experiments import runner
from pdeaccel.experiments.registry import get_experiment
from pdeaccel.experiments.runner import compare, lr_factor, resolve_config, solver_share, train_run
from pdeaccel.nets import build_net, count_parameters
from pdeaccel.prdp import PRDPConfig, PRDPSchedule
from pdeaccel.train.budgets import Budgets
from pdeaccel.train.report import read_metrics
from pdeaccel.train.tasks import EmulatorTask, paper_correction_metric, paper_emulator_metric

TINY_1D = ["data.train=10", "data.validation=2", "train.epochs=3", "train.batch_size=5"]


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEACCEL_DATA", str(tmp_path / "data"))


# ------------------------------------------------------------------ the paper-size configs
def test_heat_paper_configs_hold_the_reference_code_values():
    h1 = resolve_config("heat-1d", "paper")
    assert h1["net"] == {**h1["net"], "name": "mlp", "width": 64, "depth": 3}
    assert h1["solver"]["initial_guess"] == "zero" and h1["solver"]["grad"] == "implicit"
    assert h1["solver"]["method"] == "jacobi"
    assert {k: h1["prdp"][k] for k in ("k0", "delta_k", "tau_step", "tau_stop", "ema_window", "lookback",
                                       "initial_checkpoint", "k_converged", "initial_validation")} == {
        "k0": 1, "delta_k": 1, "tau_step": 0.98, "tau_stop": 0.9, "ema_window": 8, "lookback": 3,
        "initial_checkpoint": 100.0, "k_converged": "25", "initial_validation": True}
    # optax.exponential_decay(1e-3, 100, 0.94), 100 epochs of batch 25 over 200 samples
    assert {k: h1["train"][k] for k in ("lr", "lr_decay", "lr_decay_every", "epochs", "batch_size", "optimizer")} == {
        "lr": 1e-3, "lr_decay": 0.94, "lr_decay_every": 100, "epochs": 100, "batch_size": 25, "optimizer": "adam"}
    assert h1["data"]["train"] == 200 and h1["data"]["validation"] == 5 and h1["data"]["generator"] == "paper"
    assert h1["validation"]["metric"] == "paper" and h1["physics"]["nu_dt"] == 0.001 and h1["physics"]["n"] == 30

    h2 = resolve_config("heat-2d", "paper")
    assert h2["net"]["width"] == 3000 and h2["net"]["depth"] == 3 and h2["solver"]["grad"] == "unrolled"
    assert h2["prdp"]["k_converged"] == "43" and h2["prdp"]["initial_checkpoint"] is None  # ck = initial error
    assert (h2["prdp"]["tau_step"], h2["prdp"]["ema_window"], h2["prdp"]["lookback"]) == (0.9, 6, 3)
    assert (h2["train"]["lr_decay"], h2["train"]["lr_decay_every"], h2["train"]["epochs"]) == (0.9, 100, 70)
    assert h2["solver"]["initial_guess"] == "zero" and h2["prdp"]["k0"] == h2["prdp"]["delta_k"] == 1
    mlp = build_net("mlp", in_features=900, out_features=900, width=3000, depth=3)
    assert count_parameters(mlp) == 23_409_900  # the paper's 23.4M

    for size in ("paper", "paper-cpu"):
        h3 = resolve_config("heat-3d", size)
        assert h3["physics"]["n"] == 32 and h3["prdp"]["k_converged"] == "29"
        assert h3["solver"]["initial_guess"] == "zero" and h3["prdp"]["k0"] == h3["prdp"]["delta_k"] == 1


def test_our_improvements_are_not_the_paper_rows():
    for name in ("heat-1d", "heat-2d", "heat-3d"):
        cpu = resolve_config(name, "cpu")
        assert cpu["solver"]["initial_guess"] == "prediction" and cpu["prdp"]["k_converged"] == "measured"
        assert cpu["prdp"]["k0"] == cpu["prdp"]["delta_k"] == 2
    b_paper, b_cpu = resolve_config("burgers-1d", "paper-cpu"), resolve_config("burgers-1d", "cpu")
    assert (b_paper["physics"]["dt"], b_paper["solver"]["restart"]) == (0.02, 2)
    assert (b_cpu["physics"]["dt"], b_cpu["solver"]["restart"]) == (0.05, 1)
    ns = resolve_config("ns-2d", "paper-cpu")
    assert ns["train"]["lr_schedule"] == "cosine" and ns["train"]["lr_final_fraction"] == 0.1
    assert ns["validation"]["metric"] == "paper" and ns["prdp"]["tau_step"] == 0.95
    assert ns["train"]["epochs"] == 60 and resolve_config("ns-2d", "paper")["train"]["epochs"] == 100
    assert resolve_config("ns-2d", "cpu")["train"]["lr_schedule"] == "exponential"
    assert resolve_config("ns-2d", "paper")["net"] == {"hidden": 64, "blocks": 3}


@pytest.mark.parametrize("name", ["heat-1d", "heat-2d", "heat-3d", "burgers-1d", "ns-2d", "poisson-inverse"])
def test_every_paper_size_lists_its_deviations(name):
    exp = get_experiment(name)
    for size in exp.sizes:
        if size.startswith("paper"):
            assert exp.deviations.get(size), f"{name} --size {size} lists no deviations from the paper"


def test_experiments_command_prints_the_deviations(capsys):
    from pdeaccel.cli import main

    assert main(["experiments", "heat-3d", "--size", "paper-cpu"]) == 0
    out = capsys.readouterr().out
    assert "deviations from the paper at size paper-cpu" in out and "MLP" in out


@pytest.mark.parametrize("value", ["25x", "0", "-3", "converged"])
def test_k_converged_refuses_what_is_not_measured_or_a_positive_integer(value):
    with pytest.raises(ConfigError, match="prdp.k_converged"):
        train_run("heat-1d", size="paper", overrides=[f"prdp.k_converged={value}", *TINY_1D], out=None,
                  progress=False)


# ------------------------------------------------------------------ the zero initial guess
def _heat1d_matrix(n: int = 30, nu_dt: float = 0.001) -> sp.csr_matrix:
    h = 1.0 / (n + 1)
    lap = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n)) / h**2
    return (sp.identity(n) - nu_dt * lap).tocsr()


@pytest.mark.parametrize("k", [1, 2, 5])
def test_zero_initial_guess_makes_k_jacobi_sweeps_from_zero(k, tmp_path):
    cfg = resolve_config("heat-1d", "paper", TINY_1D)
    built = get_experiment("heat-1d").build(cfg)
    u = torch.randn(3, 1, 30, dtype=torch.float64)
    got = built.task.stepper(u, Budgets({"linear": k})).squeeze(1).numpy()  # the experiment's solver: Jacobi
    a = _heat1d_matrix()
    d = a.diagonal()
    x = np.zeros((3, 30))
    for _ in range(k):  # x ← D⁻¹ (b − (A − D) x), with b = uⁿ for implicit Euler
        x = (u.squeeze(1).numpy() - (a @ x.T).T + d * x) / d
    np.testing.assert_allclose(got, x, rtol=1e-12, atol=1e-12)
    if k == 1:  # one sweep from zero is D⁻¹ b, whatever the prediction was
        np.testing.assert_allclose(got, u.squeeze(1).numpy() / (1 + 2 * 0.001 * 31**2), rtol=1e-12)


def test_zero_initial_guess_converges_to_the_direct_solve_and_differs_from_the_warm_start():
    paper = get_experiment("heat-1d").build(resolve_config("heat-1d", "paper", TINY_1D))
    ours = get_experiment("heat-1d").build(resolve_config("heat-1d", "cpu", TINY_1D))
    u = torch.randn(2, 1, 30, dtype=torch.float64)
    exact = spla.spsolve(_heat1d_matrix().tocsc(), u.squeeze(1).numpy().T).T
    many, one = Budgets({"linear": 200}), Budgets({"linear": 1})  # K Jacobi sweeps, the experiments' solver
    np.testing.assert_allclose(paper.task.stepper(u, many).squeeze(1).numpy(), exact, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(paper.task.stepper(u, one), ours.task.stepper(u, one))
    # K_ε measured from zero is near the paper's 25; from the prediction it is fewer
    assert 22 <= paper.k_converged <= 30 and ours.k_converged < paper.k_converged


def test_fixed_k_converged_is_what_the_converged_arm_runs(tmp_path):
    out = tmp_path / "conv"
    s = train_run("heat-1d", size="paper", schedule="converged", overrides=TINY_1D, out=out, progress=False)
    assert s["k_converged"] == 25 and s["k_converged_measured"] != 25
    assert [r["k"] for r in read_metrics(out)] == [25, 25, 25]
    assert s["forward_iters"] == 25 * 3 * 2  # 2 optimiser steps per epoch, K = 25 each


# ------------------------------------------------------------------ the reference controller's history
def _reference_should_refine(errors, tau_step, tau_stop, window, lookback, state):
    """The reference code's ``should_refine`` (experiments/src/prdp.py), rewritten with a loop EMA."""
    if len(errors) <= lookback:
        return False
    alpha = 2 / (window + 1.0)
    ema = [errors[0]]
    for e in errors[1:]:
        ema.append((1 - alpha) * ema[-1] + alpha * e)
    if ema[-1] / ema[-lookback] > tau_step:
        ratio = ema[-1] / state["ck"]
        if ratio < tau_stop or ratio > 1:
            state["ck"] = ema[-1]
            return True
    return False


@pytest.mark.parametrize("ck0", [100.0, None])
def test_initial_validation_reproduces_the_reference_controller(ck0):
    rng = np.random.default_rng(3)
    # plateaus of 10 epochs, each lower than the last, with noise
    t = np.arange(60)
    errors = 0.8 ** (t // 10) * (1 + np.exp(-(t % 10))) * np.exp(rng.normal(0, 0.02, size=60))
    initial = 1.7
    sched = PRDPSchedule(PRDPConfig(k0=1, delta_k=1, k_max=100, tau_step=0.98, tau_stop=0.9, ema_window=8,
                                    lookback=3, initial_checkpoint=ck0))
    sched.observe_initial(initial)
    state = {"ck": initial if ck0 is None else ck0}
    hist, k_ref, ks = [initial], 1, []
    for epoch, e in enumerate(errors):
        ks.append(sched.budget)
        hist.append(float(e))
        if _reference_should_refine(hist, 0.98, 0.9, 8, 3, state):
            k_ref += 1
        sched.update(epoch, float(e))
        assert sched.budget == k_ref, f"epoch {epoch}"
    assert len(set(ks)) > 3  # the sequence exercises refinements
    # the untrained error heads the EMA (and is ck when initial_checkpoint is None)
    plain = PRDPSchedule(PRDPConfig(k0=1, delta_k=1, k_max=100, tau_step=0.98, tau_stop=0.9, ema_window=8,
                                    lookback=3, initial_checkpoint=ck0))
    plain.update(0, float(errors[0]))
    assert sched.ema[0] == initial and sched.ema[1] != plain.ema[0]
    assert sched.trace[0]["checkpoint"] == (initial if ck0 is None else ck0)


def test_observe_initial_only_before_the_first_epoch():
    sched = PRDPSchedule(PRDPConfig())
    sched.update(0, 1.0)
    with pytest.raises(ValueError, match="before the first update"):
        sched.observe_initial(2.0)


# ------------------------------------------------------------------ the reference validation metrics
def test_paper_emulator_metric_is_the_reference_val_loss_by_hand():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 3, 1, 7))  # u0, u1, u2
    pred = rng.normal(size=(4, 2, 1, 7))  # û1, û2
    by_hand = np.mean([np.sum((pred[i, 1] - ref[i, 2]) ** 2) / np.sum(ref[i, 1] ** 2) for i in range(4)])
    got = float(paper_emulator_metric(torch.from_numpy(pred), torch.from_numpy(ref)))
    assert got == pytest.approx(by_hand, rel=1e-12)
    # the task computes it from the network's own rollout
    net = torch.nn.Identity()
    task = EmulatorTask(net, lambda u, s: u, torch.from_numpy(rng.normal(size=(2, 3, 1, 7))), torch.from_numpy(ref),
                        batch_size=1, metric="paper")
    rollout = np.repeat(ref[:, :1], 2, axis=1)  # the identity keeps u0
    expected = np.mean([np.sum((ref[i, 0] - ref[i, 2]) ** 2) / np.sum(ref[i, 1] ** 2) for i in range(4)])
    assert task.validate(Budgets({"linear": None})) == pytest.approx(expected, rel=1e-12)
    assert float(paper_emulator_metric(torch.from_numpy(rollout), torch.from_numpy(ref))) == pytest.approx(expected)
    ours = EmulatorTask(net, lambda u, s: u, torch.from_numpy(ref), torch.from_numpy(ref), batch_size=1)
    assert ours.validate(Budgets({"linear": None})) != pytest.approx(expected)


def test_paper_correction_metric_by_hand():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(3, 6, 2, 5, 5))
    pred = rng.normal(size=(3, 5, 2, 5, 5))
    by_hand = np.mean([np.sum((pred[i, -1, 0] - ref[i, -1, 0]) ** 2) / np.sum(ref[i, -1, 0] ** 2) for i in range(3)])
    assert float(paper_correction_metric(torch.from_numpy(pred), torch.from_numpy(ref))) == pytest.approx(by_hand)


def test_paper_data_generator_is_the_reference_fourier_series():
    from pdeaccel.experiments.emulator import paper_fourier
    from pdeaccel.grid import Grid

    gen = torch.Generator().manual_seed(5)
    u = paper_fourier(Grid(30, extent=1.0, boundary="dirichlet"), 4, 5, gen)
    gen = torch.Generator().manual_seed(5)
    a = torch.rand(4, 2, 5, generator=gen, dtype=torch.float64) * 2 - 1
    x = np.arange(1, 31) / 31
    for i in range(4):
        expect = sum(a[i, 0, m].item() * np.sin(2 * np.pi * (m + 1) * x) + a[i, 1, m].item()
                     * np.cos(2 * np.pi * (m + 1) * x) for m in range(5))
        np.testing.assert_allclose(u[i, 0].numpy(), expect, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ learning-rate schedules
def test_lr_decay_per_steps_follows_optax_exponential_decay(tmp_path):
    f = lr_factor({"lr_decay": 0.9, "lr_decay_every": 100, "epochs": 70}, steps=8)
    assert f(0) == 1.0 and f(25) == pytest.approx(0.9 ** 2)  # 200 steps = two decay periods
    assert lr_factor({"lr_decay": 0.9, "lr_decay_every": 0, "epochs": 70}, steps=8) is None  # trainer's per epoch
    cos = lr_factor({"lr_schedule": "cosine", "lr_final_fraction": 0.1, "lr_decay": 1.0, "epochs": 10}, steps=4)
    assert cos(0) == pytest.approx(1.0) and cos(5) == pytest.approx(0.55) and cos(10) == pytest.approx(0.1)
    out = tmp_path / "run"
    train_run("heat-1d", size="paper", schedule="prdp", overrides=TINY_1D, out=out, progress=False)
    lrs = [r["lr"] for r in read_metrics(out)]  # 2 steps per epoch: 0.94 per 100 steps
    np.testing.assert_allclose(lrs, [1e-3 * 0.94 ** (2 * e / 100) for e in range(3)], rtol=1e-6)


# ------------------------------------------------------------------ interleaved comparison, solver share
def test_compare_interleaves_the_two_arms(tmp_path, monkeypatch):
    order = []
    original = runner._PreparedRun.run_one_epoch

    def spy(self):
        order.append((self.schedule, self.trainer.epoch))
        original(self)

    monkeypatch.setattr(runner._PreparedRun, "run_one_epoch", spy)
    data = compare("heat-1d", seeds=1, size="paper", overrides=TINY_1D, out=tmp_path / "cmp", progress=False)
    assert order == [("converged", 0), ("prdp", 0), ("prdp", 1), ("converged", 1), ("converged", 2), ("prdp", 2)]
    for spec in ("converged", "prdp"):
        assert len(read_metrics(tmp_path / "cmp" / "seed0" / spec)) == 3
    seed = data["seeds"][0]
    assert seed["k_converged"] == 25 and data["k_converged_setting"] == "25"
    assert seed["solver_share"] is not None and 0 < seed["solver_share"] <= 1
    assert "interleaved" in (tmp_path / "cmp" / "report.md").read_text()


def test_solver_share_and_bound_of_an_exact_linear_cost():
    a, b, k_eps = 0.02, 0.003, 25

    def ledger(ks):
        return {"epochs": [{"k": k, "steps": 8, "train_seconds": 8 * (a + b * k)} for k in ks]}

    prdp_ks = [1, 1, 2, 2, 3, 4, 4, 4]
    r = solver_share(ledger(prdp_ks), ledger([k_eps] * 8), k_eps)
    assert r["solver_share"] == pytest.approx(b * k_eps / (a + b * k_eps))
    total = 1 - sum(prdp_ks) / (k_eps * len(prdp_ks))
    assert r["wall_bound"] == pytest.approx(r["solver_share"] * total)
    assert math.isclose(r["iteration_seconds"], b) and math.isclose(r["step_seconds_fixed"], a)
    assert solver_share(ledger([25]), ledger([25]), 25)["solver_share"] is None  # one K: no fit
