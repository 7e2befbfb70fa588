"""Data-parallel training throughput with 1 and 2 processes (torch.distributed, gloo, CPU).

Each workload is trained with the same global batch by ``pdeaccel train ... --nproc N`` (N = 1
runs in-process, N > 1 through torchrun's launcher, one OpenMP thread per process). The runs are
interleaved (1, 2, 1, 2, ...) so that both process counts see the same background load, and
medians over the repeats are reported. Throughput is training samples (emulator windows, or
flow-pool environments) per second of training time as rank 0's ledger measures it (validation,
checkpoints, process start-up and data loading excluded); the wall time of the whole command is
reported beside it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributed.py [--repeats 3] [--nproc 1,2]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributed.py --stagger-only [--repeats 3]

NeuralStagger (``--stagger-only`` runs just this part and merges it into the existing results):

* **Latency per window**: one full-resolution model call (T fine steps, batch 1, inference) with
  the sub-solvers spread over 2 processes (``StaggeredFlowSolver`` placed as in training:
  decompose, each rank's share, one all-gather, reassemble), against one coarse sub-solver alone
  on its own sub-field (a coarse simulation) and all sub-solvers in one process. The paper's claim
  is that the full resolution costs what one sub-solver costs: the ideal ratio (split / one alone)
  is 1 with one sub-solver per process. Two models: the 2-sub-solver split (stride 2 along x only,
  T = 1: one per rank) and flow-2d-s2t1 (4 sub-solvers: 2 per rank, ideal ratio 2 with 2
  processes). Calls start together (a barrier before each); medians over the calls of rank 0.
* **Training throughput** of flow-2d-s2t1: 1 process, 2 processes with the sub-solvers split
  (``--sub-solver-ranks 2``: one model, its pool and batch shared), and 2 processes data parallel.

Writes ``benchmarks/results/distributed.md`` + ``.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# (label, experiment, schedule, overrides, training samples per epoch, what a sample is)
WORKLOADS = [
    ("heat-1d: MLP 30→30, Jacobi K = 24, batch 25", "heat-1d", "fixed:24", ["train.epochs=20"], 200, "window"),
    ("heat-3d: conv ResNet on 12³, Jacobi K = 30, batch 20", "heat-3d", "fixed:30", ["train.epochs=6"], 100, "window"),
    ("flow-2d: U-Net on 64×32, pool 64, batch 8", "flow-2d", None,
     ["train.epochs=2", "train.steps_per_epoch=20"], 20 * 8, "environment"),
]


def run_once(experiment: str, schedule: str | None, overrides: list[str], nproc: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "pdeaccel", "train", experiment, "--quiet", "--out", str(out), "--nproc", str(nproc),
           *(["--schedule", schedule] if schedule else []), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"train_seconds": report["train_seconds"], "epochs": report["epochs"], "wall_seconds": wall,
            "load_before": load, "final_val_metric": report["final_val_metric"],
            "world_size": report.get("world_size", 1)}


# ----------------------------------------------------------------------------- NeuralStagger
STAGGER_CALLS = 60


def _stagger_models():
    """(label, model, sub-solvers) on flow-2d-s2t1's cpu channel (64 x 32) and network sizes."""
    from pdeaccel.experiments.flow import build_model
    from pdeaccel.experiments.runner import resolve_config
    from pdeaccel.stagger import StaggeredFlowSolver

    cfg = resolve_config("flow-2d-s2t1")
    torch.manual_seed(0)
    s2t1 = build_model(cfg)
    n = cfg["net"]
    half = StaggeredFlowSolver(2, stride=(2, 1), window=1, hidden=n["hidden"], levels=n["levels"],
                               kernel_size=n["kernel_size"], shared_weights=True, **{
                                   f"{k}_scale": v for k, v in s2t1.scales.items()},
                               **{f"{k}_bound": v for k, v in s2t1.bounds.items()})
    for model in (half, s2t1):  # a trained model's outputs are not zero: give the layers values
        with torch.no_grad():
            for prm in model.parameters():
                prm.add_(0.05 * torch.randn_like(prm))
        model.eval()
    return cfg, [("stride 2 along x, T = 1 (2 sub-solvers: 1 per process)", half),
                 ("flow-2d-s2t1: stride 2, T = 1 (4 sub-solvers: 2 per process)", s2t1)]


