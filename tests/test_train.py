"""The shared trainer: budgets reach the solver, the ledger counts what ran, checkpoints and resume."""

from __future__ import annotations

import math

import pytest
import torch

from pdeaccel.grid import Grid
from pdeaccel.linalg import SolverConfig
from pdeaccel.physics.poisson import solve_poisson, sine_series_source
from pdeaccel.prdp import FixedSchedule, LinearSchedule, PRDPConfig, PRDPSchedule
from pdeaccel.train import io
from pdeaccel.train.tasks import InverseTask
from pdeaccel.train.trainer import Trainer, TrainSettings
from toy_tasks import OneParameterTask


def _inverse_task(steps_per_epoch: int = 2) -> InverseTask:
    grid = Grid(30, boundary="dirichlet")

    def forward_map(theta, solver):
        f = sine_series_source(theta, grid)
        return solve_poisson(f, grid, solver, x0=torch.zeros_like(f)).solution

    truth = torch.tensor([[2.0]], dtype=torch.float64)
    with torch.no_grad():
        obs = forward_map(truth, SolverConfig(rtol=1e-12))
    solver = SolverConfig(method="jacobi", grad="implicit")
    return InverseTask(lambda theta, budgets: forward_map(theta, budgets.linear_solver(solver)), obs,
                       torch.tensor([[5.0]], dtype=torch.float64), truth, steps_per_epoch)


def _trainer(tmp_path, schedule, epochs=6, task=None):
    task = task or _inverse_task()
    settings = TrainSettings(epochs=epochs, optimizer="sgd", lr=275.0, progress=False)
    return Trainer(task, {"linear": schedule}, settings, tmp_path, seed=3)


def test_fixed_budget_is_what_the_solver_runs(tmp_path):
    trainer = _trainer(tmp_path, FixedSchedule(40), epochs=3)
    rows = trainer.fit()
    for row in rows:
        assert row["k"] == 40
        # two optimiser steps per epoch, each one forward and one adjoint solve of exactly K iterations
        assert row["forward_iters"] == 2 * 40
        assert row["backward_iters"] == 2 * 40
    assert rows[-1]["val_metric"] < rows[0]["val_metric"]  # gradient descent makes progress


def test_prdp_budget_never_decreases_and_is_recorded(tmp_path):
    cfg = PRDPConfig(k0=10, delta_k=10, k_max=300, tau_step=0.999, tau_stop=0.9, ema_window=1, lookback=2)
    rows = _trainer(tmp_path, PRDPSchedule(cfg), epochs=12).fit()
    ks = [r["k"] for r in rows]
    assert ks == sorted(ks) and ks[0] == 10 and ks[-1] > 10
    assert all(r["forward_iters"] == 2 * r["k"] for r in rows)


