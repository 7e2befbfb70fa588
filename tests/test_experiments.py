"""Every built-in PRDP experiment runs end to end at a tiny size through the runner and the CLI."""

from __future__ import annotations

import json

import pytest

from pdeaccel.cli import main
from pdeaccel.config import ConfigError
from pdeaccel.experiments.registry import get_experiment, list_experiments
from pdeaccel.experiments.runner import compare, resolve_config, sweep, train_run

TINY = {
    "poisson-inverse": ["train.epochs=4"],
    "poisson-inverse-3": ["train.epochs=4"],
    "heat-1d": ["data.train=10", "data.validation=2", "train.epochs=3", "train.batch_size=5"],
    "heat-2d": ["physics.n=8", "data.train=6", "data.validation=2", "train.epochs=3", "train.batch_size=3"],
    "heat-3d": ["physics.n=5", "data.train=4", "data.validation=2", "train.epochs=2", "train.batch_size=2",
                "net.hidden=4", "net.blocks=1"],
    "burgers-1d": ["physics.n=16", "data.train=6", "data.validation=2", "train.epochs=2", "train.batch_size=3",
                   "net.hidden=4", "net.blocks=1"],
    "ns-2d": ["physics.n=6", "physics.warmup_steps=1", "data.train=2", "data.train_steps=3", "data.validation=1",
              "data.validation_rollout=2", "train.epochs=2", "train.batch_size=2", "net.hidden=4", "net.blocks=1"],
}


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEACCEL_DATA", str(tmp_path / "data"))


def test_every_experiment_has_a_tiny_configuration_here():
    # experiments without a solver in the loop (flow-2d, flow-3d) have their own in test_flow_model.py
    assert sorted(TINY) == sorted(e.name for e in list_experiments() if e.solver_in_loop)
    from pdeaccel.experiments.flow import STAGGER_SETTINGS
    assert {e.name for e in list_experiments() if not e.solver_in_loop} == {"flow-2d", "flow-3d", *STAGGER_SETTINGS}


@pytest.mark.parametrize("name", sorted(TINY))
def test_experiment_trains_and_writes_its_run_directory(name, tmp_path):
    out = tmp_path / "run"
    summary = train_run(name, schedule="prdp", overrides=TINY[name], out=out, progress=False)
    for f in ("config.yaml", "metrics.csv", "report.md", "report.json", "training.png", "events.json"):
        assert (out / f).exists(), f
    assert summary["epochs"] == int(dict(o.split("=") for o in TINY[name])["train.epochs"])
    assert summary["k_converged"] >= 1
    k0 = get_experiment(name).config()["prdp"]["k0"]
    # the first epoch runs K0 iterations per solve, so the forward count is a multiple of K0
    assert summary["forward_iters"] >= k0
    report = json.loads((out / "report.json").read_text())
    assert report["final_val_metric"] == summary["final_val_metric"]


def test_fixed_schedule_counts_exactly_k_per_solve(tmp_path):
    s = train_run("heat-1d", schedule="fixed:7", overrides=TINY["heat-1d"], out=tmp_path / "r", progress=False)
    # 10 trajectories of 3 states -> 10 windows, batch 5 -> 2 steps an epoch, one forward + one adjoint solve each
    assert s["forward_iters"] == 3 * 2 * 7 and s["backward_iters"] == 3 * 2 * 7


def test_compare_reports_the_papers_savings_definitions(tmp_path):
    data = compare("poisson-inverse", seeds=2, overrides=["train.epochs=6"], out=tmp_path / "c", progress=False)
    for seed in data["seeds"]:
        assert seed["total"] == pytest.approx(seed["ic"] + seed["pr"])
    md = (tmp_path / "c" / "report.md").read_text()
    assert "| paper |" in md and "pdeaccel (ours)" in md
    assert (tmp_path / "c" / "comparison.png").stat().st_size > 1000


def test_sweep_writes_a_figure(tmp_path):
    data = sweep("poisson-inverse", [10, 40], overrides=["train.epochs=3"], out=tmp_path / "s", progress=False)
    assert len(data["finals"]) == 2
    assert (tmp_path / "s" / "sweep.png").exists()


def test_resume_continues_a_finished_prefix(tmp_path):
    out = tmp_path / "r"
    train_run("poisson-inverse", schedule="prdp", overrides=["train.epochs=5"], out=out, progress=False)
    full = train_run("poisson-inverse", schedule="prdp", overrides=["train.epochs=5"], out=tmp_path / "f",
                     progress=False)
    again = train_run("poisson-inverse", schedule="prdp", out=out, resume=True, progress=False)
    assert again["final_val_metric"] == full["final_val_metric"]


