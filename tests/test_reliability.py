"""Crash safety, exact resume, damaged files, full disks, numerical faults, strict configs."""

from __future__ import annotations

import errno
import math
import os
import random

import h5py
import numpy as np
import pytest
import torch

from pdeaccel.cli import main
from pdeaccel.config import ConfigError
from pdeaccel.experiments import data as data_mod
from pdeaccel.experiments.runner import train_run
from pdeaccel.linalg import SolverConfig, solve
from pdeaccel.prdp import FixedSchedule
from pdeaccel.testing import faults
from pdeaccel.train import io
from pdeaccel.train.trainer import DivergenceError, Trainer, TrainSettings
from toy_tasks import OneParameterTask

HEAT = ["heat-1d", "data.train=10", "data.validation=2", "train.epochs=8", "train.batch_size=5"]


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEACCEL_DATA", str(tmp_path / "data"))


# ------------------------------------------------------------------------------ kill and resume
def test_sigkilled_training_resumes_to_the_uninterrupted_result(tmp_path):
    train_run(HEAT[0], overrides=HEAT[1:], out=tmp_path / "reference", progress=False)
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    # one kill at a random moment (start-up, data loading or training), two inside checkpoint writes
    moments = [("random", rng.uniform(0.5, 4.5)), ("mid-write", 15.0), ("mid-write", 15.0)]
    kills = faults.run_with_kills(HEAT, tmp_path / "killed", moments, slow_writes=0.03)
    hit = [k for k in kills if any(w.endswith(".ckpt") for w in k.interrupted_writes)]
    assert hit, f"no kill landed inside a checkpoint write (seed {seed}): {kills}"
    diff = faults.differences(faults.comparable_run(tmp_path / "reference"),
                              faults.comparable_run(tmp_path / "killed"))
    assert diff == [], f"seed {seed}, kills {kills}"
    # the interrupted writes left nothing behind after the final resume
    assert not [p for p in (tmp_path / "killed" / "checkpoints").iterdir() if io.is_temporary(p)]


FLOW = ["flow-2d", "physics.length=16", "physics.height=8", "pool.size=4", "net.hidden=4", "net.levels=2",
        "data.validation=2", "data.validation_steps=2", "train.steps_per_epoch=3", "train.batch_size=2",
        "train.epochs=6"]


def test_sigkilled_flow_pool_training_resumes_to_the_uninterrupted_result(tmp_path):
    # the pool (environment specs, states, ages, reset pointer, its generator) is task state: a
    # resumed run must continue the same pool
    train_run(FLOW[0], overrides=FLOW[1:], out=tmp_path / "reference", progress=False)
    kills = faults.run_with_kills(FLOW, tmp_path / "killed", [("mid-write", 15.0)], slow_writes=0.03)
    assert any(w.endswith(".ckpt") for k in kills for w in k.interrupted_writes), kills
    reference, killed = (faults.comparable_run(tmp_path / d) for d in ("reference", "killed"))
    assert reference["checkpoint"]["task"]["pool"]["steps"] == 6 * 3  # the pool is in what is compared
    assert faults.differences(reference, killed) == [], kills


def test_comparison_sees_a_one_bit_difference(tmp_path):
    """The resume check above is only as good as ``differences``: it must catch a single flipped bit."""
    w = torch.randn(5)
    flipped = w.clone()
    flipped.view(torch.int32)[2] ^= 1
    assert faults.differences({"a": {"w": w}}, {"a": {"w": flipped}}) == ["a.w: tensors differ"]
    assert faults.differences({"rows": [{"k": 2, "train_seconds": 1.0}]},
                              {"rows": [{"k": 2, "train_seconds": 1.0}]}) == []
    stripped = faults._strip_timing({"k": 2, "train_seconds": 1.0, "ledger": [{"seconds": 3.0, "solves": 4}]})
    assert stripped == {"k": 2, "ledger": [{"solves": 4}]}