def test_checkpoints_are_written_and_resume_is_exact(tmp_path):
    full = _trainer(tmp_path / "full", FixedSchedule(30), epochs=6)
    full.fit()
    part = _trainer(tmp_path / "part", FixedSchedule(30), epochs=3)
    part.fit()
    resumed = _trainer(tmp_path / "part", FixedSchedule(30), epochs=6)
    assert resumed.resume() and resumed.epoch == 3
    resumed.fit()
    assert torch.equal(resumed.task.theta, full.task.theta)  # bit-identical on CPU
    assert [r["val_metric"] for r in resumed.rows] == [r["val_metric"] for r in full.rows]
    ckpts = sorted((tmp_path / "full" / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == 3  # checkpoint_keep


def test_corrupted_checkpoint_is_skipped(tmp_path):
    trainer = _trainer(tmp_path, FixedSchedule(20), epochs=3)
    trainer.fit()
    newest = sorted((tmp_path / "checkpoints").glob("*.ckpt"))[-1]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated, as by a crash without atomic writes
    with pytest.raises(ValueError, match="corrupted or truncated"):
        io.load_checkpoint(newest)
    fresh = _trainer(tmp_path, FixedSchedule(20), epochs=3)
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        assert fresh.resume()
    assert fresh.epoch == 2  # fell back to the previous intact checkpoint


class _ExplodingTask(OneParameterTask):
    """Loss becomes NaN at small K in epoch 1: the guard must restore and raise K."""

    def __init__(self):
        super().__init__(torch.ones(1))
        self.epoch_calls = 0

    def train_batches(self, generator):
        return [None]

    def loss(self, batch, budgets):
        self.epoch_calls += 1
        if budgets["linear"] < 3 and self.epoch_calls > 1:
            return self.w * float("nan")
        return (self.w - 2.0).pow(2).sum()

    def validate(self, budgets):
        return float((self.w.detach() - 2.0).abs())


def test_divergence_guard_restores_and_raises_k(tmp_path):
    task = _ExplodingTask()
    trainer = Trainer(task, {"linear": FixedSchedule(1)}, TrainSettings(epochs=3, lr=0.1, progress=False), tmp_path)
    rows = trainer.fit()
    assert trainer.guard_events and trainer.guard_events[0]["epoch"] == 1
    assert rows[-1]["k"] >= 3
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert torch.isfinite(task.w).all()


def test_unwritable_run_directory_fails_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(io.RunDirectoryError, match="cannot write"):
        io.save_checkpoint(blocker / "sub" / "epoch_00000.ckpt", {"a": 1})


def test_training_stops_at_the_target_metric(tmp_path):
    task = _inverse_task(steps_per_epoch=1)
    settings = TrainSettings(epochs=200, optimizer="sgd", lr=275.0, progress=False, target_metric=0.05)
    trainer = Trainer(task, {"linear": FixedSchedule(600)}, settings, tmp_path)
    rows = trainer.fit()
    assert rows[-1]["val_metric"] <= 0.05 < rows[-2]["val_metric"]
    assert len(rows) < 200


class _LevelTask(OneParameterTask):
    """A task with a budget the package does not know: a "level" it reads from the mapping."""

    budgets = ("level",)

    def __init__(self):
        super().__init__(torch.zeros(1))
        self.seen = []

    def train_batches(self, generator):
        return [None]

    def loss(self, batch, budgets):
        self.seen.append(budgets["level"])
        return (self.w - 1.0 / budgets["level"]).pow(2).sum()

    def validate(self, budgets):
        return float((self.w.detach() - 1.0).abs()) + 1e-3


def test_a_new_budget_needs_only_a_name_a_schedule_and_a_task_that_reads_it(tmp_path):
    task = _LevelTask()
    trainer = Trainer(task, {"level": LinearSchedule(1, 4, epochs=4)}, TrainSettings(epochs=4, lr=0.1, progress=False),
                      tmp_path)
    rows = trainer.fit()
    assert task.seen == [1, 2, 3, 4] and [r["level"] for r in rows] == [1, 2, 3, 4]
    assert all(r["k"] is None and r["forward_iters"] == 0 for r in rows)  # no linear budget, no solves
    resumed = Trainer(_LevelTask(), {"level": LinearSchedule(1, 4, epochs=4)}, TrainSettings(epochs=4, progress=False),
                      tmp_path)
    assert resumed.resume() and resumed.schedules["level"].budget == 4
    with pytest.raises(ValueError, match=r"declares the budgets \['level'\] .* schedules were given for \['linear'\]"):
        Trainer(_LevelTask(), {"linear": FixedSchedule(2)}, TrainSettings(progress=False))


def test_checkpoints_from_before_named_budgets_resume(tmp_path):
    full = _trainer(tmp_path / "full", FixedSchedule(30), epochs=4)
    full.fit()
    _trainer(tmp_path / "old", FixedSchedule(30), epochs=2).fit()
    for path in (tmp_path / "old" / "checkpoints").glob("*.ckpt"):  # as the trainer wrote them before
        state = io.load_checkpoint(path)
        state["schedule"], state["nonlinear_schedule"] = state.pop("schedules")["linear"], None
        io.save_checkpoint(path, state)
    resumed = _trainer(tmp_path / "old", FixedSchedule(7), epochs=4)
    assert resumed.resume() and resumed.schedules["linear"].budget == 30  # the stored schedule wins
    resumed.fit()
    assert torch.equal(resumed.task.theta, full.task.theta)


# ---- the training step's hot path (issue 15): faster, and the same numbers ----------------------


def test_all_finite_answers_as_the_elementwise_test():
    from pdeaccel.train.trainer import all_finite

    big = torch.finfo(torch.float32).max
    cases = [torch.randn(7, 5), torch.tensor([1.0, math.nan]), torch.tensor([math.inf, 1.0]),
             torch.tensor([-math.inf, math.inf]), torch.tensor([big, big]),  # finite values whose sum overflows
             torch.zeros(0), torch.arange(6), torch.tensor([0.5, math.nan], dtype=torch.float64)]
    for t in cases:
        assert all_finite(t) == bool(torch.isfinite(t).all()), t


def test_trainer_adam_is_bit_identical_to_torch_default_adam(tmp_path):
    # the trainer's Adam runs foreach (fewer passes); every weight must equal the per-tensor loop's
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12))
    ref = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12))
    ref.load_state_dict(net.state_dict())
    trainer = Trainer(OneParameterTask(torch.zeros(1)), {"linear": FixedSchedule(1)},
                      TrainSettings(epochs=1, progress=False))
    opt = type(trainer.optimizer)(net.parameters(), **{k: v for k, v in trainer.optimizer.defaults.items()})
    opt_ref = torch.optim.Adam(ref.parameters(), lr=trainer.settings.lr, foreach=False)
    assert opt.defaults["foreach"] is True
    for step in range(15):
        x = torch.randn(5, 12, generator=torch.Generator().manual_seed(step))
        for model, o in ((net, opt), (ref, opt_ref)):
            o.zero_grad(set_to_none=True)
            model(x).pow(3).mean().backward()
            o.step()
    for a, b in zip(net.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_adam_fused_is_a_named_option(tmp_path):
    trainer = _trainer(tmp_path, FixedSchedule(4), epochs=2)
    trainer = Trainer(trainer.task, {"linear": FixedSchedule(4)},
                      TrainSettings(epochs=2, progress=False, optimizer="adam-fused", lr=1e-2), tmp_path / "fused")
    rows = trainer.fit()
    assert trainer.optimizer.defaults["fused"] is True and len(rows) == 2
    with pytest.raises(ValueError, match="adam-fused"):
        Trainer(trainer.task, {"linear": FixedSchedule(4)}, TrainSettings(optimizer="adamw"))


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    from pdeaccel.train import allocator

    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setenv("PDEACCEL_ALLOCATOR", "system")
    assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.delenv("PDEACCEL_ALLOCATOR")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # the user's own glibc setting wins
    assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    first = allocator.keep_freed_memory()
    assert isinstance(first, bool) and allocator.keep_freed_memory() is first  # once per process


def test_fit_flushes_subnormals_only_while_it_runs_and_restores_the_setting(tmp_path, monkeypatch):
    import torch

    from pdeaccel.train import trainer as trainer_module

    assert trainer_module._denormals_flushed() in (True, False)
    for before in (False, True):
        calls = []
        real = torch.set_flush_denormal
        monkeypatch.setattr(trainer_module, "_denormals_flushed", lambda: before)  # the state fit finds
        monkeypatch.setattr(torch, "set_flush_denormal", lambda on: calls.append(on) or real(on))
        trainer = _trainer(tmp_path / f"run{before}", FixedSchedule(5), epochs=2)
        assert calls == []  # constructing a trainer changes nothing process-wide
        seen = []
        original = trainer._run_epoch
        trainer._run_epoch = lambda: (seen.append(list(calls)), original())
        trainer.fit()
        assert seen == [[True], [True]]  # on while every epoch runs
        assert calls == [True, before]  # and back to what it was
        monkeypatch.undo()
    torch.set_flush_denormal(True)  # the suite's setting (conftest.py)
