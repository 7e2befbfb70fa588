"""PRDP controller, baseline schedules, iteration ledger and savings report."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pdeaccel.linalg import LinearOperator, SolverConfig
from pdeaccel.prdp import (
    ConvergedSchedule, FixedSchedule, IterationLedger, LinearSchedule, PRDPConfig, PRDPSchedule,
    RefinementEvent, format_savings_markdown, make_schedule, savings_report, schedule_from_state_dict,
)


def feed(schedule, metrics, first_epoch=0):
    """Budgets K for the epoch after each update."""
    out = []
    for i, m in enumerate(metrics):
        schedule.update(first_epoch + i, m)
        out.append(schedule.budget)
    return out


def raw(**kw):
    """PRDP without smoothing, so the ratios are ratios of the metrics themselves."""
    return PRDPSchedule(PRDPConfig(ema_window=None, lookback=3, tau_step=0.98, tau_stop=0.9, **kw))


# ------------------------------------------------------------------ the controller's decisions

def test_holds_while_improving():
    s = raw(k0=4)
    budgets = feed(s, [0.5 ** i for i in range(30)])  # r = 0.25 every epoch
    assert budgets == [4] * 30
    assert s.events == []
    assert {t["action"] for t in s.trace[3:]} == {"improving"}


def test_refines_on_plateau_then_stops_for_lack_of_gain():
    s = raw(k0=1, delta_k=2)
    budgets = feed(s, [8.0, 4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # m[-δ] is δ−1 = 2 epochs back: epoch 4: r = 1/2 (improving); epoch 5: r = 1/1 > τ_step and
    # rc = 1/100 < τ_stop -> refine
    assert budgets == [1, 1, 1, 1, 1, 3, 3, 3]
    (event,) = s.events
    assert (event.epoch, event.old_k, event.new_k, event.reason) == (5, 1, 3, "plateau")
    assert event.ratio_step == pytest.approx(1.0) and event.ratio_checkpoint == pytest.approx(1 / 100)
    # epochs 6, 7: still flat, rc = 1/1 lies in [τ_stop, 1] -> K is enough (incomplete convergence)
    assert s.trace[-1]["action"] == "plateau, no gain"
    assert feed(s, [1.0] * 20, first_epoch=8) == [3] * 20


def test_refines_again_after_a_later_drop():
    s = raw(k0=1)
    feed(s, [8.0, 4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # refined once (K=2), then held
    assert s.budget == 2
    budgets = feed(s, [0.5, 0.5, 0.5, 0.5], first_epoch=8)
    # 0.5 / 1 = 0.5 while the window still holds 1.0; flat at epoch 10: rc = 0.5/1 < τ_stop
    assert budgets == [2, 2, 3, 3]
    assert s.events[-1].reason == "plateau" and s.events[-1].ratio_checkpoint == pytest.approx(0.5)


def test_refines_when_the_metric_got_worse():
    s = raw(k0=1)
    feed(s, [8.0, 4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    budgets = feed(s, [2.0, 2.0, 2.0, 2.0], first_epoch=8)
    # epoch 8: r = 2/1 > τ_step, rc = 2/1 > 1 -> refine and move the checkpoint to 2
    assert budgets == [3, 3, 3, 3]
    assert s.events[-1].reason == "worse" and s.events[-1].ratio_checkpoint == pytest.approx(2.0)
    assert s.checkpoint == pytest.approx(2.0)


@pytest.mark.parametrize("lookback", [2, 3, 5])
def test_first_lookback_epochs_keep_k(lookback):
    s = PRDPSchedule(PRDPConfig(ema_window=None, lookback=lookback, k0=3))
    budgets = feed(s, [1.0] * (lookback + 1))  # flat from the start, far below ck = 100
    assert budgets == [3] * lookback + [4]


def test_schedule_says_which_metric_to_feed():
    assert PRDPSchedule(PRDPConfig(metric="train_loss")).metric == "train_loss"
    assert PRDPSchedule().metric == "validation" and FixedSchedule(3).metric == "validation"


def test_initial_checkpoint_none_uses_first_metric():
    s = PRDPSchedule(PRDPConfig(ema_window=None, initial_checkpoint=None))
    feed(s, [1.0] * 10)  # flat at the first value: rc = 1 -> never worth refining
    assert s.budget == 1 and s.events == []
    assert s.checkpoint == 1.0


def test_k_max_caps_and_checkpoint_still_moves():
    s = PRDPSchedule(PRDPConfig(ema_window=None, lookback=2, k0=1, delta_k=5, k_max=7))
    # every flat stretch after a 2x drop is a new plateau with gain
    metrics = [v for level in range(6) for v in [2.0 ** -level] * 3]
    budgets = feed(s, metrics)
    assert max(budgets) == 7 and budgets[-1] == 7
    assert [e.new_k for e in s.events] == [6, 7]
    assert s.trace[-1]["action"] in ("at k_max", "plateau, no gain")
    assert "at k_max" in {t["action"] for t in s.trace}


def test_ema_matches_hand_computation():
    # w = 3 -> α = 2/(3+1) = 1/2; y0 = 4, y1 = (4+2)/2 = 3, y2 = (3+1)/2 = 2, y3 = (2+1)/2 = 1.5
    s = PRDPSchedule(PRDPConfig(ema_window=3, lookback=3))
    feed(s, [4.0, 2.0, 1.0, 1.0])
    assert s.ema == pytest.approx([4.0, 3.0, 2.0, 1.5])
    assert s.trace[3]["ratio_step"] == pytest.approx(1.5 / 3.0)  # m[-1]/m[-δ] with δ = 3


@given(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=30), st.integers(1, 12))
@settings(max_examples=40, deadline=None)
def test_ema_matches_closed_form(xs, w):
    # y_t = (1-α)^t x_0 + α Σ_{i=1..t} (1-α)^{t-i} x_i  (y_0 = x_0)
    s = PRDPSchedule(PRDPConfig(ema_window=w))
    feed(s, xs)
    a = 2.0 / (w + 1.0)
    t = len(xs) - 1
    closed = (1 - a) ** t * xs[0] + a * sum((1 - a) ** (t - i) * xs[i] for i in range(1, t + 1))
    assert s.ema[-1] == pytest.approx(closed, rel=1e-9)


def test_ema_window_one_is_no_smoothing():
    xs = [5.0, 1.0, 3.0, 0.2]
    for w in (None, 1):
        s = PRDPSchedule(PRDPConfig(ema_window=w))
        feed(s, xs)
        assert s.ema == xs


walks = st.lists(st.floats(0.6, 1.25), min_size=4, max_size=40)
configs = st.builds(
    PRDPConfig, k0=st.integers(1, 4), delta_k=st.integers(1, 3), k_max=st.integers(4, 9),
    tau_step=st.floats(0.8, 1.0), tau_stop=st.floats(0.5, 1.0),
    ema_window=st.one_of(st.none(), st.integers(1, 8)), lookback=st.integers(2, 5),
    initial_checkpoint=st.one_of(st.none(), st.just(100.0)),
)


def metrics_from(walk):
    return list(np.cumprod(walk))  # a random multiplicative walk: drops, plateaus and rises


@given(configs, walks)
@settings(max_examples=60, deadline=None)
def test_k_never_decreases_never_exceeds_k_max(cfg, walk):
    budgets = feed(PRDPSchedule(cfg), metrics_from(walk))
    k = [cfg.k0] + budgets
    assert all(b >= a for a, b in zip(k, k[1:]))
    assert max(k) <= cfg.k_max
    warmup = budgets[:cfg.lookback]
    assert warmup == [cfg.k0] * len(warmup)


def _roundtrip(schedule):
    return schedule_from_state_dict(json.loads(json.dumps(schedule.state_dict())))


@given(configs, walks)
@settings(max_examples=25, deadline=None)
def test_restored_schedule_makes_identical_decisions(cfg, walk):
    metrics = metrics_from(walk)
    for split in range(len(metrics) + 1):
        original = PRDPSchedule(cfg)
        feed(original, metrics[:split])
        restored = PRDPSchedule(PRDPConfig())  # the state carries the configuration
        restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
        assert restored.budget == original.budget
        for epoch in range(split, len(metrics)):
            e1, e2 = original.update(epoch, metrics[epoch]), restored.update(epoch, metrics[epoch])
            assert e1 == e2 and original.budget == restored.budget
        assert restored.state_dict() == original.state_dict()


@pytest.mark.parametrize("make", [lambda: FixedSchedule(5, k_max=40), lambda: ConvergedSchedule(25),
                                  lambda: ConvergedSchedule(), lambda: LinearSchedule(2, 20, 7, k_max=50)])
def test_baseline_state_roundtrip(make):
    metrics = [1.0, 0.5, 0.4, 0.4, 0.3, 0.3, 0.3, 0.2, 0.2]
    original = make()
    feed(original, metrics[:4])
    original.raise_budget(3, "guard")
    restored = _roundtrip(original)
    assert type(restored) is type(original) and restored.name == original.name
    assert feed(restored, metrics[4:], 4) == feed(original, metrics[4:], 4)
    assert restored.state_dict() == original.state_dict()


def test_state_of_other_kind_is_refused():
    with pytest.raises(ValueError, match="'fixed'.*'prdp'"):
        PRDPSchedule().load_state_dict(FixedSchedule(3).state_dict())


def test_event_to_dict_roundtrip():
    e = RefinementEvent(4, 2, 3, "plateau", 0.99, 0.5)
    assert RefinementEvent.from_dict(json.loads(json.dumps(e.to_dict()))) == e


# ------------------------------------------------------------------ baselines, raise_budget, specs

def test_fixed_and_converged_keep_k():
    assert feed(FixedSchedule(7), [1.0, 0.1, 2.0]) == [7, 7, 7]
    assert feed(ConvergedSchedule(25), [1.0, 0.1]) == [25, 25]
    assert feed(ConvergedSchedule(), [1.0, 0.1]) == [None, None]


def test_linear_ramp():
    s = LinearSchedule(1, 25, epochs=5)  # 1 + 24·i/4 = 1 + 6i
    assert s.budget == 1
    assert feed(s, [1.0] * 7) == [7, 13, 19, 25, 25, 25, 25]
    assert [e.reason for e in s.events] == ["linear"] * 4
    assert LinearSchedule(3, 9, epochs=1).budget == 9


def test_raise_budget_per_policy():
    p = PRDPSchedule(PRDPConfig(k0=1, delta_k=3, k_max=5))
    assert p.raise_budget(0, "loss diverged").new_k == 4
    assert p.raise_budget(1, "loss diverged").new_k == 5
    assert p.raise_budget(2, "loss diverged") is None  # at K_max
    assert [e.reason for e in p.events] == ["loss diverged"] * 2
    f = FixedSchedule(3, k_max=10)
    assert [f.raise_budget(i, "guard").new_k for i in range(2)] == [6, 10]
    assert f.raise_budget(2, "guard") is None
    assert ConvergedSchedule(25).raise_budget(0, "guard") is None
    assert ConvergedSchedule().raise_budget(0, "guard") is None
    lin = LinearSchedule(1, 25, epochs=5)
    assert lin.raise_budget(0, "guard").new_k == 2
    assert feed(lin, [1.0] * 2) == [7, 13]  # the ramp goes on above the floor
    with pytest.raises(ValueError, match="reason"):
        p.raise_budget(3, "")


def test_make_schedule_forms():
    cfg = PRDPConfig(k0=2)
    assert isinstance(make_schedule("prdp", prdp=cfg), PRDPSchedule) and make_schedule("prdp", cfg).budget == 2
    assert make_schedule("converged", k_converged=25).budget == 25
    assert make_schedule("converged").budget is None
    assert make_schedule("converged:30").budget == 30
    assert make_schedule("fixed:12").budget == 12 and make_schedule(" Fixed : 12 ").name == "fixed:12"
    lin = make_schedule("linear:1:9", epochs=5)
    assert isinstance(lin, LinearSchedule) and (lin.k0, lin.k1, lin.num_epochs) == (1, 9, 5)


@pytest.mark.parametrize("spec", ["bogus", "prdp:3", "fixed", "fixed:x", "fixed:1:2", "linear:1", "converged:a"])
def test_bad_spec_lists_the_forms(spec):
    with pytest.raises(ValueError, match=r"fixed:K.*linear:K0:K1|integers"):
        make_schedule(spec)


def test_spec_errors_name_the_problem():
    with pytest.raises(ValueError, match="needs epochs"):
        make_schedule("linear:1:9")
    with pytest.raises(TypeError, match="spec must be a string"):
        make_schedule(3)
    with pytest.raises(ValueError, match="k1"):
        make_schedule("linear:9:1", epochs=4)
    with pytest.raises(ValueError, match="fixed budget"):
        make_schedule("fixed:0")


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs, exc, key", [
    ({"tau_step": 0.0}, ValueError, "tau_step"),
    ({"tau_step": 1.01}, ValueError, "tau_step"),
    ({"tau_stop": -0.1}, ValueError, "tau_stop"),
    ({"tau_stop": "0.9"}, TypeError, "tau_stop"),
    ({"k0": 5, "k_max": 3}, ValueError, "k0"),
    ({"k0": 0}, ValueError, "k0"),
    ({"k0": "3"}, TypeError, "k0"),
    ({"k0": 2.0}, TypeError, "k0"),
    ({"delta_k": True}, TypeError, "delta_k"),
    ({"delta_k": 0}, ValueError, "delta_k"),
    ({"k_max": 0}, ValueError, "k_max"),
    ({"ema_window": 0}, ValueError, "ema_window"),
    ({"lookback": 1}, ValueError, "lookback"),
    ({"initial_checkpoint": -1.0}, ValueError, "initial_checkpoint"),
    ({"initial_checkpoint": math.inf}, ValueError, "initial_checkpoint"),
    ({"metric": "loss"}, ValueError, "metric"),
])
def test_bad_config_names_the_key(kwargs, exc, key):
    with pytest.raises(exc, match=f"PRDPConfig.{key}"):
        PRDPConfig(**kwargs)


def test_config_accepts_numpy_numbers_and_bounds():
    cfg = PRDPConfig(k0=np.int64(3), tau_step=1, tau_stop=np.float32(0.5), k_max=3)
    assert type(cfg.k0) is int and cfg.tau_step == 1.0 and isinstance(cfg.tau_stop, float)
    assert PRDPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown PRDPConfig key.*tau"):
        PRDPConfig.from_dict({"tau": 0.9})


def test_bad_metrics_and_epochs():
    s = PRDPSchedule()
    for bad, exc in [(math.nan, ValueError), (math.inf, ValueError), (0.0, ValueError), (-1.0, ValueError),
                     ("0.1", TypeError), (torch.ones(2), TypeError)]:
        with pytest.raises(exc, match="metric"):
            s.update(0, bad)
    assert s.metrics == []
    s.update(0, torch.tensor(0.5))
    with pytest.raises(ValueError, match="epoch must increase"):
        s.update(0, 0.4)
    with pytest.raises(ValueError, match="epoch"):
        s.update(-1, 0.4)


# ------------------------------------------------------------------ the ledger

def test_ledger_counts_a_monitor_stream():
    ledger = IterationLedger()
    ledger.start_epoch(0, k=5)
    with ledger.phase("train"):
        ledger("forward", "cg", torch.tensor([3, 5, 4]))
        ledger("backward", "cg", torch.tensor([2, 5, 1]))
        ledger("forward", "cg", torch.tensor([5, 5, 5]))
        ledger.count_step()
        time.sleep(0.02)
    ledger("forward", "jacobi", 2)  # outside any phase: training cost
    with ledger.phase("validation"):
        ledger("forward", "cg", torch.tensor([7, 1]))
    rec = ledger.end_epoch()
    assert rec["k"] == 5 and rec["steps"] == 1 and rec["epoch"] == 0
    assert (rec["forward_iters"], rec["forward_iters_samples"]) == (5 + 5 + 2, 12 + 15 + 2)
    assert (rec["backward_iters"], rec["backward_iters_samples"]) == (5, 8)
    assert (rec["val_forward_iters"], rec["val_forward_iters_samples"], rec["val_solves"]) == (7, 8, 1)
    assert (rec["solves"], rec["backward_solves"]) == (3, 1)
    assert rec["train_seconds"] >= 0.02 and rec["validation_seconds"] >= 0.0
    assert rec["seconds"] >= rec["train_seconds"] + rec["validation_seconds"]

    ledger("forward", "cg", torch.tensor([1]))  # opens epoch 1 by itself
    ledger.record_budget(None)
    rec1 = ledger.end_epoch()
    assert (rec1["epoch"], rec1["k"], rec1["forward_iters"]) == (1, None, 1)

    totals = ledger.totals()
    assert totals["epochs"] == 2 and totals["forward_iters"] == 13 and totals["sum_k"] is None
    restored = IterationLedger.from_state_dict(json.loads(json.dumps(ledger.state_dict())))
    assert restored.epochs == ledger.epochs and restored.totals() == totals


def test_ledger_misuse():
    ledger = IterationLedger()
    with pytest.raises(ValueError, match="direction"):
        ledger("sideways", "cg", torch.tensor([1]))
    ledger.start_epoch(0)
    with pytest.raises(RuntimeError, match="still open"):
        ledger.start_epoch(1)
    with pytest.raises(ValueError, match="phase"):
        with ledger.phase("test"):
            pass
    with pytest.raises(RuntimeError, match="nest"):
        with ledger.phase("train"), ledger.phase("validation"):
            pass
    ledger.end_epoch()
    with pytest.raises(RuntimeError, match="no open epoch"):
        ledger.end_epoch()
    with pytest.raises(ValueError, match="lacks the key"):
        IterationLedger.from_state_dict({"epochs": [{"epoch": 0}]})


def _jacobi_inverse_problem(n=15):
    """u'' = −θ sin(2πx), u(0) = u(1) = 0, three-point stencil; A = −D² (tridiagonal)."""
    h = 1.0 / (n + 1)
    x = torch.linspace(h, 1 - h, n, dtype=torch.float64)

    def matvec(u):
        pad = torch.nn.functional.pad(u, (1, 1))
        return (2 * u - pad[..., :-2] - pad[..., 2:]) / h**2

    A = LinearOperator(matvec, symmetric=True, diagonal=torch.full((n,), 2 / h**2, dtype=torch.float64))
    shape = torch.sin(2 * torch.pi * x)[None, None]
    dense = (2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)) / h**2
    u_ref = torch.from_numpy(np.linalg.solve(dense, 2.0 * shape[0, 0].numpy()))[None, None]  # θ_ref = 2
    return A, shape, u_ref


def test_ledger_sees_what_the_solver_ran():
    A, shape, u_ref = _jacobi_inverse_problem()
    theta = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    ledger = IterationLedger()
    ledger.start_epoch(0, k=30)
    with ledger.phase("train"):
        result = SolverConfig(method="cg", max_iters=30, rtol=1e-10, monitor=ledger).solve(A, theta * shape.repeat(3, 1, 1))
        ((result.solution - u_ref) ** 2).sum().backward()
    rec = ledger.end_epoch()
    assert rec["forward_iters"] == int(result.iterations.max())
    assert rec["forward_iters_samples"] == int(result.iterations.sum())
    assert rec["backward_iters"] == int(result.backward_iterations.max()) > 0


def test_prdp_in_a_user_loop_pays_exactly_its_budgets():
    # the module docstring's loop on the paper's Poisson inverse problem (Jacobi, exact budgets)
    A, shape, u_ref = _jacobi_inverse_problem()
    theta = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    schedule = PRDPSchedule(PRDPConfig(k0=10, delta_k=10, k_max=400, ema_window=None, lookback=2, tau_step=0.92))
    ledger = IterationLedger()
    budgets = []
    for epoch in range(40):
        ledger.start_epoch(epoch, k=schedule.budget)
        budgets.append(schedule.budget)
        solver = SolverConfig(method="jacobi", max_iters=schedule.budget, rtol=0.0, monitor=ledger)
        with ledger.phase("train"):
            u = solver.solve(A, theta * shape).solution
            loss = ((u - u_ref) ** 2).mean() / 2
            loss.backward()
            with torch.no_grad():
                theta -= 2000.0 * theta.grad
            theta.grad = None
            ledger.count_step()
        ledger.end_epoch()
        schedule.update(epoch, abs(theta.item() - 2.0) / 2.0)
    assert [e["forward_iters"] for e in ledger.epochs] == budgets
    assert [e["backward_iters"] for e in ledger.epochs] == budgets
    assert budgets[1:] == [t["k"] for t in schedule.trace[:-1]]
    # a truncated Jacobi solve biases θ; each plateau refines K and removes more of the bias
    assert len(schedule.events) >= 5 and all(e.reason == "plateau" for e in schedule.events)
    assert abs(theta.item() - 2.0) < 1e-2


# ------------------------------------------------------------------ savings

def _ledger(ks, iters=None, steps=None, train_s=0.0, val_s=0.0):
    """A ledger fed through the monitor interface: one batched solve each way per step."""
    ledger = IterationLedger()
    for e, k in enumerate(ks):
        ledger.start_epoch(e, k=k)
        n_steps = 1 if steps is None else steps[e]
        with ledger.phase("train"):
            for _ in range(n_steps):
                run = k if iters is None else iters
                ledger("forward", "jacobi", torch.tensor([run, max(run - 1, 0)]))
                ledger("backward", "jacobi", torch.tensor([run, run]))
                if steps is not None:
                    ledger.count_step()
        ledger.end_epoch()
    state = ledger.state_dict()
    for rec in state["epochs"]:
        rec["train_seconds"], rec["validation_seconds"] = train_s, val_s
    return state


def test_savings_reproduce_the_paper_formulas():
    # K_ε = 25, E = 100, K_e = 1 + e // 10: ten epochs each at K = 1..10, so Σ K_e = 10·55 = 550
    ks = [1 + e // 10 for e in range(100)]
    prdp = _ledger(ks, train_s=0.02, val_s=0.01)
    conv = _ledger([25] * 100, train_s=0.05, val_s=0.01)
    r = savings_report(prdp, conv, k_converged=25, prdp_final_metric=1.1e-3, converged_final_metric=1.0e-3)
    assert r["k_final"] == 10 and r["sum_k"] == 550 and r["weighting"] == "epochs" and r["same_length"]
    assert r["ic"] == pytest.approx((25 - 10) / 25)              # 60 %
    assert r["pr"] == pytest.approx((10 * 100 - 550) / (25 * 100))  # 18 %
    assert r["total"] == pytest.approx(1 - 550 / (25 * 100))       # 78 %
    assert r["total"] == pytest.approx(r["ic"] + r["pr"])
    # every solve ran its full budget, so the measured savings equal the nominal ones
    assert r["measured_forward_savings"] == pytest.approx(r["total"])
    assert r["measured_backward_savings"] == pytest.approx(r["total"])
    assert r["measured_iteration_savings"] == pytest.approx(r["total"])
    assert r["wall_train_savings"] == pytest.approx(1 - 0.02 / 0.05)
    assert r["wall_total_savings"] == pytest.approx(1 - 0.03 / 0.06)
    assert r["final_metric_ratio"] == pytest.approx(1.1)


def test_savings_weight_epochs_by_steps():
    ks, steps = [2, 4, 6, 8], [1, 3, 2, 2]
    r = savings_report(_ledger(ks, steps=steps), _ledger([10] * 4, steps=steps), 10, 1.0, 1.0)
    cost = 2 * 1 + 4 * 3 + 6 * 2 + 8 * 2
    assert r["weighting"] == "steps"
    assert r["prdp_nominal_cost"] == cost and r["conv_nominal_cost"] == 10 * 8
    assert r["total"] == pytest.approx(1 - cost / 80)
    assert r["pr"] == pytest.approx((8 * 8 - cost) / 80)  # (K_final·S − Σ K_e s_e)/(K_ε·S)


def test_savings_at_equal_accuracy_and_early_stopping_solver():
    # inverse problem style: PRDP needs 50 outer iterations, the converged run 100; the converged
    # solver stops after 20 iterations although its nominal budget is 25
    prdp = _ledger([25] * 50)
    conv = _ledger([25] * 100, iters=20)
    r = savings_report(prdp, conv, 25, 1.0, 1.0)
    assert not r["same_length"]
    assert r["ic"] == 0 and r["total"] == pytest.approx(1 - 25 * 50 / (25 * 100))
    assert r["pr"] == pytest.approx(r["total"])
    assert r["measured_forward_savings"] == pytest.approx(1 - 25 * 50 / (20 * 100))


def test_savings_input_checks():
    good = _ledger([1, 2])
    with pytest.raises(ValueError, match="no budget K"):
        savings_report(_ledger([None, 2], iters=3), good, 25, 1.0, 1.0)
    with pytest.raises(ValueError, match="k_converged"):
        savings_report(good, good, 0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no finished epochs"):
        savings_report(IterationLedger(), good, 25, 1.0, 1.0)
    with pytest.raises(ValueError, match="steps"):
        savings_report(_ledger([1, 2], steps=[1, 1]), good, 25, 1.0, 1.0)
    with pytest.raises(ValueError, match="converged"):
        savings_report(good, {"epoch": []}, 25, 1.0, 1.0)
    with pytest.raises(ValueError, match="converged_final_metric"):
        savings_report(good, good, 25, 1.0, math.nan)


def test_markdown_table_puts_ours_beside_the_paper():
    ks = [1 + e // 10 for e in range(100)]
    r = savings_report(_ledger(ks, train_s=0.02), _ledger([25] * 100, train_s=0.05), 25, 1.0, 1.0)
    table = format_savings_markdown(r, paper_row={"k_converged": 25, "epochs": 100, "k_final": "≈10", "ic": 0.60,
                                                  "pr": 0.19, "total": 0.79})
    lines = table.strip().splitlines()
    assert lines[0] == "| quantity | ours | paper |"
    ic_row = next(line for line in lines if line.startswith("| IC"))
    assert ic_row.endswith(f"| {100 * r['ic']:.1f}% | 60.0% |")
    assert "| K_final | 10 | ≈10 |" in lines
    assert all(line.count("|") == 4 for line in lines)
    assert format_savings_markdown(r).splitlines()[0] == "| quantity | ours |"
    with pytest.raises(ValueError, match="unknown key"):
        format_savings_markdown(r, paper_row={"speedup": 2})


def test_one_vocabulary_for_reports_seeds_and_the_paper():
    from pdeaccel.prdp import QUANTITIES, in_current_names, savings_table

    r = savings_report(_ledger([1, 2, 2]), _ledger([4, 4, 4]), 4, 1.0, 2.0)
    assert set(r) - {"same_length", "weighting"} <= set(QUANTITIES)
    # results stored before the names were unified still render, with today's keys
    old_paper = {"k_eps": 25, "wall_conv_s": 3.25, "wall_prdp_s": 3.1, "total": 0.79}
    assert in_current_names(old_paper) == {"k_converged": 25, "conv_train_seconds": 3.25,
                                           "prdp_train_seconds": 3.1, "total": 0.79}
    per_seed = savings_table({0: r, 1: {**r, "total": {"mean": 0.5, "std": 0.01}}}, ("k_final", "total"),
                             quantities_as_rows=False, corner="seed").splitlines()
    assert per_seed[0] == "| seed | K_final | total saving, nominal Σ K_e |"
    assert per_seed[2] == f"| 0 | 2 | {100 * r['total']:.1f}% |" and per_seed[3] == "| 1 | 2 | 50.0% ± 1.0 |"
    with pytest.raises(ValueError, match="unknown savings quantity"):
        savings_table({"ours": r}, ("speedup",))
