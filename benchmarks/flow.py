"""The trained vanilla physics-constrained flow solver on held-out obstacle domains, against the
numerical reference solver on the same grid, side by side in one run.

For the held-out cylinder, box and moving cylinder (:func:`pdeaccel.experiments.flow.held_out_spec`; shapes and
positions not drawn in training): momentum residual E|R|, boundary error E|u − u_cond| and
divergence E|∇·u| over a rollout of ``--steps`` network steps from rest; the relative L2
velocity error against :class:`~pdeaccel.physics.incompressible.MACFlowSolver` (upwind3,
float64, sub-stepped to Courant 0.5) at several times; whether the rollout stays finite and
bounded; the vortex-shedding frequency of both (probe: mean vertical velocity behind the
obstacle) and its Strouhal number; and steps per second of both at batch 1 and at a large batch.
In 2D also: whether a developed shedding wake (a reference state) survives the network's steps
and the loss's exact minimiser's, and the loss's one-step discretisation error.

    .venv/bin/python benchmarks/flow.py --model runs/flow-2d/<run>        # a trained flow-2d run
    .venv/bin/python benchmarks/flow.py --train                          # train flow-2d (cpu) first

Writes benchmarks/results/flow.md, flow.json and flow.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from pdeaccel.experiments.flow import held_out_environment, held_out_spec
from pdeaccel.experiments.flow_eval import (cell_speed, load_flow_model, loss_optimal_steps, moving_environments,
                                            neural_rollout, outflow_wiggle, potential_of, probe_window,
                                            reference_rollout, reference_substeps, shedding_frequency,
                                            velocity_error, vorticity)

VORTICITY_STEP = 500  # the figure's vorticity snapshot (the developed wake)
from pdeaccel.losses import FlowResidual
from pdeaccel.neural_flow import PotentialState
from pdeaccel.physics.flow import FlowEnvironment
from pdeaccel.physics.incompressible import MACFlowSolver

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(model, env: FlowEnvironment, batch: int, steps: int, repeats: int) -> dict:
    """Seconds per simulated Δt for the network and the reference at one batch size."""
    big = FlowEnvironment.stack([env] * batch)
    state = model.initial_state(big)
    with torch.no_grad():
        model(state, big)  # warm-up

        def net():
            s = state
            for _ in range(steps):
                s = model(s, big)

        t_net = timed(net, repeats) / steps
    big64 = big.to(dtype=torch.float64)
    sub = reference_substeps(big64)
    solver = MACFlowSolver(big64.replace(dt=env.dt / sub), advection="upwind3")
    ref_state = solver.run(solver.initial_state(), 5 * sub)  # a developing flow, not rest
    ref_steps = max(1, steps // 4)
    t_ref = timed(lambda: solver.run(ref_state, ref_steps * sub), repeats) / ref_steps
    return {"batch": batch, "net_seconds_per_step": t_net, "reference_seconds_per_step": t_ref,
            "reference_substeps": sub, "net_steps_per_second": batch / t_net,
            "reference_steps_per_second": batch / t_ref, "speedup": t_ref / t_net}


def evaluate(model, cfg: dict, kind: str, steps: int, error_steps: list[int], progress: bool,
             keep_reference: Iterable[int] = ()) -> dict:
    """One held-out domain. ``keep_reference``: further steps whose reference velocity is kept in
    ``"_reference_states"`` (not written to JSON) for the checks that start from a reference state."""
    physics = cfg["physics"]
    spec = held_out_spec(physics, kind)
    env = held_out_environment(physics, kind)
    env_at = moving_environments(physics, spec)
    # the developed phase: the last 60% of the rollout (amplitude and mean flow are judged there)
    average_from = int(0.4 * steps)
    neural = neural_rollout(model, env, steps, save_steps=error_steps, progress=progress, env_at=env_at,
                            average_from=average_from)
    ref = reference_rollout(env, steps, save_steps=set(error_steps) | set(keep_reference), progress=progress,
                            env_at=env_at, average_from=average_from)
    reference_states = dict(zip(ref.snapshot_steps, ref.snapshots))
    neural_states = dict(zip(neural.snapshot_steps, neural.snapshots))
    errors = {k: velocity_error(u, reference_states[k], env) for k, u in neural_states.items()}
    w_step = VORTICITY_STEP if VORTICITY_STEP in neural_states else None
    discard = steps // 5
    f_net, share_net = shedding_frequency(neural.probe, env.dt, discard)
    f_ref, share_ref = shedding_frequency(ref.probe, env.dt, discard)
    size = 2 * spec["radius"] if "radius" in spec else spec["size"][0]
    U = spec["inflow"]
    d = neural.diagnostics
    return {
        "kind": kind, "spec": spec, "grid": list(env.grid.shape), "steps": steps, "dt": env.dt,
        "reynolds": U * size / (physics["mu"] / physics["rho"]),
        "stable": neural.stable and bool(max(d["max_speed"]) < 10 * 1.5 * U),
        "first_unstable_step": neural.first_unstable_step, "max_speed": max(d["max_speed"]),
        "momentum_residual": float(np.mean(d["momentum_abs"])),
        "momentum_residual_last100": float(np.mean(d["momentum_abs"][-100:])),
        "boundary_error": float(np.mean(d["boundary_abs"])),
        "divergence": float(np.max(d["divergence_abs"])),
        "error_vs_reference": errors,
        "shedding_frequency_net": f_net, "shedding_frequency_reference": f_ref,
        "peak_share_net": share_net, "peak_share_reference": share_ref,
        "strouhal_net": f_net * size / U, "strouhal_reference": f_ref * size / U,
        "amplitude_net": float(np.std(neural.probe[average_from:])) if neural.stable else math.nan,
        "amplitude_reference": float(np.std(ref.probe[average_from:])),
        "mean_flow_error": velocity_error(tuple(c.to(torch.float32) for c in neural.mean_velocity),
                                          tuple(c.to(torch.float32) for c in ref.mean_velocity), env)
        if neural.mean_velocity is not None else math.nan,
        "probe_net": neural.probe, "probe_reference": ref.probe,
        "final_speed_net": _plane(cell_speed(neural.snapshots[-1])).tolist(),
        "final_speed_reference": _plane(cell_speed(reference_states[steps])).tolist(),
        "fluid": _plane(torch.from_numpy(1.0 - ref.snapshot_solids[-1].astype(np.float64))).tolist(),
        # vorticity at VORTICITY_STEP (2D only), reference beside network, for the figure
        "vorticity_step": w_step if physics["ndim"] == 2 else None,
        "vorticity_net": vorticity(neural_states[w_step], env.spacing[0]).tolist()
        if w_step and physics["ndim"] == 2 else None,
        "vorticity_reference": vorticity(reference_states[w_step], env.spacing[0]).tolist()
        if w_step and physics["ndim"] == 2 else None,
        "rollout_seconds_net": neural.wall_seconds, "rollout_seconds_reference": ref.wall_seconds,
        "_reference_states": reference_states,
    }


def _plane(field: torch.Tensor) -> torch.Tensor:
    """A 2D field, or a 3D field's mid-depth slice (for the figure)."""
    return field if field.ndim == 2 else field[..., field.shape[-1] // 2]


def sustain_check(model, cfg: dict, cylinder: dict, start: int, steps: int) -> dict:
    """Does a developed shedding wake survive? From the reference state at step ``start`` on the
    held-out cylinder (``cylinder``: its :func:`evaluate` result, which kept that state), ``steps``
    further steps of the reference, of the network, and of the loss's exact minimiser (no
    network); the probe's standard deviation over each quarter of the steps, relative to the
    reference's."""
    env = held_out_environment(cfg["physics"], "cylinder")
    u0, u1 = cylinder["_reference_states"][start], cylinder["_reference_states"][start + 1]
    env64 = env.to(dtype=torch.float64)
    window = probe_window(env64)

    def probe(u) -> float:
        return float((u[1][0, 0] * window).sum() / window.sum())

    state = PotentialState(potential_of(u0, env64).to(env.fluid.dtype), torch.zeros_like(env.fluid))
    net = []
    with torch.no_grad():
        for k in range(steps):
            new = model(state, env)
            if k == 0:  # the network's one step on a state its training pool never held
                terms = FlowResidual(env).terms(model.velocity(state, env), model.velocity(new, env), new.pressure)
                one_step = {"error": velocity_error(tuple(c.double() for c in model.velocity(new, env)),
                                                    u1, env64),
                            "momentum_residual": float(terms.momentum_abs.mean())}
            state = new
            net.append(probe(model.velocity(state, env)))
    series = {"reference": cylinder["probe_reference"][start:start + steps], "neural": net}
    us = loss_optimal_steps(env64, u0, steps, advection=cfg["loss"]["advection"], theta=cfg["loss"]["theta"],
                            beta=cfg["loss"]["beta"], max_iter=200, restarts=2)
    series["loss minimiser (no network)"] = [probe(u) for u in us]
    q = max(1, steps // 4)
    ref_std = [float(np.std(series["reference"][i:i + q])) for i in range(0, steps, q)]
    rows = {name: [float(np.std(v[i:i + q])) / max(r, 1e-12) for i, r in zip(range(0, steps, q), ref_std)]
            for name, v in series.items()}
    return {"start": start, "steps": steps, "quarter": q, "relative_std": rows, "series": series,
            "net_one_step": one_step}


def scheme_check(cfg: dict, cylinder: dict, start: int, steps: int) -> list[dict]:
    """The loss's own time stepper (exact minimiser, no network) from a developed reference state
    on the held-out cylinder (kept by its :func:`evaluate`), for the paper's central advection
    and for upwind3."""
    env = held_out_environment(cfg["physics"], "cylinder")
    ref = [cylinder["_reference_states"][k] for k in range(start, start + steps + 1)]
    env64 = env.to(dtype=torch.float64)
    rows = [{"advection": "reference (MAC solver)", "errors": {}, "wiggle": outflow_wiggle(ref[-1], env64)}]
    for advection in ("central", "upwind3"):
        states = loss_optimal_steps(env64, ref[0], steps, advection=advection, theta=cfg["loss"]["theta"],
                                    beta=cfg["loss"]["beta"])
        rows.append({"advection": advection,
                     "errors": {k + 1: velocity_error(u, r, env64) for k, (u, r) in enumerate(zip(states, ref[1:]))},
                     "wiggle": outflow_wiggle(states[-1], env64)})
    # the impulsive start: one step from rest (the reference starts from the projected rest state)
    first = cylinder["_reference_states"][1]
    rest = tuple(torch.zeros_like(f) for f in env64.face_velocity)
    for advection in ("central", "upwind3"):
        (u1,) = loss_optimal_steps(env64, rest, 1, advection=advection, theta=cfg["loss"]["theta"], beta=cfg["loss"]["beta"])
        rows.append({"advection": f"{advection}, one step from rest", "errors": {1: velocity_error(u1, first, env64)},
                     "wiggle": outflow_wiggle(u1, env64)})
    return rows


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vort = any(r.get("vorticity_net") is not None for r in results)
    cols = 5 if vort else 3
    fig, axes = plt.subplots(len(results), cols, figsize=(5.3 * cols, 3.4 * len(results)), squeeze=False)
    for row, r in zip(axes, results):
        t = np.arange(1, len(r["probe_net"]) + 1) * r["dt"]
        row[0].plot(t, r["probe_reference"], label="reference (MAC, upwind3)", lw=1)
        row[0].plot(t, r["probe_net"], label="neural (vanilla)", lw=1)
        row[0].set(xlabel="t", ylabel="probe: mean v behind obstacle", title=f"{r['kind']}: shedding probe")
        row[0].legend(fontsize=8)
        solid = 1 - np.asarray(r["fluid"])
        lim = max(np.max(r["final_speed_reference"]), np.max(r["final_speed_net"]))
        for ax, key, name in ((row[1], "final_speed_reference", "reference"), (row[2], "final_speed_net", "neural")):
            speed_field = np.ma.masked_where(solid > 0, np.asarray(r[key]))
            im = ax.imshow(speed_field.T, origin="lower", cmap="viridis", vmin=0, vmax=lim)
            ax.contour(solid.T, levels=[0.5], colors="k", linewidths=0.8)
            ax.set(title=f"{r['kind']}: |u| at step {r['steps']}, {name}", xticks=[], yticks=[])
            fig.colorbar(im, ax=ax, shrink=0.8)
        if vort and r.get("vorticity_net") is not None:
            w_ref, w_net = np.asarray(r["vorticity_reference"]), np.asarray(r["vorticity_net"])
            lim = float(np.percentile(np.abs(w_ref), 99)) or 1.0
            for ax, w, name in ((row[3], w_ref, "reference"), (row[4], w_net, "neural")):
                # corners between cells: the obstacle outline from the cell mask, shifted half a cell
                im = ax.imshow(w.T, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
                ax.contour(np.arange(solid.shape[0]) - 0.5, np.arange(solid.shape[1]) - 0.5, solid.T, levels=[0.5],
                           colors="k", linewidths=0.8)
                ax.set(title=f"{r['kind']}: vorticity at step {r['vorticity_step']}, {name}", xticks=[], yticks=[])
                fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fmt(x: float) -> str:
    return f"{x:.3g}" if isinstance(x, float) and math.isfinite(x) else str(x)


def markdown(data: dict) -> str:
    lines = ["# Vanilla physics-constrained flow solver on held-out domains (benchmarks/flow.py)", "",
             f"Command: `{data['command']}`. Model: `{data['model']}` ({data['parameters']:,} parameters, "
             f"trained {data['trained_epochs']} epochs × {data['steps_per_epoch']} steps, loss advection "
             f"{data['loss_advection']}). Machine: "
             f"{data['machine']}, {data['threads']} torch thread(s), torch {data['torch']}.", "",
             "## Accuracy over the rollout", "",
             "| domain | Re | steps | stable | E\\|R\\| (all / last 100) | E\\|u − u_cond\\| | max E\\|∇·u\\| | "
             "rel. L2 error vs reference at steps | St neural / reference (peak share) | wake amplitude neural / reference "
             "(last 60%) | mean-flow error (last 60%) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["domains"]:
        errs = ", ".join(f"{k}: {fmt(v)}" for k, v in r["error_vs_reference"].items())
        # the probe's standard deviation after the start-up (a clean spectral peak alone does not
        # tell a shedding wake from a barely oscillating one)
        amp = [r.get("amplitude_net", math.nan), r.get("amplitude_reference", math.nan)]
        ratio = f" ({amp[0] / amp[1]:.0%})" if amp[1] > 0 else ""
        lines.append(f"| {r['kind']} | {r['reynolds']:.0f} | {r['steps']} | {'yes' if r['stable'] else 'NO'} | "
                     f"{fmt(r['momentum_residual'])} / {fmt(r['momentum_residual_last100'])} | {fmt(r['boundary_error'])} | "
                     f"{fmt(r['divergence'])} | {errs} | {fmt(r['strouhal_net'])} / {fmt(r['strouhal_reference'])} "
                     f"({r['peak_share_net']:.2f} / {r['peak_share_reference']:.2f}) | {amp[0]:.3g} / {amp[1]:.3g}{ratio} | "
                     f"{fmt(r.get('mean_flow_error', math.nan))} |")
    lines += ["", "## Speed, side by side (seconds per simulated Δt; median of repeats)", "",
              "| batch | neural s/step | reference s/Δt (sub-steps) | neural steps/s | reference steps/s | speed-up "
              "(per step = per unit of physical time: both advance Δt) | neural s per time unit |",
              "|---|---|---|---|---|---|---|"]
    for s in data["speed"]:
        lines.append(f"| {s['batch']} | {fmt(s['net_seconds_per_step'])} | {fmt(s['reference_seconds_per_step'])} "
                     f"({s['reference_substeps']}) | {fmt(s['net_steps_per_second'])} | "
                     f"{fmt(s['reference_steps_per_second'])} | {s['speedup']:.1f}× | "
                     f"{fmt(s['net_seconds_per_step'] / data.get('dt', 1.0))} |")
    if data.get("sustain"):
        su = data["sustain"]
        q = su["quarter"]
        heads = " | ".join(f"steps {i + 1}–{i + q}" for i in range(0, su["steps"], q))
        lines += ["", f"## Does a developed wake survive? (from the reference state at step {su['start']} on the "
                      "held-out cylinder: the probe's standard deviation relative to the reference's)", "",
                  f"| stepper | {heads} |", "|---|" + "---|" * len(su["relative_std"]["reference"])]
        for name, vals in su["relative_std"].items():
            lines.append(f"| {name} | " + " | ".join(fmt(v) for v in vals) + " |")
        o = su["net_one_step"]
        lines += ["", f"The network's first step from that state: rel. L2 error {fmt(o['error'])} against the "
                      f"reference, E|R| = {fmt(o['momentum_residual'])} (compare its E|R| on its own rollouts above)."]
    if data.get("scheme_check"):
        sc = data["scheme_check"]
        lines += ["", f"## The loss's own discretisation (no network; exact minimiser of the loss, from the reference "
                      f"state at step {data['scheme_start']} on the held-out cylinder)", "",
                  "| advection in the loss | rel. L2 error vs reference after k steps | outflow wiggle |", "|---|---|---|"]
        for row in sc:
            errs = ", ".join(f"{k}: {fmt(v)}" for k, v in row["errors"].items()) or "–"
            lines.append(f"| {row['advection']} | {errs} | {fmt(row['wiggle'])} |")
    lines += ["", "The paper reports ≈311 time steps per second for the vanilla 2D solver on a GPU (300×100); "
              "the numbers above are CPU numbers at our cpu size.", "", f"![flow]({data['name']}.png)", ""]
    lines += data.get("notes", [])
    return "\n".join(lines)


def render(name: str) -> None:
    """Rewrite results/NAME.md from results/NAME.json (after a change to the table layout)."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    data.setdefault("name", name)
    (RESULTS / f"{name}.md").write_text(markdown(data))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a trained flow-2d run directory")
    ap.add_argument("--train", action="store_true", help="train flow-2d at cpu size first")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--large-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="flow")
    ap.add_argument("--scheme-steps", type=int, default=5,
                    help="steps of the loss's exact minimiser compared with the reference (0: skip)")
    ap.add_argument("--domains", default="cylinder,box,moving", help="held-out domains, comma-separated")
    ap.add_argument("--sustain-steps", type=int, default=40,
                    help="steps from a developed reference wake for the network and the loss minimiser (0: skip)")
    ap.add_argument("--sustain-start", type=int, default=300, help="reference step the wake check starts from")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--render", metavar="NAME", help="only rewrite results/NAME.md from results/NAME.json")
    args = ap.parse_args(argv)
    if args.render:
        render(args.render)
        return 0
    torch.set_num_threads(args.threads)
    model_dir = args.model
    if args.train:
        from pdeaccel.experiments.runner import train_run

        model_dir = train_run("flow-2d", progress=not args.quiet)["run_dir"]
    if model_dir is None:
        ap.error("give --model RUN_DIR (a trained flow-2d run) or --train")
    model, cfg, epochs_done = load_flow_model(model_dir)
    t50 = max(1, round(50 / cfg["physics"]["dt"]))  # t = 50 time units (the start-up transient)
    error_steps = sorted({s for s in (1, 10, t50, 50, 100, 250, 500, 1000, args.steps) if s <= args.steps})
    kinds = args.domains.split(",")
    two_d = cfg["physics"]["ndim"] == 2  # the potential of a reference state (potential_of) is 2D only
    sustain = args.sustain_steps > 0 and two_d
    scheme = args.scheme_steps > 0 and two_d
    scheme_start = 40
    # the wake and scheme checks start from states of the cylinder's reference rollout: kept there
    # rather than computed by a second reference run
    keep: set[int] = set()  # reference steps whose states the checks need
    longest = 0  # the reference rollout length they need
    if sustain:
        keep |= {args.sustain_start, args.sustain_start + 1}
        longest = args.sustain_start + args.sustain_steps
    if scheme:
        keep |= {1, *range(scheme_start, scheme_start + args.scheme_steps + 1)}
        longest = max(longest, scheme_start + args.scheme_steps)
    if keep and ("cylinder" not in kinds or longest > args.steps):
        ap.error("the wake and scheme checks start from the held-out cylinder's reference rollout: include "
                 f"'cylinder' in --domains and use --steps >= {longest} (or --sustain-steps 0 --scheme-steps 0)")
    domains = [evaluate(model, cfg, kind, args.steps, error_steps, not args.quiet,
                        keep_reference=keep if kind == "cylinder" else ()) for kind in kinds]
    cylinder = next((r for r in domains if r["kind"] == "cylinder"), None)
    env = held_out_environment(cfg["physics"], "cylinder")
    speeds = [speed(model, env, b, 20, 3) for b in (1, args.large_batch)]
    data = {"command": "python benchmarks/flow.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "model": str(model_dir), "parameters": sum(p.numel() for p in model.parameters()),
            "trained_epochs": epochs_done, "steps_per_epoch": cfg["train"]["steps_per_epoch"],
            "loss_advection": cfg["loss"]["advection"],
            "machine": f"{platform.machine()}, {torch.get_num_threads()} of {os.cpu_count()} CPUs",
            "threads": args.threads, "torch": torch.__version__, "domains": domains, "speed": speeds,
            "dt": cfg["physics"]["dt"], "optimizer_steps": epochs_done * cfg["train"]["steps_per_epoch"],
            "batch_size": cfg["train"]["batch_size"],
            "name": args.name}
    if sustain:
        data["sustain"] = sustain_check(model, cfg, cylinder, args.sustain_start, args.sustain_steps)
    if scheme:
        data["scheme_start"] = scheme_start
        data["scheme_check"] = scheme_check(cfg, cylinder, scheme_start, args.scheme_steps)
    for r in domains:
        r.pop("_reference_states")
    RESULTS.mkdir(exist_ok=True)
    plot(domains, RESULTS / f"{args.name}.png")
    slim = {**data, "domains": [{k: v for k, v in r.items() if not k.startswith(("final_speed", "fluid", "vorticity_"))}
                                for r in domains]}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(slim, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
