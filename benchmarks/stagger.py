"""NeuralStagger against the vanilla physics-constrained flow solver, side by side in one run.

For each setting (a named experiment: ``flow-2d`` is the vanilla solver, ``flow-2d-sStT`` the
staggered one with spatial stride s and temporal stride T; ``flow-3d-s2t1`` in 3D):

- cost, with the setting's cpu-size network (trained or not: the cost is the same): parameters,
  FLOPs per fine time step (convolutions, counted by hooks), sequential network calls per fine
  step (1/T when the s^d·T sub-solvers run in parallel, s^d when they run one after another),
  latency per fine step at batch 1 with every sub-solver in one process, one coarse sub-solver's
  latency per call (what a fully parallel execution costs per window), the latency per window
  with the sub-solvers spread over ``--workers`` processes (torch.distributed, gloo, one thread
  each, the sub-fields all-gathered every call), and throughput at ``--batch``;
- accuracy, for settings given a trained run (``--runs NAME=RUN_DIR``): the held-out cylinder
  and box against MACFlowSolver (``benchmarks/flow.py``'s evaluation: momentum residual,
  boundary error, error against the reference at steps 1/50/500, Strouhal number, wake
  amplitude), and one sub-solver alone (the coarsest simulation) against the reference sampled
  on its lattice;
- a figure: the same flow from one sub-solver, from a quarter of them and from all of them, next
  to the numerical solution.

    .venv/bin/python benchmarks/stagger.py                                     # cost only
    .venv/bin/python benchmarks/stagger.py --runs flow-2d=runs/a,flow-2d-s2t1=runs/b --steps 500

Writes benchmarks/results/stagger.md and stagger.json (and stagger.png with trained runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow import evaluate, timed  # noqa: E402  (benchmarks/flow.py: the held-out evaluation, medians)

from pdeaccel.experiments.flow import build_model, held_out_environment  # noqa: E402
from pdeaccel.experiments.flow_eval import (cell_speed, load_flow_model, potential_of, reference_rollout,  # noqa: E402
                                            velocity_error)
from pdeaccel.experiments.registry import get_experiment  # noqa: E402
from pdeaccel.neural_flow import velocity_from_potential  # noqa: E402
from pdeaccel.physics.flow import FlowEnvironment  # noqa: E402
from pdeaccel.stagger import StaggeredFlowSolver  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ["flow-2d", "flow-2d-s1t1", "flow-2d-s2t1", "flow-2d-s4t1", "flow-2d-s2t2", "flow-2d-s4t2",
            "flow-2d-s1t4", "flow-3d-s2t1"]


def conv_flops(model: torch.nn.Module, run) -> float:
    """Multiply-adds ×2 of every convolution during ``run()``."""
    total = [0.0]

    def hook(mod, inp, out):
        k = math.prod(mod.kernel_size)
        if isinstance(mod, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            total[0] += 2.0 * inp[0].numel() * mod.out_channels * k / mod.groups
        else:
            total[0] += 2.0 * out.numel() * mod.in_channels * k / mod.groups

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d,
             torch.nn.ConvTranspose3d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def as_staggered(model) -> StaggeredFlowSolver | None:
    return model if isinstance(model, StaggeredFlowSolver) else None


def cost(name: str, model, cfg: dict, batch: int, repeats: int) -> dict:
    env = held_out_environment(cfg["physics"], "cylinder")
    T = model.steps_per_call
    st = as_staggered(model)
    state = model.initial_state(env)
    with torch.no_grad():
        model(state, env)
        t_call = timed(lambda: model(state, env), repeats)
    row = {"setting": name, "ndim": cfg["physics"]["ndim"], "stride": st.stride[0] if st else 1, "window": T,
           "sub_solvers": st.sub_solvers if st else 1,
           "parameters": sum(p.numel() for p in model.parameters()),
           "gflop_per_fine_step": conv_flops(model, lambda: model(state, env)) / T / 1e9,
           "latency_per_fine_step_ms": 1e3 * t_call / T,
           "sequential_calls_per_fine_step_parallel": 1.0 / T,
           # one process: a loop over the sub-solvers (separate weights) or one batched call (shared)
           "sequential_calls_per_fine_step_one_process": (len(st.offsets) if st and not st.shared_weights else 1)}
    if st:
        views = st.sub_views(env)
        one = st.decompose_state(state, env, [0])
        with torch.no_grad():
            st.step_subset(one, views)
            t_one = timed(lambda: st.step_subset(one, views), repeats)
        row["one_sub_solver_latency_per_call_ms"] = 1e3 * t_one
    else:
        row["one_sub_solver_latency_per_call_ms"] = 1e3 * t_call
    big = FlowEnvironment.stack([env] * batch)
    big_state = model.initial_state(big)
    with torch.no_grad():
        model(big_state, big)
        t_big = timed(lambda: model(big_state, big), max(1, repeats // 3))
    row["throughput_fine_steps_per_s"] = batch * T / t_big
    return row


# ------------------------------------------------------------------------------ workers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, model, env, calls: int, out) -> None:
    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    state = model.initial_state(env)
    times = []
    with torch.no_grad():
        for _ in range(calls + 2):
            dist.barrier()
            start = time.perf_counter()
            state = model.distributed_forward(state, env)  # own sub-solvers, then one all-gather
            times.append(time.perf_counter() - start)
    if rank == 0:
        out.put(statistics.median(times[2:]))
    dist.barrier()
    dist.destroy_process_group()


def parallel_latency(model: StaggeredFlowSolver, env, workers: int, calls: int) -> float:
    """Median seconds per call (one window) with the sub-solvers spread over ``workers`` processes."""
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(workers, _free_port(), model, env, calls, out), nprocs=workers,
                       start_method="spawn", join=True)
    return out.get()


# ------------------------------------------------------------------------------ training
def training_curve(run_dir: str | Path, steps_per_epoch: int) -> dict | None:
    """A run's validation curve from its metrics.csv: optimiser steps, the validation loss of the
    held-out rollout (mean of L_momentum + β·L_boundary; the same environments, seed and length for
    every setting; the momentum residual alone is no measure of progress: a network that predicts
    no change starts with a small one and a large boundary error), and the cumulative training
    seconds. None when the run has no metrics.csv (an
    exported model)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return None
    rows = list(csv.DictReader(path.open()))
    seconds, total = [], 0.0
    for r in rows:
        total += float(r["train_seconds"])
        seconds.append(total)
    return {"run": str(run_dir), "steps": [(int(r["epoch"]) + 1) * steps_per_epoch for r in rows],
            "residual": [float(r["val_metric"]) for r in rows], "train_seconds": seconds}