# ------------------------------------------------------------------------------ damaged checkpoints
def _inverse_trainer(run_dir, epochs=4, lr=275.0):
    from pdeaccel.grid import Grid
    from pdeaccel.physics.poisson import solve_poisson, sine_series_source
    from pdeaccel.train.tasks import InverseTask

    grid = Grid(30, boundary="dirichlet")

    def forward_map(theta, solver):
        f = sine_series_source(theta, grid)
        return solve_poisson(f, grid, solver, x0=torch.zeros_like(f)).solution

    truth = torch.tensor([[2.0]], dtype=torch.float64)
    with torch.no_grad():
        obs = forward_map(truth, SolverConfig(rtol=1e-12))
    solver = SolverConfig(method="jacobi", grad="implicit")
    task = InverseTask(lambda theta, budgets: forward_map(theta, budgets.linear_solver(solver)), obs,
                       torch.tensor([[5.0]], dtype=torch.float64), truth, 2)
    settings = TrainSettings(epochs=epochs, optimizer="sgd", lr=lr, progress=False)
    return Trainer(task, {"linear": FixedSchedule(30)}, settings, run_dir, seed=3)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


CORRUPTIONS = {
    "truncated to half": lambda d: d[: len(d) // 2],
    "truncated inside the header": lambda d: d[:20],
    "empty": lambda d: b"",
    "payload bit flip": lambda d: _flip(d, len(d) - 100),
    "checksum bit flip": lambda d: _flip(d, len(io.CHECKPOINT_MAGIC) + 5),
    "not a checkpoint": lambda d: b"PK\x03\x04" + d[4:],
    "appended garbage": lambda d: d + b"\x00" * 17,
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_damaged_checkpoint_is_detected_skipped_and_set_aside(how, tmp_path):
    trainer = _inverse_trainer(tmp_path)
    trainer.fit()
    newest = tmp_path / "checkpoints" / "epoch_00004.ckpt"
    newest.write_bytes(CORRUPTIONS[how](newest.read_bytes()))
    with pytest.raises(ValueError, match="checkpoint|corrupted"):
        io.load_checkpoint(newest)
    resumed = _inverse_trainer(tmp_path)
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        assert resumed.resume()
    assert resumed.epoch == 3  # the previous intact checkpoint
    assert (tmp_path / "checkpoints" / "epoch_00004.ckpt.damaged").exists() and not newest.exists()
    # the logs follow the checkpoint that was loaded, not the damaged newer one
    assert len(io_rows(tmp_path)) == 3
    resumed.fit()
    reference = _inverse_trainer(tmp_path / "ref")
    reference.fit()
    assert torch.equal(resumed.task.theta, reference.task.theta)


def test_resume_with_every_checkpoint_damaged_stops_and_restarts_only_when_asked(tmp_path, capsys):
    out = tmp_path / "r"
    over = HEAT[1:-2] + ["train.batch_size=5", "train.epochs=3"]
    assert main(["train", "heat-1d", "--quiet", "--out", str(out), *over]) == 0
    ckpts = sorted((out / "checkpoints").glob("epoch_*.ckpt"))
    assert len(ckpts) == 3
    for path, how in zip(ckpts, ("truncated to half", "payload bit flip", "empty")):
        path.write_bytes(CORRUPTIONS[how](path.read_bytes()))
    metrics = (out / "metrics.csv").read_text()
    capsys.readouterr()
    for attempt in range(2):  # the second time the damaged files are already set aside as *.damaged
        with pytest.warns(UserWarning) if attempt == 0 else _no_warning():
            assert main(["train", "heat-1d", "--quiet", "--resume", str(out)]) == 2
        err = capsys.readouterr().err
        assert "all 3 checkpoint(s)" in err and "Nothing was resumed" in err and "--restart-if-damaged" in err
        assert not list((out / "checkpoints").glob("epoch_*.ckpt"))  # nothing was trained
        assert (out / "metrics.csv").read_text() == metrics
    with pytest.warns(UserWarning, match="starting the run over from epoch 0"):
        assert main(["train", "heat-1d", "--quiet", "--resume", str(out), "--restart-if-damaged"]) == 0
    train_run("heat-1d", overrides=over, out=tmp_path / "fresh", progress=False)
    assert faults.differences(faults.comparable_run(tmp_path / "fresh"), faults.comparable_run(out)) == []


def _no_warning():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def ctx():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield
    return ctx()


def io_rows(run_dir):
    from pdeaccel.train.report import read_metrics

    return read_metrics(run_dir)


def test_resume_removes_interrupted_writes_and_rewrites_lagging_logs(tmp_path):
    trainer = _inverse_trainer(tmp_path, epochs=3)
    trainer.fit()
    # a kill after the checkpoint rename but before metrics.csv was rewritten, mid-way through the next write
    io.write_csv(tmp_path / "metrics.csv", trainer.rows[:2])
    (tmp_path / "checkpoints" / ".epoch_00004.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")
    resumed = _inverse_trainer(tmp_path, epochs=3)
    assert resumed.resume() and resumed.epoch == 3
    assert [r["epoch"] for r in io_rows(tmp_path)] == [0, 1, 2]
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


# ------------------------------------------------------------------------------ damaged datasets
def _dataset(calls):
    def generate():
        calls.append(1)
        return torch.arange(24, dtype=torch.float32).reshape(2, 3, 1, 4)
    return generate


def _tamper_values(path):
    with h5py.File(path, "r+") as f:
        f["trajectories"][0, 0, 0, 0] = 99.0


def _tamper_nan(path):
    with h5py.File(path, "r+") as f:
        f["trajectories"][0, 0, 0, 0] = np.nan
        f.attrs["sha256"] = data_mod._checksum(np.asarray(f["trajectories"]))  # checksum "fixed" too


def _tamper_hash(path):
    with h5py.File(path, "r+") as f:
        f.attrs["config_hash"] = "0" * 16


def _truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])


