"""Reliability benchmark: SIGKILLs at random moments, damaged files, malformed inputs.

    .venv/bin/python benchmarks/reliability.py [--kills-per-run 8] [--fuzz-examples 300]
    .venv/bin/python benchmarks/reliability.py --only distributed [--kills-per-distributed-run 4]

1. Kills. Each configuration is first trained once without interruption (in a subprocess, through the
   CLI), then again while being SIGKILLed at random moments — uniform over the uninterrupted run's
   duration, or the instant a checkpoint's temporary file appears (a checkpoint write in progress) —
   and resumed with ``--resume`` after every kill. The finished directories are compared with
   :func:`pdeaccel.testing.faults.comparable_run` (final checkpoint bit for bit, metrics.csv,
   events.json, report.json; only wall-clock fields excluded).
2. Corruptions. Random truncations, bit flips and appended bytes of a checkpoint (each must be
   refused by its checksum) and random bit flips anywhere in a cached HDF5 dataset (each must be
   detected and regenerated, or — if the flip hit unused bytes — load exactly the original data).
3. Malformed inputs: tests/test_fuzz.py with more hypothesis examples; every rejected input must
   get a clear ValueError/TypeError raised by pdeaccel's own checks.
4. Kills of 2-process jobs (``pdeaccel train ... --nproc 2``): each SIGKILL hits the launcher,
   rank 0 (the checkpoint writer; every mid-write kill) or rank 1; the next command starts once
   every process of the job is gone, and resumes with 2 processes. Compared bit for bit like 1
   with an uninterrupted 2-process run (a resume with the same number of processes gets every
   rank's own pool, generator and counters back, and gloo sums two ranks in a fixed order).
   ``--only distributed`` runs this part alone and merges it into the existing results.

Writes benchmarks/results/reliability.md and reliability.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from pdeaccel.experiments import data as data_mod
from pdeaccel.testing import faults
from pdeaccel.train import io

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SLOW_WRITES = 0.02  # seconds added to every fsync, so that kills land inside writes often

CONFIGS = {
    "heat-1d prdp": (["heat-1d", "--schedule", "prdp", "data.train=10", "data.validation=2", "train.epochs=12",
                      "train.batch_size=5"]),
    "heat-1d fixed:4": (["heat-1d", "--schedule", "fixed:4", "data.train=10", "data.validation=2", "train.epochs=10",
                         "train.batch_size=5"]),
    "poisson-inverse prdp": (["poisson-inverse", "--schedule", "prdp", "train.epochs=10"]),
    "burgers-1d prdp + Picard": (["burgers-1d", "--schedule", "prdp", "physics.n=16", "data.train=6", "data.validation=2",
                                  "train.epochs=8", "train.batch_size=3", "net.hidden=4", "net.blocks=1",
                                  "picard.refine=true", "picard.converged=3"]),
    # the physics-constrained flow pool: its environments, states and resets are checkpointed too
    "flow-2d pool": (["flow-2d", "physics.length=16", "physics.height=8", "pool.size=4", "net.hidden=4",
                      "net.levels=2", "data.validation=2", "data.validation_steps=2", "train.steps_per_epoch=3",
                      "train.batch_size=2", "train.epochs=8"]),
}


# 2-process jobs: data-parallel (sharded batches), per-rank flow pools, NeuralStagger split over the ranks
FLOW_SMALL = ["physics.length=16", "physics.height=8", "pool.size=4", "net.hidden=4", "data.validation=2",
              "data.validation_steps=2", "train.steps_per_epoch=3", "train.batch_size=2", "train.epochs=8"]
DIST_CONFIGS = {
    "heat-1d prdp, 2 processes": CONFIGS["heat-1d prdp"],
    "flow-2d pool, 2 processes": CONFIGS["flow-2d pool"],
    "flow-2d-s2t1 sub-solvers split over 2 ranks": ["flow-2d-s2t1", *FLOW_SMALL, "net.levels=1", "--sub-solver-ranks",
                                                    "2"],
}
DIST_TARGETS = ("launcher", "rank 0", "rank 1")


def kill_campaign(work: Path, kills_per_run: int, rng: random.Random, configs: dict | None = None,
                  nproc: int = 1) -> list[dict]:
    results = []
    for label, args in (CONFIGS if configs is None else configs).items():
        ref = work / f"{label.replace(' ', '_').replace(',', '')}-reference"
        start = time.perf_counter()
        faults.run_with_kills(args, ref, [], slow_writes=SLOW_WRITES, nproc=nproc)
        duration = time.perf_counter() - start
        killed = work / f"{label.replace(' ', '_').replace(',', '')}-killed"
        moments = faults.random_moments(kills_per_run, duration, rng, mid_write_share=0.35,
                                        targets=DIST_TARGETS if nproc > 1 else ())
        start = time.perf_counter()
        kills = faults.run_with_kills(args, killed, moments, slow_writes=SLOW_WRITES, nproc=nproc)
        diff = faults.differences(faults.comparable_run(ref), faults.comparable_run(killed))
        epochs = len(faults.comparable_run(ref)["metrics"])
        results.append({"config": label, "uninterrupted_seconds": duration,
                        "killed_seconds": time.perf_counter() - start, "epochs": epochs,
                        "kills": faults.kills_as_dicts(kills), "differences": diff})
        print(f"{label}: {len(kills)} kills, {len(diff)} differences", flush=True)
    return results


def checkpoint_corruptions(work: Path, count: int, rng: random.Random) -> dict:
    path = work / "epoch_00001.ckpt"
    state = {"w": torch.randn(64, 64), "step": 7, "rows": [{"k": 2, "val": 0.5}]}
    io.save_checkpoint(path, state)
    original = path.read_bytes()
    tried = {"truncation": 0, "bit flip": 0, "appended bytes": 0}
    refused = dict.fromkeys(tried, 0)
    accepted_wrong = 0
    for i in range(count):
        kind = ("truncation", "bit flip", "appended bytes")[i % 3]
        if kind == "truncation":
            damaged = original[:rng.randrange(len(original))]
        elif kind == "bit flip":
            at = rng.randrange(len(original))
            damaged = original[:at] + bytes([original[at] ^ (1 << rng.randrange(8))]) + original[at + 1:]
        else:
            damaged = original + os.urandom(rng.randint(1, 64))
        path.write_bytes(damaged)
        tried[kind] += 1
        try:
            io.load_checkpoint(path)
            accepted_wrong += 1  # every byte is covered by the magic, the digest or the checksummed payload
        except ValueError:
            refused[kind] += 1
    return {"tried": tried, "refused": refused, "accepted": accepted_wrong}


def dataset_corruptions(work: Path, count: int, rng: random.Random) -> dict:
    os.environ[data_mod.DATA_ENV] = str(work / "data")
    fresh = torch.randn(6, 3, 1, 16)
    cfg = {"benchmark": "reliability"}
    data_mod.cached_trajectories("bench", cfg, lambda: fresh.clone(), shape=fresh.shape, dtype=fresh.dtype)
    path = next((work / "data").glob("bench-*.h5"))
    original = path.read_bytes()
    outcome = {"detected and regenerated": 0, "harmless (identical data loaded)": 0, "wrong data loaded": 0}
    for _ in range(count):
        at = rng.randrange(len(original))
        path.write_bytes(original[:at] + bytes([original[at] ^ (1 << rng.randrange(8))]) + original[at + 1:])
        regenerated = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = data_mod.cached_trajectories("bench", cfg, lambda: regenerated.append(1) or fresh.clone(),
                                               shape=fresh.shape, dtype=fresh.dtype)
        if not torch.equal(got, fresh):
            outcome["wrong data loaded"] += 1
        elif regenerated:
            assert any("unusable" in str(w.message) for w in caught)
            outcome["detected and regenerated"] += 1
        else:
            outcome["harmless (identical data loaded)"] += 1
        path.write_bytes(original)
    return {"tried": count, **outcome}


def fuzz(examples: int, work: Path) -> dict:
    stats = work / "fuzz.json"
    env = {**os.environ, "PDEACCEL_FUZZ_EXAMPLES": str(examples), "PDEACCEL_FUZZ_STATS": str(stats),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    tally = json.loads(stats.read_text()) if stats.exists() else {}
    per_test: dict[str, dict[str, int]] = {}
    for key, n in tally.items():
        test, kind = key.split("|")
        per_test.setdefault(test, {})[kind] = n
    return {"examples_per_test": examples, "pytest_exit_code": done.returncode,
            "pytest_summary": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:],
            "per_test": per_test}


def write_report(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(result, indent=2) + "\n")
    kills = [k for r in result["kills"] for k in r["kills"]]
    landed = [k for k in kills if not k["finished_before_kill"]]
    ckpt_hits = [k for k in landed if any(w.endswith(".ckpt") for w in k["interrupted_writes"])]
    other_hits = [k for k in landed if k["interrupted_writes"] and k not in ckpt_hits]
    resumed_kills = [k for k in landed if k["resumed"]]
    lines = ["# Reliability: kills, damaged files, malformed inputs", "",
             f"`{result['command']}` ({result['date']}, {result['seconds']:.0f} s, one torch thread, 2 shared cores).",
             "", "## SIGKILL and resume", "",
             f"{len(kills)} SIGKILLs in {len(result['kills'])} training runs ({len(landed)} hit a live process; "
             f"{len(ckpt_hits)} inside a checkpoint write, {len(other_hits)} inside another atomic write "
             f"(config.yaml, metrics.csv, events.json, a figure), {len(resumed_kills)} killed a `--resume` itself). "
             "Every run was then resumed to the end and compared with an uninterrupted run of the same command: "
             "final checkpoint bit for bit (weights, optimiser, PRDP/Picard schedule state, RNG, ledger counts), "
             "metrics.csv, events.json and report.json, wall-clock fields excluded.", "",
             "| configuration | epochs | kills | in a checkpoint write | uninterrupted s | with kills s | differences |",
             "|---|---|---|---|---|---|---|"]
    for r in result["kills"]:
        hits = sum(any(w.endswith(".ckpt") for w in k["interrupted_writes"]) for k in r["kills"])
        lines.append(f"| {r['config']} | {r['epochs']} | {len(r['kills'])} | {hits} | {r['uninterrupted_seconds']:.1f} "
                     f"| {r['killed_seconds']:.1f} | {len(r['differences'])} |")
    c, d, f = result["checkpoint_corruptions"], result["dataset_corruptions"], result["fuzz"]
    total_fuzz = {k: sum(t.get(k, 0) for t in f["per_test"].values())
                  for k in ("accepted", "rejected with a clear error")}
    lines += ["", "## Damaged files", "",
              f"Checkpoints: {sum(c['tried'].values())} damaged copies "
              f"({', '.join(f'{n} {k}' for k, n in c['tried'].items())}); refused by the checksum: "
              f"{sum(c['refused'].values())}; accepted: {c['accepted']}.", "",
              f"Cached HDF5 dataset: {d['tried']} single-bit flips at random offsets; detected and regenerated: "
              f"{d['detected and regenerated']}; flips in unused bytes that still loaded the identical data: "
              f"{d['harmless (identical data loaded)']}; wrong data loaded: {d['wrong data loaded']}.", "",
              "## Malformed inputs (hypothesis, tests/test_fuzz.py)", "",
              f"{f['examples_per_test']} examples per entry point; {total_fuzz['rejected with a clear error']} calls "
              f"rejected with a clear ValueError/TypeError raised by a pdeaccel check, {total_fuzz['accepted']} "
              f"valid calls accepted (and their results checked); pytest: `{f['pytest_summary']}`.", "",
              "| entry point | rejected clearly | accepted |", "|---|---|---|"]
    for test, t in sorted(f["per_test"].items()):
        lines.append(f"| {test.removeprefix('test_')} | {t.get('rejected with a clear error', 0)} | "
                     f"{t.get('accepted', 0)} |")
    lines += _distributed_section(result.get("distributed"))
    lines += ["", f"Nothing lost or silently accepted: **{'yes' if result['all_good'] else 'NO'}**.", ""]
    (RESULTS / "reliability.md").write_text("\n".join(lines))


def _distributed_section(dist: dict | None) -> list[str]:
    if not dist:
        return []
    kills = [k for r in dist["kills"] for k in r["kills"]]
    landed = [k for k in kills if not k["finished_before_kill"]]
    by_target = {t: sum(k["target"] == t for k in landed) for t in DIST_TARGETS}
    ckpt_hits = [k for k in landed if any(w.endswith(".ckpt") for w in k["interrupted_writes"])]
    gone = [k["job_gone_seconds"] for k in landed if k["job_gone_seconds"] is not None]
    lines = ["", "## SIGKILL and resume, 2-process jobs", "",
             f"`{dist['command']}` ({dist['date']}, {dist['seconds']:.0f} s; both ranks and the launcher on the same "
             "2 shared cores, one torch thread each).", "",
             f"{len(kills)} SIGKILLs in {len(dist['kills'])} `pdeaccel train ... --nproc 2` runs ({len(landed)} hit a "
             f"live job: {by_target['launcher']} the launcher, {by_target['rank 0']} rank 0 (the checkpoint writer), "
             f"{by_target['rank 1']} rank 1; after {len(ckpt_hits)} an interrupted checkpoint write, a temporary file, was "
             "left in the directory (a kill in the write, or the leftover of an earlier one the killed resume had not "
             "cleared yet); "
             f"{sum(k['resumed'] for k in landed)} killed a `--resume` itself). After each kill the next command "
             "started only once every process of the job was gone "
             f"(at most {max(gone, default=0):.1f} s after the kill; processes still alive after 30 s: "
             f"{sum(k['leftovers_killed'] for k in kills)}); every run was resumed with 2 processes to the end and "
             "compared with an uninterrupted 2-process run of the same command as above: final checkpoint bit for "
             "bit (weights, optimiser, schedules, RNG, ledger, the merged pool with every rank's own generator), "
             "metrics.csv, events.json, report.json, wall-clock fields excluded. A resume with *another* number of "
             "processes is not compared bit for bit: its gradient sums run in another order and its pools are "
             "re-split (tests/test_distributed.py checks it to float tolerance).", "",
             "| configuration | epochs | kills (launcher / rank 0 / rank 1) | checkpoint .tmp left | "
             "uninterrupted s | with kills s | differences |", "|---|---|---|---|---|---|---|"]
    for r in dist["kills"]:
        hit = [k for k in r["kills"] if not k["finished_before_kill"]]
        split = " / ".join(str(sum(k["target"] == t for k in hit)) for t in DIST_TARGETS)
        hits = sum(any(w.endswith(".ckpt") for w in k["interrupted_writes"]) for k in r["kills"])
        lines.append(f"| {r['config']} | {r['epochs']} | {len(r['kills'])} ({split}) | {hits} | "
                     f"{r['uninterrupted_seconds']:.1f} | {r['killed_seconds']:.1f} | {len(r['differences'])} |")
    return lines


def distributed_campaign(kills_per_run: int, seed: int) -> dict:
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="pdeaccel-reliability-dist-"))
    os.environ[data_mod.DATA_ENV] = str(work / "data")
    try:
        kills = kill_campaign(work, kills_per_run, random.Random(seed + 1), DIST_CONFIGS, nproc=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"command": "python benchmarks/reliability.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
            "seconds": time.perf_counter() - start, "kills": kills,
            "all_good": all(not r["differences"] and not any(k["leftovers_killed"] for k in r["kills"])
                            for r in kills)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills-per-run", type=int, default=8)
    parser.add_argument("--corruptions", type=int, default=300)
    parser.add_argument("--fuzz-examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--kills-per-distributed-run", type=int, default=4)
    parser.add_argument("--only", choices=("distributed",), default=None,
                        help="run only the 2-process kill campaign and merge it into the existing results")
    args = parser.parse_args()
    if args.only == "distributed":
        previous = json.loads((RESULTS / "reliability.json").read_text())
        dist = distributed_campaign(args.kills_per_distributed_run, args.seed)
        previous["distributed"] = dist
        previous["single_all_good"] = previous.get("single_all_good", previous["all_good"])
        previous["all_good"] = previous["single_all_good"] and dist["all_good"]
        write_report(previous)
        print((RESULTS / "reliability.md").read_text())
        return 0 if previous["all_good"] else 1
    rng = random.Random(args.seed)
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="pdeaccel-reliability-"))
    os.environ[data_mod.DATA_ENV] = str(work / "data")
    try:
        kills = kill_campaign(work, args.kills_per_run, rng)
        ckpt = checkpoint_corruptions(work, args.corruptions, rng)
        data = dataset_corruptions(work, args.corruptions, rng)
        fz = fuzz(args.fuzz_examples, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    single_good = (all(not r["differences"] for r in kills) and ckpt["accepted"] == 0
                   and data["wrong data loaded"] == 0 and fz["pytest_exit_code"] == 0)
    dist = distributed_campaign(args.kills_per_distributed_run, args.seed)
    result = {"command": "python benchmarks/reliability.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "seconds": time.perf_counter() - start, "seed": args.seed,
              "slow_writes_seconds": SLOW_WRITES, "kills": kills, "checkpoint_corruptions": ckpt,
              "dataset_corruptions": data, "fuzz": fz, "single_all_good": single_good, "distributed": dist,
              "all_good": single_good and dist["all_good"]}
    write_report(result)
    print((RESULTS / "reliability.md").read_text())
    return 0 if all_good else 1


if __name__ == "__main__":
    sys.exit(main())