def _smoothed(curve: dict, i: int, half: int = 2) -> float:
    """The validation loss around point ``i`` (median of 2·half + 1 epochs: one rollout is noisy)."""
    part = curve["residual"][max(0, i - half):i + half + 1]
    return statistics.median(part)


def training_row(name: str, curve: dict, vanilla: dict | None) -> dict:
    """Validation loss reached, and the vanilla solver's at the same optimiser steps; optimiser steps
    each needs to reach the other's final validation loss."""
    last = len(curve["steps"]) - 1
    row = {"setting": name, "optimiser_steps": curve["steps"][last], "train_hours": curve["train_seconds"][last] / 3600,
           "residual": _smoothed(curve, last)}
    if vanilla:
        j = max((k for k, st in enumerate(vanilla["steps"]) if st <= curve["steps"][last]), default=0)
        row["vanilla_residual_same_steps"] = _smoothed(vanilla, j)
        target = _smoothed(vanilla, len(vanilla["steps"]) - 1)
        row["vanilla_final_residual"] = target
        row["vanilla_final_steps"] = vanilla["steps"][-1]
        hit = next((k for k in range(len(curve["steps"])) if _smoothed(curve, k) <= target), None)
        row["steps_to_vanilla_final"] = None if hit is None else curve["steps"][hit]
        mine = row["residual"]
        vhit = next((k for k in range(len(vanilla["steps"])) if _smoothed(vanilla, k) <= mine), None)
        row["vanilla_steps_to_this_residual"] = None if vhit is None else vanilla["steps"][vhit]
    return row