DATASET_DAMAGE = {"truncated": _truncate, "value changed": _tamper_values, "NaN inserted": _tamper_nan,
                  "config hash changed": _tamper_hash}


@pytest.mark.parametrize("how", sorted(DATASET_DAMAGE))
def test_damaged_dataset_is_regenerated_not_loaded(how, tmp_path):
    calls: list[int] = []
    cfg = {"name": "toy", "n": 4}
    fresh = data_mod.cached_trajectories("toy", cfg, _dataset(calls), shape=(2, 3, 1, 4), dtype=torch.float32)
    path = next((tmp_path / "data").glob("toy-*.h5"))
    assert torch.equal(data_mod.cached_trajectories("toy", cfg, _dataset(calls)), fresh) and len(calls) == 1
    DATASET_DAMAGE[how](path)
    with pytest.warns(UserWarning, match="unusable"):
        again = data_mod.cached_trajectories("toy", cfg, _dataset(calls), shape=(2, 3, 1, 4), dtype=torch.float32)
    assert len(calls) == 2 and torch.equal(again, fresh)
    assert torch.equal(data_mod.cached_trajectories("toy", cfg, _dataset(calls)), fresh) and len(calls) == 2


def test_dataset_of_another_shape_or_dtype_is_never_loaded(tmp_path):
    calls: list[int] = []
    cfg = {"name": "toy"}
    data_mod.cached_trajectories("toy", cfg, _dataset(calls))
    with pytest.warns(UserWarning, match=r"shape \[2, 3, 1, 4\], expected \[2, 3, 1, 5\]"):
        with pytest.raises(data_mod.DatasetError, match="expected"):  # and regenerating cannot fix it
            data_mod.cached_trajectories("toy", cfg, _dataset(calls), shape=(2, 3, 1, 5))
    with pytest.warns(UserWarning, match="dtype torch.float32, expected torch.float64"):
        with pytest.raises(data_mod.DatasetError):
            data_mod.cached_trajectories("toy", cfg, _dataset(calls), dtype=torch.float64)


def test_interrupted_dataset_write_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    calls: list[int] = []
    with pytest.warns(UserWarning, match="could not cache dataset toy .*No space left"):
        data = data_mod.cached_trajectories("toy", {"x": 1}, _dataset(calls))
    assert data.shape == (2, 3, 1, 4)
    assert list((tmp_path / "data").iterdir()) == []  # neither a partial file nor a temporary one


# ------------------------------------------------------------------------------ full disk, bad directory
def test_full_disk_fails_clearly_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = _inverse_trainer(tmp_path, epochs=2)
    trainer.fit()
    before = io.load_checkpoint(tmp_path / "checkpoints" / "epoch_00002.ckpt")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    trainer.settings.epochs = 3
    with pytest.raises(io.RunDirectoryError, match="No space left on device.*previous version.*intact"):
        trainer.fit()
    monkeypatch.undo()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch_00001.ckpt", "epoch_00002.ckpt"]  # no partial epoch 3, nothing pruned
    after = io.load_checkpoint(tmp_path / "checkpoints" / "epoch_00002.ckpt")
    assert faults.differences(before, after) == []
    assert len(io_rows(tmp_path)) == 2