def _timed(fn, calls: int, barrier=None) -> list[float]:
    times = []
    for _ in range(calls):
        if barrier is not None:
            barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _stagger_latency_worker(rank: int, port: int, repeats: int, out: str) -> None:
    import torch.distributed as dist

    from pdeaccel.experiments.flow import held_out_environment

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    cfg, models = _stagger_models()
    env = held_out_environment(cfg["physics"], "cylinder")
    result = []
    with torch.no_grad():
        for label, model in models:
            state = model.initial_state(env)
            for _ in range(3):  # a developed state, not the rest state
                state = model(state, env)
            views = model.sub_views(env)
            one = model.decompose_state(state, env, [0])
            times = {"one sub-solver alone": [], "all sub-solvers, 1 process": [], "split over 2 processes": [],
                     "all-gather alone": []}
            # the split call's communication on its own: the same all-gather of each rank's new sub-fields
            share = model.decompose_state(state, env, model.rank_indices(rank, 2))
            flat = torch.cat([t.flatten() for pair in zip(share.potential, share.pressure) for t in pair])
            bufs = [torch.empty_like(flat) for _ in range(2)]
            for _ in range(repeats):  # interleaved: every variant sees the same background load
                dist.barrier()
                if rank == 0:  # rank 1 waits at the barrier: one process computes
                    times["one sub-solver alone"] += _timed(lambda: model.step_subset(one, views), STAGGER_CALLS)
                    times["all sub-solvers, 1 process"] += _timed(lambda: model(state, env), STAGGER_CALLS)
                dist.barrier()
                times["split over 2 processes"] += _timed(lambda: model.distributed_forward(state, env),
                                                          STAGGER_CALLS, dist.barrier)
                times["all-gather alone"] += _timed(lambda: dist.all_gather(bufs, flat), STAGGER_CALLS, dist.barrier)
            split = model.distributed_forward(state, env)
            full = model(state, env)
            # a shared network called on 1 sub-solver per process instead of 2 at once: the same maths,
            # another summation order inside the batched convolution
            diff = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
                       for a, b in ((split.potential, full.potential), (split.pressure, full.pressure)))
            result.append({"model": label, "sub_solvers": model.sub_solvers, "grid": list(env.grid.shape),
                           "sub_grid": list(model.sub_grid(env.grid).shape), "split_vs_one_process_max_rel_diff": diff,
                           "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items() if v},
                           "calls": {k: len(v) for k, v in times.items()}})
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def stagger_latency(repeats: int) -> list[dict]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "latency.json"
        mp.start_processes(_stagger_latency_worker, args=(port, repeats, str(out)), nprocs=2, start_method="spawn")
        rows = json.loads(out.read_text())
    for r in rows:
        m = r["median_ms"]
        r["ratio_split_to_one"] = m["split over 2 processes"] / m["one sub-solver alone"]
        r["ideal_ratio"] = math.ceil(r["sub_solvers"] / 2)
        r["speedup_split_vs_one_process"] = m["all sub-solvers, 1 process"] / m["split over 2 processes"]
        print(f"{r['model']}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in m.items())
              + f"; split / one alone {r['ratio_split_to_one']:.2f} (ideal {r['ideal_ratio']})", flush=True)
    return rows


STAGGER_TRAINING = ("flow-2d-s2t1: shared-weight U-Net on 33×17 sub-grids, pool 64, batch 8", "flow-2d-s2t1",
                    ["train.epochs=2", "train.steps_per_epoch=20"], 20 * 8)
STAGGER_MODES = [("1 process", 1, []), ("2 processes, sub-solvers split", 2, ["--sub-solver-ranks", "2"]),
                 ("2 processes, data parallel", 2, [])]


def stagger_training(repeats: int, tmp: Path) -> dict:
    label, exp, overrides, samples = STAGGER_TRAINING
    runs: dict[str, list[dict]] = {m: [] for m, _, _ in STAGGER_MODES}
    for r in range(repeats):
        for mode, n, extra in STAGGER_MODES:  # interleaved
            res = run_once(exp, None, overrides + extra, n, tmp / f"stagger-{n}-{len(extra)}-{r}")
            res["throughput"] = samples * res["epochs"] / res["train_seconds"]
            runs[mode].append(res)
            print(f"{exp} {mode} repeat {r}: {res['throughput']:.1f} environments/s, train {res['train_seconds']:.2f} s, "
                  f"wall {res['wall_seconds']:.1f} s, load {res['load_before']:.1f}", flush=True)
    med = {m: {k: statistics.median(x[k] for x in v) for k in ("throughput", "train_seconds", "wall_seconds",
                                                              "load_before")} for m, v in runs.items()}
    first = STAGGER_MODES[0][0]
    return {"label": label, "experiment": exp, "overrides": overrides, "samples_per_epoch": samples,
            "modes": [{"mode": m, "nproc": n, "extra_args": e} for m, n, e in STAGGER_MODES], "runs": runs,
            "median": med, "speedup": {m: med[m]["throughput"] / med[first]["throughput"] for m in med}}


