"""Flow control through the learned solvers and the differentiable numerical solver (issue 17):
steer the vortex-shedding frequency behind the box of the ``inflow`` control problem (cpu size:
64×32 channel, Δt = 1) to several targets by the inflow speed, through each model, and re-simulate
every optimised control with the numerical solver.

Per model and target: the frequency reached through the model, the same control re-simulated by
the numerical solver, the errors to the target, time per optimisation step and in total. And, in
one invocation for a fair comparison on this shared machine (``--timing``): the time of one
optimisation step of every model at the same control, back to back, and the numerical solver's own
error at the settings used (sub-steps, precision).

Each part stays under ~15 minutes on one core, so the parts run as separate invocations and
merge into one results file (a model's rows are replaced when it is run again):

    .venv/bin/python benchmarks/control.py --timing --models numerical,runs/shed-dt1
    .venv/bin/python benchmarks/control.py --models numerical
    .venv/bin/python benchmarks/control.py --models runs/shed-dt1
    .venv/bin/python benchmarks/control.py --models runs/flow-2d-s2t1 --resolution 2   # NeuralStagger, coarse

Writes benchmarks/results/control.md, control.json and control_<model>.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from pdeaccel.control import evaluate, power_spectrum
from pdeaccel.experiments.control import (build_problem, get_problem, numerical_simulator, parse_resolution,
                                          run_control, settings_of, simulator_for)
from pdeaccel.experiments.flow_eval import vorticity

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
PROBLEM = "inflow"


def label_of(model: str, resolution: tuple[int, int], overrides: tuple[str, ...] = ()) -> str:
    base = "numerical" if model == "numerical" else Path(model).name
    base = base if resolution == (1, 1) else f"{base}@{resolution[0]}:{resolution[1]}"
    return base + "".join(f" {o}" for o in overrides)


def _rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------ timing and settings
def timing(models: list[tuple[str, tuple[int, int]]], repeats: int, checkpoints: tuple[int, ...] = (10,)) -> dict:
    """One optimisation step (warm-up, window forward, backward) of every model at the problem's
    starting control, interleaved ``repeats`` times; medians. With several ``checkpoints`` values
    (simulator calls per checkpointed chunk; 0: none) every model runs with each."""
    cfg = get_problem(PROBLEM).config("cpu")
    cenv, probe = build_problem(cfg)
    base = settings_of(cfg)
    sims = {}
    for m, r in models:
        sim = simulator_for(m, cfg, r)[0]
        for c in checkpoints:
            label = label_of(m, r) if len(checkpoints) == 1 else f"{label_of(m, r)} (checkpoints {c or 'off'})"
            sims[label] = (sim, dataclasses.replace(base, checkpoint_every=c))
    x0 = float(cfg["control"]["initial"])
    rows: dict[str, list[dict]] = {k: [] for k in sims}
    for _ in range(repeats):
        for label, (sim, settings) in sims.items():
            u = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
            t0 = time.perf_counter()
            ev = evaluate(sim, cenv, {cenv.names[0]: u}, probe, settings, grad=True)
            t1 = time.perf_counter()
            ((ev.frequency - 0.025) ** 2).backward()
            t2 = time.perf_counter()
            rows[label].append({"warmup": ev.warmup_seconds, "forward": ev.window_seconds, "backward": t2 - t1,
                                "step": t2 - t0, "frequency": float(ev.frequency)})
            print(f"timing {label}: {t2 - t0:.1f} s per optimisation step", flush=True)
    out = {}
    for label, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("warmup", "forward", "backward", "step")}
        out[label] = {**med, "gradient_window": med["forward"] + med["backward"], "repeats": len(rs),
                      "frequency": rs[0]["frequency"], "describe": sims[label][0].describe(),
                      "checkpoint_every": sims[label][1].checkpoint_every}
    ref = out.get("numerical", out.get(f"numerical (checkpoints {checkpoints[0] or 'off'})"))
    for label, r in out.items():
        if ref is not None:
            r["speedup_step"] = ref["step"] / r["step"]
            r["speedup_gradient_window"] = ref["gradient_window"] / r["gradient_window"]
    return {"control": x0, "warmup": base.warmup, "window": base.window,
            "checkpoint_every": list(checkpoints), "models": out}


def paper_timing(window: int, warmup: int) -> dict:
    """Time per back-propagated step at the paper's size (300×100, Δt = 4, the 10×20 box): a
    vanilla network of the paper's architecture (1.7M parameters; untrained: its weights do not
    change its cost) against the numerical solver at the problem's settings, over a short window
    after a short warm-up (a full paper-size optimisation does not fit this machine)."""
    from pdeaccel.control import ControlSettings, LearnedSimulator
    from pdeaccel.experiments.flow import _paper_2d, build_model

    cfg = get_problem(PROBLEM).config("paper")
    cenv, probe = build_problem(cfg)
    settings = ControlSettings(warmup=warmup, window=window, checkpoint_every=10)
    torch.manual_seed(0)
    net = build_model(_paper_2d())
    sims = {"vanilla (paper architecture)": LearnedSimulator(net), "numerical": numerical_simulator(cfg)}
    out = {}
    for label, sim in sims.items():
        u = torch.tensor(float(cfg["control"]["initial"]), dtype=torch.float64, requires_grad=True)
        ev = evaluate(sim, cenv, {cenv.names[0]: u}, probe, settings, grad=True)
        t1 = time.perf_counter()
        ((ev.frequency - 0.01) ** 2).backward()
        back = time.perf_counter() - t1
        out[label] = {"warmup_per_step": ev.warmup_seconds / max(warmup, 1), "forward_per_step": ev.window_seconds / window,
                      "backward_per_step": back / window, "gradient_per_step": (ev.window_seconds + back) / window,
                      "describe": sim.describe(), "parameters": sum(p.numel() for p in net.parameters())
                      if label != "numerical" else 0}
        print(f"paper timing {label}: {out[label]['gradient_per_step']:.3g} s per back-propagated step", flush=True)
    ref = out["numerical"]
    for r in out.values():
        r["speedup_gradient"] = ref["gradient_per_step"] / r["gradient_per_step"]
        r["speedup_forward"] = ref["warmup_per_step"] / max(r["warmup_per_step"], 1e-12)
    return {"window": window, "warmup": warmup, "grid": [cfg["physics"]["length"], cfg["physics"]["height"]],
            "dt": cfg["physics"]["dt"], "substeps": cfg["numerical"]["substeps"], "models": out}


def numerical_settings_check(scale: float) -> dict:
    """The numerical solver's own error at the settings used: the frequency (warm-up + window from
    rest, the control problem's estimator) at several sub-step counts and in float32."""
    cfg = get_problem(PROBLEM).config("cpu")
    cenv, probe = build_problem(cfg)
    settings = settings_of(cfg)
    rows = []
    used = cfg["numerical"]["substeps"]
    for sub, dtype in ((used, "float64"), (5, "float64"), (10, "float64"), (used, "float32")):
        c = {**cfg, "numerical": {**cfg["numerical"], "substeps": sub, "dtype": dtype}}
        sim = numerical_simulator(c)
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                ev = evaluate(sim, cenv, {cenv.names[0]: scale}, probe, settings)
            f = float(ev.frequency)
            f = f if math.isfinite(f) and np.isfinite(ev.signal).all() else math.nan
            note = ""
        except (ValueError, FloatingPointError) as exc:  # a diverged rollout (NaN) stops the pressure solve
            f, note = math.nan, f"diverged: {str(exc).splitlines()[0][:80]}"
        rows.append({"substeps": sub, "dtype": dtype, "frequency": f, "seconds": time.perf_counter() - t0,
                     "note": note})
        print(f"numerical settings: {sub} sub-steps, {dtype}: f = {f:.5g} {note}", flush=True)
    finest = rows[2]["frequency"]
    for r in rows:
        r["relative_to_10_substeps"] = (r["frequency"] - finest) / finest if math.isfinite(r["frequency"]) else math.nan
    return {"control": scale, "rows": rows}