def test_cli_reports_a_full_disk_and_an_unwritable_directory(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    assert main(["train", "poisson-inverse", "--quiet", "--out", str(blocker / "run"), "train.epochs=2"]) == 2
    assert "cannot create run directory" in capsys.readouterr().err

    real_fsync = os.fsync
    writes = []

    def fsync_fails_in_the_second_epoch(fd):
        writes.append(fd)
        if len(writes) > 8:  # config.yaml and epoch 1's three files went through (each: file + directory fsync)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fails_in_the_second_epoch)
    out = tmp_path / "full"
    assert main(["train", "poisson-inverse", "--quiet", "--out", str(out), "train.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "intact" in err
    assert not [p for p in out.rglob("*") if io.is_temporary(p)]


# ------------------------------------------------------------------------------ numerical faults
class _ToyTask(OneParameterTask):
    """w → loss; a fault is injected by the hooks so each detection point can be exercised."""

    def __init__(self, fault=None):
        super().__init__(torch.ones(3, dtype=torch.float64))
        self.fault = fault
        self.calls = 0

    def train_batches(self, generator):
        batch = torch.ones(2, 3, dtype=torch.float64)
        if self.fault == "input":
            batch[1, 2] = math.inf
        return [batch]

    def loss(self, batch, budgets):
        self.calls += 1
        bad = self.calls == 2 and budgets["linear"] < 5  # epoch 1, first attempt at the initial K
        rhs = (self.w * batch).sum(1, keepdim=True)
        if bad and self.fault == "solver":
            rhs = rhs * math.nan  # a diverged network output fed to the solver
        x = solve(lambda v: 2.0 * v, rhs, method="cg", max_iters=budgets["linear"]).solution
        loss = (x - 1.0).pow(2).mean()
        if bad and self.fault == "gradient":
            loss = loss + torch.sqrt(self.w * 0).sum()  # value 0, gradient inf·0 = NaN
        return loss

    def validate(self, budgets):
        if self.fault == "validation" and self.calls == 2:
            return math.nan
        return float((self.w.detach() - 1.0).abs().mean())


@pytest.mark.parametrize("fault, where", [("solver", "solver input"), ("gradient", "gradient of parameter 0"),
                                          ("validation", "validation metric")])
def test_non_finite_values_are_caught_where_they_appear(fault, where, tmp_path):
    task = _ToyTask(fault)
    trainer = Trainer(task, {"linear": FixedSchedule(2)},
                      TrainSettings(epochs=3, lr=0.01, progress=False), tmp_path)
    rows = trainer.fit()
    [event] = trainer.guard_events
    assert event["epoch"] == 1 and where in event["where"] and event["old_k"] == 2 and event["new_k"] > 2
    if fault != "validation":
        assert event["step"] == 0
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_metric"]) for r in rows)
    for path in (tmp_path / "checkpoints").iterdir():
        assert io.non_finite_entries(io.load_checkpoint(path)["task"]) == []


def test_non_finite_training_data_is_a_data_error_not_a_divergence(tmp_path):
    trainer = Trainer(_ToyTask("input"), {"linear": FixedSchedule(2)},
                      TrainSettings(epochs=2, progress=False), tmp_path)
    with pytest.raises(FloatingPointError, match="epoch 0, step 0: the training batch contains NaN/inf"):
        trainer.fit()
    assert not (tmp_path / "checkpoints").exists()


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    # an infinite learning rate (the config layer would refuse it; the Trainer API does not) turns
    # finite gradients into infinite weights in the first step
    trainer = Trainer(_ToyTask(), {"linear": FixedSchedule(2)},
                      TrainSettings(epochs=2, optimizer="sgd", lr=math.inf, guard_retries=1, progress=False), tmp_path)
    with pytest.raises(DivergenceError, match="parameter 0 .* after the optimiser step"):
        trainer.fit()
    assert not (tmp_path / "checkpoints").exists()
    trainer.task.w.data.fill_(math.nan)
    with pytest.raises(DivergenceError, match="refusing to checkpoint .* task.w"):
        trainer._checkpoint()
    assert not (tmp_path / "checkpoints").exists()


# ------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("override, fragment", [
    ("physics.n=1000000000", "physics.n"), ("train.lr=inf", "train.lr"), ("train.lr=nan", "train.lr"),
    ("data.train=0", "data.train"), ("net.name=transformer", "net.name"), ("physics.scheme=rk4", "physics.scheme"),
    ("solver.restart=0", "solver.restart"), ("physics.nu_dt=-1", "physics.nu_dt"),
    ("data.validation_rollout=-3", "data.validation_rollout"), ("net.width=0", "net.width"),
])
def test_experiment_keys_are_checked_before_anything_runs(override, fragment, tmp_path):
    with pytest.raises(ConfigError, match=fragment):
        train_run("heat-1d", overrides=[override], out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_resume_rejects_a_tampered_config(tmp_path):
    out = tmp_path / "r"
    train_run("poisson-inverse", overrides=["train.epochs=2"], out=out, progress=False)
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("  epochs: 2", "  epoch: 2"))
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'. Did you mean train.epochs"):
        train_run("poisson-inverse", out=out, resume=True, progress=False)
    (out / "config.yaml").write_text(text.replace("  epochs: 2", "  epochs: two"))
    with pytest.raises(ConfigError, match="'train.epochs' has value 'two'; allowed: an integer"):
        train_run("poisson-inverse", out=out, resume=True, progress=False)


def test_resume_extends_a_run_with_train_epochs_and_records_it(tmp_path, capsys):
    out = tmp_path / "r"
    over = HEAT[1:-2] + ["train.batch_size=5"]  # heat-1d, tiny data, epochs set below
    assert main(["train", "heat-1d", "--quiet", "--out", str(out), *over, "train.epochs=2"]) == 0
    assert main(["train", "heat-1d", "--quiet", "--resume", str(out), "train.epochs=4"]) == 0
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["config"]["train"]["epochs"] == 4
    assert [r["epoch"] for r in io_rows(out)] == [0, 1, 2, 3]
    # the extended run equals one planned for 4 epochs from the start, except the recorded plan
    full = train_run("heat-1d", overrides=over + ["train.epochs=4"], out=tmp_path / "full", progress=False)
    assert faults.differences(faults.comparable_run(tmp_path / "full"), faults.comparable_run(out)) == []
    assert full["epochs"] == 4
    # a plain --resume now follows the recorded plan (nothing left to do), and cannot go below it
    assert main(["train", "heat-1d", "--quiet", "--resume", str(out)]) == 0
    assert len(io_rows(out)) == 4
    capsys.readouterr()
    assert main(["train", "heat-1d", "--quiet", "--resume", str(out), "train.epochs=3"]) == 2
    assert "already completed 4 epochs" in capsys.readouterr().err


@pytest.mark.parametrize("args, fragment", [
    (["train.lr=0.5"], "--resume cannot change train.lr"),
    (["data.train=12"], "--resume cannot change data.train"),
    (["train.epochs=3", "prdp.tau_step=0.5"], "--resume cannot change prdp.tau_step"),
    (["--schedule", "converged"], "--schedule converged does not match"),
    (["--seed", "7"], "--seed 7 does not match"),
    (["--size", "paper"], "--size paper does not match"),
    (["size=paper"], "--size"),
])
def test_resume_refuses_what_it_cannot_change_naming_the_key(args, fragment, tmp_path, capsys):
    out = tmp_path / "r"
    train_run("heat-1d", overrides=HEAT[1:-2] + ["train.batch_size=5", "train.epochs=1"], out=out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "heat-1d", "--quiet", "--resume", str(out), *args]) == 2
    assert fragment in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing trained or written
    # what the run already has may be repeated
    assert main(["train", "heat-1d", "--quiet", "--resume", str(out), "--size", "cpu", "--schedule", "prdp",
                 "--seed", "0", "train.epochs=1", "train.lr=0.001"]) == 0


def test_resume_of_a_run_killed_before_it_started_says_so(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / ".config.yaml.x1y2.tmp").write_text("half")
    with pytest.raises(FileNotFoundError, match="interrupted before it wrote config.yaml"):
        train_run("poisson-inverse", out=out, resume=True, progress=False)
    # a fresh start in the same directory is allowed: only a leftover temporary file is there
    train_run("poisson-inverse", overrides=["train.epochs=1"], out=out, progress=False)
    assert not list(out.glob(".*.tmp"))
