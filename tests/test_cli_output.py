"""What the pdeaccel command prints: --quiet is quiet, warnings are one line, messages name the key."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from pdeaccel.cli import main
from pdeaccel.config import ConfigError
from pdeaccel.experiments.runner import train_run
from pdeaccel.experiments.simulations import simulate

HEAT = ["data.train=10", "data.validation=2", "train.epochs=1", "train.batch_size=5"]


def test_quiet_hides_the_data_generation_progress_bars(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("PDEACCEL_DATA", str(tmp_path / "quiet-data"))
    assert main(["train", "heat-1d", "--quiet", "--out", str(tmp_path / "q"), *HEAT]) == 0
    err = capfd.readouterr().err
    assert "reference" not in err and "\r" not in err, err
    # the same run without --quiet does draw them (the data are generated afresh): the check above can fail
    monkeypatch.setenv("PDEACCEL_DATA", str(tmp_path / "loud-data"))
    assert main(["train", "heat-1d", "--out", str(tmp_path / "l"), *HEAT]) == 0
    assert "heat1d reference" in capfd.readouterr().err


def test_warnings_print_one_line_without_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEACCEL_DATA", str(tmp_path / "data"))
    out = tmp_path / "r"
    train_run("heat-1d", overrides=HEAT[:-2] + ["train.epochs=2", "train.batch_size=5"], out=out, progress=False)
    newest = sorted((out / "checkpoints").glob("epoch_*.ckpt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # damaged: the resume warns and skips it
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default")
    done = subprocess.run([sys.executable, "-m", "pdeaccel.cli", "train", "heat-1d", "--quiet", "--resume", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert any(line.startswith("warning: skipping damaged checkpoint") for line in lines), done.stderr
    assert not [line for line in lines if "warnings.warn" in line or "UserWarning" in line or ".py:" in line], \
        done.stderr


def test_the_short_warning_format_is_installed_only_while_main_runs(tmp_path):
    before = warnings.formatwarning
    import pdeaccel.cli  # noqa: F401  (importing changes nothing)

    assert warnings.formatwarning is before
    seen = []

    def fake_dispatch(args):
        seen.append(warnings.formatwarning("boom", UserWarning, "x.py", 3, "src line"))
        return 0

    import pdeaccel.cli as cli

    original = cli._dispatch
    cli._dispatch = fake_dispatch
    try:
        assert main(["report", str(tmp_path)]) == 0
    finally:
        cli._dispatch = original
    assert seen == ["warning: boom\n"]
    assert warnings.formatwarning is before


def test_a_huge_initial_amplitude_is_refused_naming_the_key(tmp_path):
    # 1e308 used to overflow into the state and surface as "b contains NaN" inside the first solve
    for name, key in (("heat-2d", "init.amplitude"), ("burgers-1d", "init.amplitude"),
                      ("taylor-green", "init.amplitude"), ("ns-2d-turbulence", "init.rms_velocity")):
        with pytest.raises(ConfigError, match=f"'{key}' has value 1e\\+308"):
            simulate(name, steps=1, overrides=["grid.n=8", f"{key}=1e308"], out=tmp_path / name, progress=False)
        assert not (tmp_path / name).exists()


def test_an_unknown_simulate_key_lists_the_simulations_own_keys(tmp_path, capsys):
    assert main(["simulate", "heat-1d", "--out", str(tmp_path / "x"), "init.amplitud=3"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean init.amplitude" in err
    assert "The keys of simulation 'heat-1d' are: seed, batch" in err and "grid.n" in err
    assert "pdeaccel experiments" not in err  # that lists the training experiments' keys