# ------------------------------------------------------------------------------ control runs
def control_part(model: str, resolution: tuple[int, int], targets: list[float], quiet: bool,
                 problem: str = PROBLEM, overrides: tuple[str, ...] = ()) -> tuple[dict, dict]:
    label = label_of(model, resolution, overrides)
    if problem != PROBLEM:
        label = f"{problem}-{label}"
    slug = re.sub(r"[^A-Za-z0-9._@-]+", "-", label.replace(":", "-")).strip("-")  # a file name from the label
    out = REPO / "runs" / "control" / "benchmark" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = run_control(problem, model=model, size="cpu", targets=targets, resolution=resolution, out=out,
                         progress=not quiet, overrides=list(overrides))
    results, before = report.pop("_results"), report.pop("_before")
    report["run_dir"] = _rel(report["run_dir"])
    if report["model"].get("model") not in (None, "numerical"):
        report["model"]["model"] = _rel(report["model"]["model"])
    done = [r for r in results if "_signals" in r]
    if not done:
        return report, {"figure": None}
    name = f"control_{slug}.png"
    plot_model(RESULTS / name, label, report, done, before)
    return report, {"figure": name}


def plot_model(path: Path, label: str, report: dict, results: list[dict], before) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pad = report["settings"]["pad"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 7))
    ax = axes[0, 0]
    for i, r in enumerate(results):
        its = [h["iteration"] for h in r["history"]]
        ax.plot(its, [h["frequency"] for h in r["history"]], "o-", color=f"C{i}", label=f"target {r['target']:g}")
        ax.axhline(r["target"], color=f"C{i}", ls=":", lw=1)
        ax.plot([its[-1] + 0.4], [r["frequency_numerical"]], "s", color=f"C{i}", mfc="none", ms=9)
    ax.set(xlabel="optimisation iteration", ylabel="shedding frequency",
           title=f"{label}: frequency through the model (□ re-simulated numerically)")
    ax.legend(fontsize=8)
    for ax, key, title in ((axes[0, 1], "model", "through the model"), (axes[0, 2], "numerical", "re-simulated, numerical")):
        f0, p0 = power_spectrum(torch.as_tensor(before.signal if key == "numerical" else results[0]["_signals"]["model_first"],
                                                dtype=torch.float64), before.sample_dt, pad)
        ax.plot(f0.numpy(), (p0 / p0[1:].max()).numpy(), "k:", lw=1, label="start")
        for i, r in enumerate(results):
            s = r["_signals"]
            sig = s["model_best"] if key == "model" else s["numerical_best"]
            dt = s["sample_dt_model"] if key == "model" else s["sample_dt_numerical"]
            f, p = power_spectrum(torch.as_tensor(sig, dtype=torch.float64), dt, pad)
            ax.plot(f.numpy(), (p / p[1:].max().clamp(min=1e-300)).numpy(), color=f"C{i}", lw=1.2,
                    label=f"optimum for {r['target']:g}")
            ax.axvline(r["target"], color=f"C{i}", ls=":", lw=1)
        ax.set(xlim=(0, 0.08), xlabel="frequency", ylabel="power (normalised)", title=f"spectra {title}")
        ax.legend(fontsize=7)
    mid = results[len(results) // 2]
    for ax, key in ((axes[1, 0], "model"), (axes[1, 1], "numerical")):
        u, solid, h = mid["_snapshots"][key]
        w = vorticity(u, h).numpy()
        lim = max(float(np.percentile(np.abs(w), 99)), 1e-12)  # the corners of the obstacle spike
        ax.imshow(w.T, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim,
                  extent=(0.0, solid.shape[0] - 1.0, 0.0, solid.shape[1] - 1.0))
        ax.contour(solid.T.astype(float), levels=[0.5], colors="k", linewidths=0.8)
        ax.set(xticks=[], yticks=[], title=f"vorticity at the optimum for {mid['target']:g}, "
                                           f"{'through the model' if key == 'model' else 're-simulated'}")
    ax = axes[1, 2]
    for i, r in enumerate(results):
        s = r["_signals"]
        t = np.arange(len(s["numerical_best"])) * s["sample_dt_numerical"]
        ax.plot(t, s["numerical_best"], color=f"C{i}", lw=1, label=f"numerical, {r['target']:g}")
        tm = np.arange(len(s["model_best"])) * s["sample_dt_model"]
        if label != "numerical":
            ax.plot(tm, s["model_best"], color=f"C{i}", lw=1, ls="--", label=f"model, {r['target']:g}")
    ax.set(xlabel="t in the window", ylabel="probe (mean v behind the box)", title="probe signals at the optimum")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------ report
def fmt(x, d=4) -> str:
    return f"{x:.{d}g}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def markdown(data: dict) -> str:
    cfg = get_problem(PROBLEM).config("cpu")
    s, n = cfg["settings"], cfg["numerical"]
    def shown(label: str, rep: dict) -> str:
        kind = rep["model"].get("label")
        return label if kind is None or label == "numerical" else f"{kind} `{label}`"

    lines = ["# Flow control: the shedding frequency steered by the inflow speed (benchmarks/control.py)", "",
             f"Problem `{PROBLEM}` at cpu size: {cfg['physics']['length']}×{cfg['physics']['height']} channel, "
             f"μ = {cfg['physics']['mu']}, ρ = {cfg['physics']['rho']}, Δt = {cfg['physics']['dt']}, a "
             f"{cfg['obstacle']['size'][0]:g}×{cfg['obstacle']['size'][1]:g} box at {cfg['obstacle']['center']} "
             f"(the held-out box of benchmarks/flow.py), in- and outflow speed {cfg['inflow']}·inflow_scale "
             f"(Re = {cfg['inflow'] * cfg['obstacle']['size'][1] * cfg['physics']['rho'] / cfg['physics']['mu']:.0f}"
             "·inflow_scale). Observable: mean cross-stream velocity 1–3 box sizes behind the box; frequency: the "
             "spectral centroid of its Hann-windowed power spectrum over the main lobe around the peak "
             "(`pdeaccel.control.spectral_frequency`). Objective (f − f_target)², Adam (lr "
             f"{s['lr']}, betas {tuple(s['betas'])}, the rate halved whenever f crosses the target), from "
             f"inflow_scale = {cfg['control']['initial']}, at most {s['iterations']} iterations, stopping within "
             f"{100 * s['tolerance']:g}% of the target. Every iteration: {s['warmup']} warm-up steps from rest without "
             f"gradient, then back-propagation through {s['window']} steps (gradient checkpoints every "
             f"{s['checkpoint_every']} steps). Every optimised control is re-simulated from rest by the numerical "
             f"solver: MACFlowSolver, upwind3, {n['dtype']}, {n['substeps']} sub-steps per Δt, CG rtol {n['rtol']:g}.",
             "", f"Machine: {data.get('machine', '?')}, torch {data.get('torch', '?')}, 1 torch thread, on a 2-core "
                 "machine shared with background trainings (timings carry that noise).", ""]
    parts = {k: v for k, v in data.get("parts", {}).items() if v["report"]["problem"] == PROBLEM}
    others = {k: v for k, v in data.get("parts", {}).items() if v["report"]["problem"] != PROBLEM}
    if parts:
        lines += ["## Targets through each model, re-simulated by the numerical solver", "",
                  "| model | target f | inflow_scale found | f through the model | f re-simulated (numerical) | "
                  "error model / re-simulated | re-simulated within 10%? | stopped | iterations | s per optimisation "
                  "step (gradient window) | s total | model sheds at the optimum |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, part in parts.items():
            rep = part["report"]
            for r in rep["targets"]:
                if "skipped" in r:
                    lines.append(f"| {shown(label, rep)} | {fmt(r['target'])} | – | does not shed | – | – | – | not optimised | 0 | "
                                 "– | – | **no** |")
                    continue
                ok = abs(r["error_numerical"]) <= 0.10
                lines.append(
                    f"| {shown(label, rep)} | {fmt(r['target'])} | {fmt(r['best']['inflow_scale'])} | {fmt(r['frequency_model'])} | "
                    f"{fmt(r['frequency_numerical'])} | {100 * r['error_model']:+.1f}% / {100 * r['error_numerical']:+.1f}% | "
                    f"{'yes' if ok else '**no**'} | {_stopped(r)} | {r['iterations']} | {fmt(r['seconds_per_iteration'], 3)} "
                    f"({fmt(r['gradient_seconds_per_iteration'], 3)}) | {fmt(r['seconds_total'], 3)} | "
                    f"{'yes' if r['model_eval']['shedding'] else '**no**'} |")
        lines += [""]
        for label, part in parts.items():
            rep = part["report"]
            lines.append(f"- **{shown(label, rep)}**: {rep['simulator']}" +
                         (f", `{rep['model']['model']}` ({rep['model'].get('parameters', 0):,} parameters, "
                          f"{rep['model'].get('epochs')} epochs)" if rep["model"]["model"] != "numerical" else "") +
                         f"; the numerical solver sheds at f = {fmt(rep['initial_numerical']['frequency'])} at the start" +
                         (f"; through the model f = {fmt(rep['initial_model']['frequency'])} there (probe amplitude "
                          f"{fmt(rep['initial_model']['amplitude'], 3)}, numerical "
                          f"{fmt(rep['initial_numerical']['amplitude'], 3)})" if rep["model"]["model"] != "numerical"
                          else "") +
                         f"; command `{part['command']}`, run directory `{rep['run_dir']}`" +
                         (f", figure [{part['figure']}]({part['figure']})." if part.get("figure") else ".") +
                         (f" **Not optimised**: {rep['targets'][0]['skipped']}." if "skipped" in rep["targets"][0]
                          else ""))
        lines.append("")
    seen: set[str] = set()
    for key, part in others.items():
        rep = part["report"]
        name = rep["control"]
        if rep["problem"] not in seen:
            seen.add(rep["problem"])
            lines += [f"## Problem `{rep['problem']}`: {rep['description']}", "",
                      f"{rep['obstacle']['kind']} obstacle {rep['obstacle']}, inflow {rep['inflow']}; control `{name}` "
                      f"from {rep['targets'][0]['initial'][name]:g} within "
                      f"{get_problem(rep['problem']).config(rep['size'])['control']['bounds']}; the numerical solver "
                      f"sheds at f = {fmt(rep['initial_numerical']['frequency'])} there.", ""]
        lines += [f"### Through {shown(key.split('/', 1)[-1], rep)}", "",
                  (f"The model sheds at f = {fmt(rep['initial_model']['frequency'])} at the start. "
                   if rep["model"]["model"] != "numerical" else "") +
                  f"{rep['simulator']}; command `{part['command']}`, run directory `{rep['run_dir']}`" +
                  (f", figure [{part['figure']}]({part['figure']})." if part.get("figure") else "."), "",
                  f"| target f | {name} found | f through the model | f re-simulated (numerical) | error model / "
                  "re-simulated | re-simulated within 10%? | stopped | iterations | s per optimisation step | s total |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rep["targets"]:
            if "skipped" in r:
                lines.append(f"| {fmt(r['target'])} | – | does not shed | – | – | – | not optimised | 0 | – | – |")
                continue
            stopped = _stopped(r)
            ok = abs(r["error_numerical"]) <= 0.1
            verdict = ("yes" if ok else "**no**") if stopped == "converged" else \
                ("yes, by chance" if ok else "**no**")
            lines.append(f"| {fmt(r['target'])} | {fmt(r['best'][name])} | {fmt(r['frequency_model'])} | "
                         f"{fmt(r['frequency_numerical'])} | {100 * r['error_model']:+.1f}% / "
                         f"{100 * r['error_numerical']:+.1f}% | {verdict} | {stopped} | "
                         f"{r['iterations']} | {fmt(r['seconds_per_iteration'], 3)} | {fmt(r['seconds_total'], 3)} |")
        lines.append("")
    t = data.get("timing")
    if t:
        lines += [f"## Time per optimisation step, side by side (one invocation, models interleaved, median of "
                  f"{next(iter(t['models'].values()))['repeats']})", "",
                  f"At inflow_scale = {t['control']}: warm-up {t['warmup']} steps without gradient, window {t['window']} "
                  f"steps forward and backward (gradient checkpoints every "
                  f"{' or '.join(str(c) if c else 'none' for c in (t['checkpoint_every'] if isinstance(t['checkpoint_every'], list) else [t['checkpoint_every']]))} "
                  "simulator calls, as labelled).", "",
                  "| model | warm-up s | window forward s | backward s | gradient window s | optimisation step s | "
                  "numerical / model (step) | numerical / model (gradient window) |", "|---|---|---|---|---|---|---|---|"]
        for label, r in t["models"].items():
            lines.append(f"| {label} | {fmt(r['warmup'], 3)} | {fmt(r['forward'], 3)} | {fmt(r['backward'], 3)} | "
                         f"{fmt(r['gradient_window'], 3)} | {fmt(r['step'], 3)} | {fmt(r.get('speedup_step'), 3)}× | "
                         f"{fmt(r.get('speedup_gradient_window'), 3)}× |")
        lines.append(f"\nCommand: `{data.get('timing_command', '')}`.\n")
    pt = data.get("paper_timing")
    if pt:
        lines += [f"## Time per back-propagated step at the paper's size ({pt['grid'][0]}×{pt['grid'][1]}, Δt = {pt['dt']:g}, "
                  f"the 10×20 box; {pt['warmup']} warm-up steps, then {pt['window']} steps forward and backward)", "",
                  "| model | s per step without gradient | s per back-propagated step (forward + backward) | "
                  "numerical / model (no gradient) | numerical / model (back-propagated) |", "|---|---|---|---|---|"]
        for label, r in pt["models"].items():
            lines.append(f"| {label}: {r['describe']} | {fmt(r['warmup_per_step'], 3)} | {fmt(r['gradient_per_step'], 3)} | "
                         f"{fmt(r['speedup_forward'], 3)}× | {fmt(r['speedup_gradient'], 3)}× |")
        lines.append(f"\nCommand: `{data.get('paper_timing_command', '')}`. The network is untrained (cost only; "
                     "no paper-size model was trained here).\n")
    c = data.get("numerical_check")
    if c:
        lines += [f"## The numerical solver's own error at these settings (inflow_scale = {c['control']}, the same "
                  "warm-up, window and estimator)", "", "| sub-steps per Δt | precision | f | vs 10 sub-steps | s (no gradient) |",
                  "|---|---|---|---|---|"]
        for r in c["rows"]:
            lines.append(f"| {r['substeps']} | {r['dtype']} | {fmt(r['frequency'])} | "
                         f"{100 * r['relative_to_10_substeps']:+.2f}% | {fmt(r['seconds'], 3)} |"
                         if math.isfinite(r["frequency"]) else
                         f"| {r['substeps']} | {r['dtype']} | – ({r['note']}) | – | {fmt(r['seconds'], 3)} |")
        lines.append("")
    lines += data.get("notes", [])
    return "\n".join(lines) + "\n"


def _stopped(r: dict) -> str:
    """Why the optimisation ended: converged (within the tolerance through the model), at a bound, or
    out of iterations (runs from before the key existed: converged or iterations)."""
    return r.get("stopped") or ("converged" if r.get("converged") else "iterations")


def load() -> dict:
    path = RESULTS / "control.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save(data: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "control.json").write_text(json.dumps(data, indent=1, default=float) + "\n")
    (RESULTS / "control.md").write_text(markdown(data))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", default=PROBLEM, help="the control problem of the control runs (inflow, magnus)")
    ap.add_argument("--models", default="numerical", help="comma-separated: numerical and/or flow run directories")
    ap.add_argument("--resolution", default="full", help="for NeuralStagger models: full | R | R:Q")
    ap.add_argument("--targets", default=None, help="comma-separated target frequencies (default: the problem's)")
    ap.add_argument("--timing", action="store_true", help="only the side-by-side timing and the numerical settings check")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--paper-timing", action="store_true",
                    help="only the time per back-propagated step at the paper's size (short window)")
    ap.add_argument("--paper-window", type=int, default=4)
    ap.add_argument("--paper-warmup", type=int, default=10)
    ap.add_argument("--check-scale", type=float, default=1.0, help="inflow_scale of the numerical settings check")
    ap.add_argument("--render", action="store_true", help="only rewrite control.md from control.json")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--checkpoints", default="10",
                    help="with --timing: comma-separated checkpoint_every values, every model timed with each (0: off)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the control problem for the control runs "
                                                 "(e.g. calibration.rounds=2); they become part of the row's label")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load()
    if args.render:
        save(data)
        return 0
    data.update({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__})
    command = "python benchmarks/control.py " + " ".join(argv if argv is not None else sys.argv[1:])
    resolution = parse_resolution(args.resolution)
    models = [(m.strip(), resolution if m.strip() != "numerical" else (1, 1)) for m in args.models.split(",") if m.strip()]
    targets = [float(t) for t in args.targets.split(",")] if args.targets else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
        if args.paper_timing:
            data["paper_timing"] = paper_timing(args.paper_window, args.paper_warmup)
            data["paper_timing_command"] = command
            save(data)
        elif args.timing:
            data["timing"] = timing(models, args.repeats, tuple(int(c) for c in args.checkpoints.split(",")))
            data["timing_command"] = command
            data["numerical_check"] = numerical_settings_check(args.check_scale)
            save(data)
        else:
            for model, res in models:
                report, extra = control_part(model, res, targets, args.quiet, args.problem, tuple(args.overrides))
                key = label_of(model, res, tuple(args.overrides))
                key = key if args.problem == PROBLEM else f"{args.problem}/{key}"
                data.setdefault("parts", {})[key] = {"report": report, "command": command, **extra}
                save(data)
    print((RESULTS / "control.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