def run_stagger(repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="pdeaccel-dist-bench-") as tmp:
        latency = stagger_latency(repeats)
        training = stagger_training(repeats, Path(tmp))
    return {"repeats": repeats, "calls_per_repeat": STAGGER_CALLS, "latency": latency, "training": training,
            "load_average_at_end": list(os.getloadavg()), "date": time.strftime("%Y-%m-%d %H:%M")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nproc", default="1,2")
    parser.add_argument("--only", default=None, help="comma-separated experiments to run (default: all)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--render", action="store_true", help="only rewrite distributed.md from distributed.json")
    parser.add_argument("--stagger-only", action="store_true",
                        help="run only the NeuralStagger part and merge it into the existing distributed.json")
    args = parser.parse_args(argv)
    if args.render:
        out = Path(args.results)
        (out / "distributed.md").write_text(render(json.loads((out / "distributed.json").read_text())))
        return 0
    if args.stagger_only:
        out = Path(args.results)
        data = json.loads((out / "distributed.json").read_text())
        data["stagger"] = run_stagger(args.repeats)
        (out / "distributed.json").write_text(json.dumps(data, indent=2) + "\n")
        (out / "distributed.md").write_text(render(data))
        print(render(data))
        return 0
    nprocs = [int(n) for n in args.nproc.split(",")]
    workloads = [w for w in WORKLOADS if args.only is None or w[1] in args.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pdeaccel-dist-bench-") as tmp:
        for label, exp, schedule, overrides, samples, unit in workloads:
            runs: dict[int, list[dict]] = {n: [] for n in nprocs}
            for r in range(args.repeats):
                for n in nprocs:  # interleaved: both counts see the same background load
                    res = run_once(exp, schedule, overrides, n, Path(tmp) / f"{exp}-{n}-{r}")
                    res["throughput"] = samples * res["epochs"] / res["train_seconds"]
                    runs[n].append(res)
                    print(f"{exp} nproc={n} repeat {r}: {res['throughput']:.1f} {unit}s/s, train "
                          f"{res['train_seconds']:.2f} s, wall {res['wall_seconds']:.1f} s, load {res['load_before']:.1f}",
                          flush=True)
            med = {n: {k: statistics.median(x[k] for x in runs[n]) for k in ("throughput", "train_seconds",
                                                                            "wall_seconds", "load_before")}
                   for n in nprocs}
            rows.append({"label": label, "experiment": exp, "schedule": schedule, "overrides": overrides,
                         "samples_per_epoch": samples, "unit": unit, "runs": {str(n): runs[n] for n in nprocs},
                         "median": {str(n): med[n] for n in nprocs},
                         "speedup": {str(n): med[n]["throughput"] / med[nprocs[0]]["throughput"] for n in nprocs}})
    data = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__, "load_average_at_end": list(os.getloadavg())},
            "repeats": args.repeats, "nproc": nprocs, "workloads": rows, "stagger": run_stagger(args.repeats)}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "distributed.md").write_text(render(data))
    print(render(data))
    return 0


