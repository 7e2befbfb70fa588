"""Benchmark result files are portable: no absolute paths of the machine they were made on."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _strings(obj, where=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{where}[{i}]")
    elif isinstance(obj, str):
        yield where, obj


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_result_files_hold_no_absolute_paths_into_a_checkout(path):
    data = json.loads(path.read_text())
    for where, text in _strings(data):
        if where.endswith(".run_dir"):
            assert not Path(text).is_absolute(), f"{path.name}{where} = {text!r} (store it relative to the repository)"
        for token in text.split():
            # /work/main/benchmarks/..., /home/x/pdeaccel/runs/...: a path into someone's checkout
            assert not (token.startswith("/") and any(f"/{d}/" in token for d in ("benchmarks", "runs", "src"))), \
                f"{path.name}{where} holds the absolute path {token!r}"


def test_the_prdp_benchmark_writes_run_dirs_relative_to_the_repository(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("prdp_benchmark", REPO / "benchmarks" / "prdp.py")
    prdp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prdp)
    repo = tmp_path / "checkout"  # stands in for the repository, so nothing is written into the real one
    monkeypatch.setattr(prdp, "REPO", repo)
    monkeypatch.setattr(prdp, "CACHE", repo / "benchmarks" / "cache" / "prdp")
    real_compare = prdp.compare
    monkeypatch.setattr(prdp, "compare", lambda name, **kw: real_compare(name, overrides=["train.epochs=3"], **kw))
    monkeypatch.setenv("PDEACCEL_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert prdp.main(["--rows", "poisson-inverse:cpu", "--seeds", "1", "--results", str(tmp_path / "results")]) == 0
    stored = json.loads((tmp_path / "results" / "prdp.json").read_text())
    assert not any(str(tmp_path) in c for c in stored["command"])  # where this machine kept the results
    run_dir = stored["rows"]["poisson-inverse:cpu"]["run_dir"]
    assert run_dir.startswith("benchmarks/cache/prdp/poisson-inverse-"), run_dir
    assert (repo / run_dir / "compare.json").exists()
    # the stored (relative) run directory is still found when the markdown is rendered again
    monkeypatch.chdir(REPO)
    d = stored["rows"]["poisson-inverse:cpu"]
    for s in d["seeds"]:
        s.pop("wall_train_savings_robust")  # forces robust_wall to read the runs' ledgers
    assert len(prdp.robust_wall(d)) == 1