@pytest.mark.parametrize("overrides, fragment", [
    (["train.epoch=3"], "Did you mean train.epochs"),
    (["prdp.tau_step=1.5"], "prdp.tau_step"),
    (["prdp.k0=700"], "k0"),
    (["solver.method=lu"], "solver.method"),
    (["train.epochs=many"], "expected an integer"),
])
def test_bad_configs_fail_at_once_naming_the_key(overrides, fragment, tmp_path):
    with pytest.raises(ConfigError, match=fragment):
        train_run("poisson-inverse", overrides=overrides, out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_size_is_chosen_with_the_flag_not_a_size_override(tmp_path, capsys):
    # size=paper used to write "size: paper" into config.yaml while keeping every cpu value
    for over in (["size=paper"], ["size=cpu"], ["experiment=heat-2d"]):
        with pytest.raises(ConfigError, match="--size|NAME argument"):
            resolve_config("heat-3d", overrides=over)
    assert main(["train", "heat-3d", "--out", str(tmp_path / "x"), "size=paper"]) == 2
    assert "the size is chosen with --size" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    paper = resolve_config("heat-3d", "paper")  # what --size paper selects: the paper values, labelled so
    assert paper["size"] == "paper" and paper["physics"]["n"] == 32 != resolve_config("heat-3d")["physics"]["n"]


def test_unknown_experiment_suggests_names():
    with pytest.raises(ConfigError, match="Did you mean heat-2d"):
        resolve_config("heat2d")


def test_existing_run_directory_is_never_overwritten(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already holds files"):
        train_run("poisson-inverse", overrides=["train.epochs=2"], out=out, progress=False)
    assert (out / "precious.txt").read_text() == "keep me"


def test_cli_lists_and_reports_errors(capsys, tmp_path):
    assert main(["experiments"]) == 0
    assert "heat-2d" in capsys.readouterr().out
    assert main(["experiments", "heat-1d"]) == 0
    assert "prdp.tau_step" in capsys.readouterr().out
    assert main(["train", "heat-1d", "--out", str(tmp_path / "x"), "train.epoch=2"]) == 2
    assert "Did you mean train.epochs" in capsys.readouterr().err


def test_cli_train_then_report(capsys, tmp_path):
    out = tmp_path / "cli"
    assert main(["train", "poisson-inverse", "--schedule", "fixed:20", "--out", str(out), "--quiet",
                 "train.epochs=3"]) == 0
    assert "final validation metric" in capsys.readouterr().out
    (out / "training.png").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "training.png").exists()


def test_burst_filtered_wall_clock_uses_the_median_per_budget():
    from pdeaccel.experiments.runner import robust_train_seconds

    epochs = [{"k": 2, "train_seconds": 1.0}, {"k": 2, "train_seconds": 9.0}, {"k": 2, "train_seconds": 1.2},
              {"k": 4, "train_seconds": 2.0}]
    # the 9 s burst is replaced by the K=2 median (1.2 s); the K=4 epoch keeps its own time
    assert robust_train_seconds({"epochs": epochs}) == pytest.approx(3 * 1.2 + 2.0)


def test_picard_count_is_refined_beside_k_and_counted(tmp_path):
    over = TINY["burgers-1d"] + ["picard.refine=true", "picard.converged=3", "train.epochs=3"]
    prdp = train_run("burgers-1d", schedule="prdp", overrides=over, out=tmp_path / "p", progress=False)
    conv = train_run("burgers-1d", schedule="converged", overrides=over, out=tmp_path / "c", progress=False)
    assert prdp["picard_final"] >= 1 and conv["picard_final"] == 3
    # every training step of the converged run does 3 Picard iterations, i.e. 3 forward solves
    epochs = conv["ledger"]["epochs"]
    assert all(e["solves"] == 3 * e["steps"] for e in epochs)
    first = prdp["ledger"]["epochs"][0]
    assert first["solves"] == 1 * first["steps"]  # PRDP starts at picard.k0 = 1
    with pytest.raises(ConfigError, match="picard.converged"):
        train_run("burgers-1d", overrides=TINY["burgers-1d"] + ["picard.converged=0"], out=tmp_path / "x",
                  progress=False)


def test_divergence_guard_catches_the_real_k1_divergence_of_heat_1d(tmp_path):
    """heat-1d at K = 1 diverges for real (implicit gradients of a Jacobi step whose Jacobian has
    negative eigenvalues; benchmarks/prdp_guard.py): the loss grows a few-fold per epoch and
    exceeds 1000× its best in epoch 11. The guard restores the best state, doubles K and training
    goes on; with the explosion test off the loss keeps growing."""
    over = ["train.epochs=13"]
    guarded = train_run("heat-1d", schedule="fixed:1", overrides=over, out=tmp_path / "on", progress=False)
    events = json.loads((tmp_path / "on" / "events.json").read_text())
    [event] = events["divergence_guard"]
    assert "best epoch" in event["where"] and event["old_k"] == 1 and event["new_k"] == 2 and event["raised"]
    assert guarded["k_final"] == 2 and guarded["final_val_metric"] < 1.0
    unguarded = train_run("heat-1d", schedule="fixed:1", overrides=over + ["train.guard_factor=1e300"],
                          out=tmp_path / "off", progress=False)
    assert unguarded["k_final"] == 1 and unguarded["final_val_metric"] > 1e4 * guarded["final_val_metric"]


def test_ns_picard_count_is_refined_and_validation_uses_the_converged_count(tmp_path):
    over = TINY["ns-2d"] + ["picard.refine=true", "picard.converged=3"]
    prdp = train_run("ns-2d", schedule="prdp", overrides=over, out=tmp_path / "p", progress=False)
    conv = train_run("ns-2d", schedule="converged", overrides=over, out=tmp_path / "c", progress=False)
    assert prdp["picard_final"] >= 1 and conv["picard_final"] == 3 and conv["sum_picard"] == 3 * conv["epochs"]
    # 2 trajectories of 4 states give 4 windows of 3 (unroll 2), batch 2: 2 optimiser steps of 2 coarse steps,
    # each 3 (converged) or 1 (PRDP's first epoch) coupled solves; validation (1 trajectory, 2 steps) runs the
    # converged 3 Picard solves per step in both runs
    for run, picard in ((conv, 3), (prdp, 1)):
        first = run["ledger"]["epochs"][0]
        assert first["solves"] == 4 * picard and first["val_solves"] == 2 * 3