def render(data: dict) -> str:
    nprocs = data["nproc"]
    head = ["workload"] + [f"{n} proc: {u}" for n in nprocs for u in ("samples/s", "train s", "wall s")] + \
           [f"speed-up ×{n}" for n in nprocs[1:]]
    lines = ["# Data-parallel training: throughput with " + " and ".join(map(str, nprocs)) + " processes", "",
             f"Machine: {data['machine']['cpus']} CPU cores, {data['machine']['platform']}, torch "
             f"{data['machine']['torch']}; one OpenMP thread per process; gloo. Medians over "
             f"{data['repeats']} interleaved repeats; same global batch for every process count.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in data["workloads"]:
        m = w["median"]
        cells = [w["label"]]
        for n in nprocs:
            cells += [f"{m[str(n)]['throughput']:.1f}", f"{m[str(n)]['train_seconds']:.2f}",
                      f"{m[str(n)]['wall_seconds']:.1f}"]
        cells += [f"{w['speedup'][str(n)]:.2f}" for n in nprocs[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    loads = [r["load_before"] for w in data["workloads"] for runs in w["runs"].values() for r in runs]
    lines += ["", f"Load average (1 min) before the runs: {min(loads):.1f} to {max(loads):.1f} on "
              f"{data['machine']['cpus']} cores: the machine was shared with several background trainings.", "",
              "What this shows and what it does not:", "",
              "- *samples/s* counts training only (rank 0's ledger: forward, backward, all-reduce, optimiser step); "
              "*wall s* is the whole command, including starting the processes (torchrun's launcher and one Python "
              "+ torch import per rank, several seconds here), building the data and validation.",
              "- On 2 cores that other jobs keep busy, two processes also win a larger share of the cores from the "
              "scheduler than one does, so part of any speed-up is CPU time taken from the background jobs, not "
              "parallel efficiency; on an idle machine the ceiling is 2× and the tiny heat-1d step (an MLP on 30 "
              "points, ~1 ms) is dominated by the two all-reduces per step.",
              "- The workloads with real compute per sample (heat-3d's conv ResNet with 30 Jacobi sweeps, flow-2d's "
              "U-Net) are where data parallelism pays; the numbers say nothing about several machines or GPUs, "
              "which this machine does not have.",
              "", "    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributed.py --repeats "
              f"{data['repeats']}", ""]
    if data.get("stagger"):
        lines += render_stagger(data["stagger"])
    return "\n".join(lines) + "\n"


def render_stagger(st: dict) -> list[str]:
    lines = ["## NeuralStagger: sub-solvers spread over processes", "",
             f"Run {st['date']} (`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributed.py --stagger-only "
             f"--repeats {st['repeats']}`); load average at the end {st['load_average_at_end'][0]:.1f} on 2 cores.", "",
             "### Latency of one full-resolution window (inference, batch 1, held-out cylinder, 64×32)", "",
             "The grid is 66×34 cells (the 64×32 channel and its wall cells). "
             f"Medians of {st['repeats']} × {st['calls_per_repeat']} calls per variant, interleaved. *One sub-solver "
             "alone*: one sub-solver's step on its own sub-field (a coarse simulation: the paper's reference cost). "
             "*All, 1 process*: the whole model's call in one process. *Split over 2 processes*: the same call with "
             "the sub-solvers spread over 2 gloo processes (decompose, each rank's share, one all-gather, "
             "reassemble), every call started by a barrier. The ideal ratio split / one alone is the number of "
             "sub-solvers per process. *All-gather alone*: the split call's communication on its own (the same "
             "buffers, after a barrier). *Max difference*: of the split window from the 1-process one, relative to "
             "the field's largest value (the shared network runs on another batch composition).", "",
             "| model | sub-grid | one sub-solver alone ms | all, 1 process ms | split over 2 processes ms | "
             "all-gather alone ms | split / one alone (ideal) | speed-up of the split over 1 process | "
             "split vs 1 process: max difference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in st["latency"]:
        m = r["median_ms"]
        lines.append(f"| {r['model']} | {'×'.join(map(str, r['sub_grid']))} | {m['one sub-solver alone']:.2f} | "
                     f"{m['all sub-solvers, 1 process']:.2f} | {m['split over 2 processes']:.2f} | "
                     f"{m['all-gather alone']:.2f} | "
                     f"{r['ratio_split_to_one']:.2f} ({r['ideal_ratio']}) | {r['speedup_split_vs_one_process']:.2f} | "
                     f"{r['split_vs_one_process_max_rel_diff']:.1e} |")
    t = st["training"]
    lines += ["", f"### Training throughput: {t['label']}", "",
              "Same global batch in every mode; environments per second of training time (rank 0's ledger), "
              f"medians over {st['repeats']} interleaved repeats.", "",
              "| mode | environments/s | train s | wall s | speed-up |", "|---|---|---|---|---|"]
    for mode in t["modes"]:
        m = t["median"][mode["mode"]]
        args = " ".join(["--nproc", str(mode["nproc"]), *mode["extra_args"]]) if mode["nproc"] > 1 else "(no --nproc)"
        lines.append(f"| {mode['mode']} (`{args}`) | {m['throughput']:.1f} | {m['train_seconds']:.2f} | "
                     f"{m['wall_seconds']:.1f} | {t['speedup'][mode['mode']]:.2f} |")
    loads = [r["load_before"] for runs in t["runs"].values() for r in runs]
    lat = st["latency"]
    lines += ["", "What 2 shared cores allow:", "",
              f"- The machine ran other jobs throughout (load average {min(loads):.1f} to {max(loads):.1f} on 2 "
              "cores), so the two ranks seldom computed at the same time: the split call cost "
              + " and ".join(f"{r['ratio_split_to_one']:.1f}×" for r in lat) + " one sub-solver (ideal "
              + " and ".join(str(r["ideal_ratio"]) for r in lat) + "), of which the all-gather itself took "
              + " and ".join(f"{r['median_ms']['all-gather alone']:.2f} ms" for r in lat)
              + "; the rest is each rank waiting for a core and for the other's share. Decomposing, the "
              "sub-sampled environment and reassembling cost about 0.35 ms per call together (profiled once in one "
              "process). "
              "Nothing here measures the paper's setting, one GPU per sub-solver group, which this machine lacks.",
              "- Training with the split runs one model on both ranks (one pool, one batch), each rank half of "
              "the network work, plus one all-gather per model call and the gradient all-reduce per step; data "
              "parallelism gives each rank its own half of the pool and batch and one all-reduce per step. On "
              "2 busy cores both stay near one process; the split's use is a model whose sub-solvers do not fit "
              "one device's memory or time budget, not these 2 cores.", ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