def curve_figure(curves: dict[str, dict], path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, c in curves.items():
        smooth = [_smoothed(c, i) for i in range(len(c["steps"]))]
        ax.semilogy(c["steps"], smooth, label=name, lw=2.2 if name == "flow-2d" else 1.4,
                    color="k" if name == "flow-2d" else None)
    ax.set_xlabel("optimiser steps")
    ax.set_ylabel("validation loss L_m + β·L_b\n(held-out rollout, median of 5 epochs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# ------------------------------------------------------------------------------ accuracy
def wake_amplitude(probe: list[float]) -> float:
    tail = probe[int(0.4 * len(probe)):]
    return float(np.std(tail)) if len(tail) > 1 else math.nan


def coarse_error(model: StaggeredFlowSolver, cfg: dict, kind: str, steps: int) -> dict:
    """One sub-solver alone (offset 0, last time slot) against the reference sampled on its lattice."""
    env = held_out_environment(cfg["physics"], kind)
    s, T = model.stride[0], model.window
    idx = model.resolution_indices(s, T)
    views = model.sub_views(env)
    sub = model.decompose_state(model.initial_state(env), env, idx)
    calls = steps // T
    check = sorted({c for c in (1, max(1, 50 // T), calls) if c <= calls})
    ref = reference_rollout(env, calls * T, save_steps={c * T for c in check})
    reference = dict(zip(ref.snapshot_steps, ref.snapshots))
    coarse = model.coarse_grid(env.grid, s)
    errors = {}
    start = time.perf_counter()
    with torch.no_grad():
        for c in range(1, calls + 1):
            sub = model.step_subset(sub, views)
            if c in check:
                mine = model.lattice_states(sub, env, s)[-1]
                u = velocity_from_potential(mine.potential.double(), coarse)
                a_ref = potential_of(reference[c * T], env.to(dtype=torch.float64))
                lattice = a_ref[(slice(None), slice(None)) + tuple(slice(0, None, s) for _ in range(env.ndim))]
                pad = [0, 0] * env.ndim
                for d in range(env.ndim):
                    pad[2 * (env.ndim - 1 - d) + 1] = mine.potential.shape[2 + d] - lattice.shape[2 + d]
                u_ref = velocity_from_potential(torch.nn.functional.pad(lattice, pad), coarse)
                num = sum(float(((a - b) ** 2).sum()) for a, b in zip(u, u_ref))
                den = sum(float((b ** 2).sum()) for b in u_ref)
                errors[c * T] = math.sqrt(num / max(den, 1e-30))
    return {"kind": kind, "space": s, "time": T, "error_vs_sampled_reference": errors,
            "seconds": time.perf_counter() - start}


def figure(model: StaggeredFlowSolver, cfg: dict, kind: str, step: int, path: Path) -> dict:
    """|u| at ``step`` from one sub-solver, from a quarter of them, from all, and the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdeaccel.experiments.flow_eval import coarse_rollout, neural_rollout

    env = held_out_environment(cfg["physics"], kind)
    s, T = model.stride[0], model.window
    panels = []
    coarse = [(f"one sub-solver ({s}× coarser in space, {T}Δt in time)", (s, T))]
    if s >= 4:  # a quarter of the spatial offsets: the 2× coarser simulation
        coarse.append((f"a quarter of them ({s // 2}× coarser in space)", (s // 2, 1)))
    for label, (r, q) in coarse:
        roll, grid = coarse_rollout(model, env, step, r, q, save_steps=[step])
        panels.append((label, cell_speed(roll.snapshots[-1]).numpy(), grid.spacing[0]))
    full = neural_rollout(model, env, step, save_steps=[step], diagnostics=False)
    panels.append((f"all {model.sub_solvers} sub-solvers (full resolution)", cell_speed(full.snapshots[-1]).numpy(),
                   env.spacing[0]))
    ref = reference_rollout(env, step, save_steps=[step])
    panels.append(("numerical reference (MACFlowSolver)", cell_speed(ref.snapshots[-1]).numpy(), env.spacing[0]))
    vmax = float(panels[-1][1].max())
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.2 * len(panels)))
    L, H = env.grid.shape[0] * env.spacing[0], env.grid.shape[1] * env.spacing[1]
    for ax, (label, speed, h) in zip(axes, panels):
        ax.imshow(speed.T, origin="lower", extent=(0, speed.shape[0] * h, 0, speed.shape[1] * h), vmin=0, vmax=vmax,
                  cmap="viridis", interpolation="nearest")
        ax.set_xlim(0, L)
        ax.set_ylim(0, H)
        ax.set_title(f"{label}, t = {step * env.dt:g}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"kind": kind, "step": step, "file": path.name}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--runs", default="", help="NAME=RUN_DIR,... trained runs of some settings")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--domains", default="cylinder,box")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--widths", default="4,8,16", help="net.hidden values of the cost sweep")
    ap.add_argument("--name", default="stagger")
    ap.add_argument("--figure", default="", help="NAME: the trained staggered setting drawn in the figure")
    ap.add_argument("--figure-step", type=int, default=300)
    ap.add_argument("--render", action="store_true", help="rewrite NAME.md from NAME.json (no measuring)")
    ap.add_argument("--vanilla-curve", default="",
                    help="RUN_DIR of the vanilla flow-2d training whose metrics.csv is the training curve to "
                         "compare against (default: the flow-2d run of --runs, if it has one)")
    args = ap.parse_args(argv)
    if args.render:
        data = json.loads((RESULTS / f"{args.name}.json").read_text())
        (RESULTS / f"{args.name}.md").write_text(markdown(data))
        return 0
    torch.set_num_threads(1)
    runs = dict(item.split("=", 1) for item in args.runs.split(",") if item)
    rows, accuracy, coarse, sweep, curves = [], [], [], [], {}
    for name in args.settings.split(","):
        if name in runs:
            model, cfg, epochs = load_flow_model(runs[name])
            run_curve = training_curve(runs[name], cfg["train"]["steps_per_epoch"])
            if name == "flow-2d" and args.vanilla_curve:
                run_curve = training_curve(args.vanilla_curve, cfg["train"]["steps_per_epoch"])
            if run_curve:
                curves[name] = run_curve
        else:
            cfg = get_experiment(name).config("cpu")
            torch.manual_seed(0)
            model, epochs = build_model(cfg).eval(), 0
        row = cost(name, model, cfg, args.batch, args.repeats)
        st = as_staggered(model)
        if st and args.workers > 1:
            env = held_out_environment(cfg["physics"], "cylinder")
            row["workers"] = args.workers
            row["parallel_latency_per_call_ms"] = 1e3 * parallel_latency(st, env, args.workers, args.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if name in runs:
            for kind in args.domains.split(","):
                r = evaluate(model, cfg, kind, args.steps, [1, 50, args.steps], progress=False)
                r.pop("_reference_states")
                accuracy.append({"setting": name, "run": runs[name], "epochs": epochs,
                                 "optimiser_steps": epochs * cfg["train"]["steps_per_epoch"],
                                 "amplitude_net": wake_amplitude(r["probe_net"]),
                                 "amplitude_reference": wake_amplitude(r["probe_reference"]),
                                 **{k: v for k, v in r.items() if not k.startswith(("probe", "final_speed", "fluid"))}})
                if st and st.sub_solvers > 1:
                    coarse.append({"setting": name, **coarse_error(st, cfg, kind, args.steps)})
    for width in (int(w) for w in args.widths.split(",") if w):
        for name in ("flow-2d", "flow-2d-s2t1", "flow-2d-s4t2"):
            cfg = get_experiment(name).config("cpu")
            cfg["net"]["hidden"] = width
            torch.manual_seed(0)
            sweep.append({"width": width, **cost(name, build_model(cfg).eval(), cfg, args.batch, args.repeats)})
    vanilla_curve = curves.get("flow-2d")
    training = [training_row(n, c, vanilla_curve) for n, c in curves.items() if n != "flow-2d"]
    curve_file = curve_figure(curves, RESULTS / f"{args.name}_training.png") if curves else None
    drawn = None
    if args.figure in runs:
        model, cfg, _ = load_flow_model(runs[args.figure])
        drawn = figure(model, cfg, "cylinder", args.figure_step, RESULTS / f"{args.name}.png")
    data = {"command": "python benchmarks/stagger.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "figure": drawn, "batch": args.batch,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, one thread per process",
            "torch": torch.__version__, "cost": rows, "accuracy": accuracy, "coarse": coarse, "width_sweep": sweep,
            "training": training, "curves": curves, "curve_figure": curve_file}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(data))
    print(markdown(data))
    return 0


def _f(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def targets(data: dict) -> list[str]:
    """The issue's targets, judged from the numbers of this run."""
    rows = data["cost"]
    vanilla = next((r for r in rows if r["setting"] == "flow-2d"), None)
    if vanilla is None:
        return []
    v_res = {r["kind"]: r["momentum_residual"] for r in data["accuracy"] if r["setting"] == "flow-2d"}
    out = ["", "## Targets, judged from this run", "",
           "| setting | (b) one sub-solver vs vanilla per fine step (target ≥ 0.5·s^d·T) | (a) workers / call ÷ one "
           "sub-solver / call (target ≤ 1.2) | momentum residual ÷ vanilla's, cylinder / box (target ≤ 1.5) |",
           "|---|---|---|---|"]
    for r in rows:
        if r["sub_solvers"] <= 1 or r["ndim"] != 2:
            continue
        speed = vanilla["latency_per_fine_step_ms"] * r["window"] / r["one_sub_solver_latency_per_call_ms"]
        goal = 0.5 * r["stride"] ** r["ndim"] * r["window"]
        par = r.get("parallel_latency_per_call_ms")
        ratio = None if par is None else par / r["one_sub_solver_latency_per_call_ms"]
        res = {a["kind"]: a["momentum_residual"] for a in data["accuracy"] if a["setting"] == r["setting"]}
        res_txt = " / ".join(f"{_f(res[k] / v_res[k], 2)}" + (" ✓" if res[k] / v_res[k] <= 1.5 else " ✗")
                             for k in res if k in v_res) or "not trained"
        out.append(f"| {r['setting']} | {_f(speed, 2)}× vs {goal:g}× {'✓' if speed >= goal else '✗'} | "
                   + (f"{_f(ratio, 2)} with {r.get('workers')} workers {'✓' if ratio <= 1.2 else '✗'}" if ratio else "–")
                   + f" | {res_txt} |")
    return out


def markdown(data: dict) -> str:
    rows = data["cost"]
    vanilla = next((r for r in rows if r["setting"] == "flow-2d"), rows[0])
    out = ["# NeuralStagger against the vanilla flow solver", "", f"`{data['command']}` — {data['machine']}, "
           f"torch {data['torch']}.", "", "## Cost (cpu-size networks, held-out cylinder, batch 1 unless stated)", "",
           "| setting | s | T | sub-solvers | parameters | GFLOP / fine step | latency / fine step, one process (ms) "
           "| one sub-solver / call (ms) | one sub-solver per fine step vs vanilla (= the coarse simulation's speed-up "
           "= the ideal fully parallel speed-up) | "
           f"{rows[-1].get('workers', 2)} workers / call (ms) | sequential calls / fine step (parallel / one process) "
           f"| throughput, batch {data.get('batch', 32)} (fine steps/s) |", "|" + "---|" * 12]
    v_lat = vanilla["latency_per_fine_step_ms"]
    for r in rows:
        coarse_speedup = v_lat * r["window"] / r["one_sub_solver_latency_per_call_ms"]
        out.append(f"| {r['setting']} | {r['stride']} | {r['window']} | {r['sub_solvers']} | {r['parameters']} | "
                   f"{_f(r['gflop_per_fine_step'])} | {_f(r['latency_per_fine_step_ms'])} | "
                   f"{_f(r['one_sub_solver_latency_per_call_ms'])} | {_f(coarse_speedup)}× | "
                   f"{_f(r.get('parallel_latency_per_call_ms'))} | {_f(r['sequential_calls_per_fine_step_parallel'])} / "
                   f"{r['sequential_calls_per_fine_step_one_process'] / r['window']:g} | "
                   f"{_f(r['throughput_fine_steps_per_s'])} |")
    if data["accuracy"]:
        out += ["", "## Accuracy on held-out domains against MACFlowSolver", "",
                "| setting | domain | optimiser steps | momentum residual | boundary error | error @1 | error @50 | "
                "error @last | St net / reference | wake amplitude net / reference | stable |", "|" + "---|" * 11]
        for r in data["accuracy"]:
            e = r["error_vs_reference"]
            keys = sorted(e, key=int)
            out.append(f"| {r['setting']} | {r['kind']} | {r['optimiser_steps']} | {_f(r['momentum_residual'])} | "
                       f"{_f(r['boundary_error'])} | {_f(e[keys[0]])} | {_f(e.get(50, e.get('50')))} | {_f(e[keys[-1]])} | "
                       f"{_f(r['strouhal_net'])} / {_f(r['strouhal_reference'])} | "
                       f"{_f(r['amplitude_net'])} / {_f(r['amplitude_reference'])} | {r['stable']} |")
    if data.get("training"):
        out += ["", "## Training at equal optimiser steps (the validation loss L_m + β·L_b of every run's "
                    "held-out rollout: same environments, seed and length; median of 5 epochs)", "",
                "| setting | optimiser steps | training hours | validation loss now | vanilla's at the same steps | "
                "vanilla's final (steps) | steps this setting took to reach it | "
                "steps vanilla took to reach this setting's |", "|" + "---|" * 8]
        for r in data["training"]:
            out.append(f"| {r['setting']} | {r['optimiser_steps']} | {_f(r['train_hours'], 2)} | {_f(r['residual'])} | "
                       f"{_f(r.get('vanilla_residual_same_steps'))} | {_f(r.get('vanilla_final_residual'))} "
                       f"({r.get('vanilla_final_steps', '–')}) | {_f(r.get('steps_to_vanilla_final')) if r.get('steps_to_vanilla_final') else 'not yet'} | "
                       f"{_f(r.get('vanilla_steps_to_this_residual'))} |")
        if data.get("curve_figure"):
            out += ["", f"![validation residual against optimiser steps]({data['curve_figure']})"]
    out += targets(data)
    if data["coarse"]:
        out += ["", "## One sub-solver alone (the coarsest simulation) against the reference on its lattice", "",
                "| setting | domain | coarser in space × time | relative velocity error at fine steps |", "|---|---|---|---|"]
        for r in data["coarse"]:
            errs = ", ".join(f"{k}: {_f(v)}" for k, v in r["error_vs_sampled_reference"].items())
            out.append(f"| {r['setting']} | {r['kind']} | {r['space']} × {r['time']} | {errs} |")
    if data["width_sweep"]:
        out += ["", "## Width sweep (cost)", "", "| setting | width | parameters | GFLOP / fine step | "
                "one sub-solver / call (ms) | latency / fine step, one process (ms) |", "|---|---|---|---|---|---|"]
        for r in data["width_sweep"]:
            out.append(f"| {r['setting']} | {r['width']} | {r['parameters']} | {_f(r['gflop_per_fine_step'])} | "
                       f"{_f(r['one_sub_solver_latency_per_call_ms'])} | {_f(r['latency_per_fine_step_ms'])} |")
    if data.get("figure"):
        out += ["", f"![the same flow from one sub-solver, a quarter of them, all of them, and the reference]"
                    f"({data['figure']['file']})"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
