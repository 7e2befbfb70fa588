"""Learning curve of the physics-constrained flow solver: shedding quality against optimiser steps.

Trains one flow run in segments through the CLI (``pdeaccel train`` for the first segment, then
``--resume RUN train.epochs=E``; resuming is exact, so the segments are one uninterrupted run)
and, after each segment, rolls the newest checkpoint out from rest on the held-out domains
against the numerical reference (computed once, float64): Strouhal number, wake amplitude and
mean flow over the last 60% of the rollout, the error at t = 50 (the start-up transient) and the
one-step error on a developed reference wake. Then fits each gap against log10(optimiser steps)
over the second half of the points and says at how many steps the trend would reach the issue's
target, or that it does not approach it.

    .venv/bin/python benchmarks/flow_learning_curve.py --out runs/curve --epochs 150 --every 15 \\
        [--name flow_learning_curve] [--steps 2000] [-- key=value ...]

Resumable: rerun the same command and finished segments (training and evaluation) are skipped.
Writes benchmarks/results/NAME.md, NAME.json and NAME.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from pdeaccel.experiments.flow import held_out_environment, held_out_spec
from pdeaccel.experiments.flow_eval import (load_flow_model, neural_rollout, potential_of, reference_rollout,
                                            shedding_frequency, step_mirrored, velocity_error)
from pdeaccel.neural_flow import PotentialState
from pdeaccel.train import io

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
#: the issue's targets (benchmarks/results/flow.md): St within 10%, amplitude >= 70%, mean flow within
#: 10%, error at t = 50 <= 0.15, one-step error on a developed wake <= 5%
TARGETS = {"strouhal_gap": 0.10, "amplitude_ratio": 0.70, "mean_flow_error": 0.10, "error_t50": 0.15,
           "one_step_error": 0.05}
WAKE_START = 600  # reference step of the developed wake for the one-step error
NO_SHEDDING = 0.1  # below this wake amplitude (share of the reference's) the network does not shed


def done_epochs(run: Path) -> int:
    found = io.latest_valid_checkpoint(run / "checkpoints") if (run / "checkpoints").is_dir() else None
    return int(found[1]["epoch"]) if found else 0


def train_to(run: Path, experiment: str, epochs: int, overrides: list[str]) -> float:
    """Train (or resume) ``run`` up to ``epochs`` epochs; returns the wall seconds it took."""
    exe = str(Path(sys.executable).parent / "pdeaccel")
    if done_epochs(run) == 0:
        cmd = [exe, "train", experiment, "--out", str(run), "--quiet", *overrides, f"train.epochs={epochs}"]
    else:
        cmd = [exe, "train", experiment, "--resume", str(run), "--quiet", f"train.epochs={epochs}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def same_trajectory(run: Path, other: Path) -> None:
    """Refuse ``other`` unless its metrics.csv (training loss and validation metric per epoch) equals
    ``run``'s over their common epochs: then it is the same training, continued."""
    import csv

    def log(path: Path) -> dict[str, tuple[str, str]]:
        with open(path / "metrics.csv") as f:
            return {r["epoch"]: (r["train_loss"], r["val_metric"]) for r in csv.DictReader(f)}

    a, b = log(run), log(other)
    common = sorted(set(a) & set(b), key=int)
    if not common or any(a[e] != b[e] for e in common):
        raise SystemExit(f"--final-from {other}: its training log differs from {run}'s over their common epochs "
                         f"({len(common)}): not the same recipe and seed, so it is not a later point of this curve.")


def references(cfg: dict, kinds: list[str], steps: int) -> dict:
    """The numerical reference of each held-out domain (probe, mean flow, t = 50 state, wake states)."""
    t50 = max(1, round(50 / cfg["physics"]["dt"]))
    out = {}
    for kind in kinds:
        env = held_out_environment(cfg["physics"], kind)
        keep = {t50} | ({WAKE_START, WAKE_START + 1} if kind == "cylinder" and steps > WAKE_START else set())
        out[kind] = (env, reference_rollout(env, steps, save_steps=keep, average_from=int(0.4 * steps)))
    return out


def evaluate(run: Path, refs: dict, steps: int, mirror: bool = False) -> dict:
    """``mirror``: step with the mirror-equivariant average of the trained network (model.mirror)
    whatever it was trained with (2D vanilla models)."""
    model, cfg, epochs = load_flow_model(run)
    if mirror:
        step_mirrored(model)
    t50 = max(1, round(50 / cfg["physics"]["dt"]))
    row = {"epochs": epochs, "optimizer_steps": epochs * cfg["train"]["steps_per_epoch"], "domains": {}}
    for kind, (env, ref) in refs.items():
        spec = held_out_spec(cfg["physics"], kind)
        net = neural_rollout(model, env, steps, save_steps={t50}, diagnostics=False, average_from=int(0.4 * steps))
        states = dict(zip(ref.snapshot_steps, ref.snapshots))
        size = 2 * spec["radius"] if "radius" in spec else spec["size"][0]
        discard = steps // 5
        f_net, _ = shedding_frequency(net.probe, env.dt, discard)
        f_ref, _ = shedding_frequency(ref.probe, env.dt, discard)
        a = int(0.4 * steps)
        ref_amplitude = float(np.std(ref.probe[a:]))
        if ref_amplitude < 1e-6 * spec["inflow"]:  # the reference does not shed: nothing to compare with
            ref_amplitude, f_ref = math.nan, math.nan
        amplitude = float(np.std(net.probe[a:])) / ref_amplitude if net.stable else math.nan
        if not amplitude >= NO_SHEDDING:  # a flicker's spectral peak is not a shedding frequency
            f_net = math.nan
        d = {"stable": net.stable,
             "strouhal_net": f_net * size / spec["inflow"], "strouhal_reference": f_ref * size / spec["inflow"],
             "strouhal_gap": abs(f_net - f_ref) / f_ref if f_ref > 0 else math.nan,  # nan if either does not shed
             "amplitude_ratio": amplitude,
             "mean_flow_error": velocity_error(tuple(c.float() for c in net.mean_velocity),
                                               tuple(c.float() for c in ref.mean_velocity), env)
             if net.stable else math.nan,
             "error_t50": velocity_error(net.snapshots[0], tuple(c.float() for c in states[t50]), env)
             if net.snapshots else math.nan}
        if WAKE_START in states:
            env64 = env.to(dtype=torch.float64)
            state = PotentialState(potential_of(states[WAKE_START], env64).to(env.fluid.dtype),
                                   torch.zeros_like(env.fluid))
            with torch.no_grad():
                u = model.velocity(model(state, env), env)
            d["one_step_error"] = velocity_error(tuple(c.double() for c in u), states[WAKE_START + 1], env64)
        row["domains"][kind] = d
    return row


def trend(rows: list[dict], kind: str, key: str) -> dict:
    """Least-squares line of the metric against log10(steps) over the second half of the points
    and the steps at which it would reach the target (None: not approaching it)."""
    pts = [(r["optimizer_steps"], r["domains"][kind].get(key)) for r in rows]
    pts = [(s, v) for s, v in pts if v is not None and math.isfinite(v)]
    pts = pts[len(pts) // 2:]
    if len(pts) < 3:
        return {"slope_per_decade": math.nan, "steps_to_target": None, "too_few_points": True}
    x = np.log10([s for s, _ in pts])
    y = np.array([v for _, v in pts])
    slope, intercept = np.polyfit(x, y, 1)
    target = TARGETS[key]
    higher_is_better = key == "amplitude_ratio"
    last = y[-1]
    met = last >= target if higher_is_better else last <= target
    approaching = slope > 1e-9 if higher_is_better else slope < -1e-9  # a flat line (round-off slope) never gets there
    steps = 10 ** ((target - intercept) / slope) if (not met and approaching) else None
    return {"slope_per_decade": float(slope), "met_now": bool(met),
            "steps_to_target": float(steps) if steps is not None else None}


def plot(rows: list[dict], kinds: list[str], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("amplitude_ratio", "wake amplitude / reference"), ("strouhal_gap", "|St − St_ref| / St_ref"),
            ("mean_flow_error", "mean-flow error (rel. L2)"), ("error_t50", "error at t = 50"),
            ("one_step_error", "one-step error, developed wake")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
    steps = [r["optimizer_steps"] for r in rows]
    for ax, (key, label) in zip(axes, keys):
        for kind in kinds:
            vals = [r["domains"][kind].get(key, math.nan) for r in rows]
            if any(v is not None and math.isfinite(v) for v in vals):
                ax.plot(steps, vals, "o-", label=kind, ms=3)
        ax.axhline(TARGETS[key], color="k", ls="--", lw=0.8, label="target")
        ax.set(xlabel="optimiser steps", title=label, xscale="log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a short log axis
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def metric_header(kinds: list[str]) -> str:
    """The metric columns of a table of :func:`evaluate` rows (shared with flow_recipes.py)."""
    return (" | ".join(f"{k}: St net / ref | {k}: amplitude | {k}: mean-flow err | {k}: err t=50" for k in kinds)
            + " | one-step err (cyl.) |")


def metric_cells(row: dict, kinds: list[str]) -> str:
    """The metric cells of one :func:`evaluate` row, ending the table line."""
    cells = []
    for k in kinds:
        d = row["domains"][k]
        st, st_ref = ("no shedding" if not math.isfinite(x) else f"{x:.3f}"
                      for x in (d["strouhal_net"], d["strouhal_reference"]))
        cells += [f"{st} / {st_ref}", f"{d['amplitude_ratio']:.0%}", f"{d['mean_flow_error']:.3f}",
                  f"{d['error_t50']:.3f}"]
    one = row["domains"].get("cylinder", {}).get("one_step_error", math.nan)
    return " | ".join(cells) + f" | {one:.3f} |"


def markdown(data: dict) -> str:
    kinds = data["domains"]
    lines = [f"# Learning curve of the flow solver (benchmarks/flow_learning_curve.py)", "",
             f"Command: `{data['command']}`. Run: `{data['run']}` (`{data['experiment']}` with "
             f"{' '.join(data['overrides']) or 'its defaults'}). Rollouts of {data['steps']} steps from rest on the held-out "
             "domains against the float64 reference; amplitude and mean flow over the last 60%; one-step error from "
             f"the reference's developed wake at step {WAKE_START} (cylinder). Training wall time is per segment, on a "
             "shared 2-core machine (one thread).", "",
             "| optimiser steps | train wall s (segment) | " + metric_header(kinds),
             "|---|---|" + "---|" * (4 * len(kinds) + 1)]
    for r in data["rows"]:
        cells = metric_cells(r, kinds)
        steps = f"{r['optimizer_steps']} (`{r['source']}`)" if r.get("source") else str(r["optimizer_steps"])
        lines.append(f"| {steps} | {r.get('train_seconds', math.nan):.0f} | {cells}")
    if any(r.get("source") for r in data["rows"]):
        lines += ["", "A row marked with a run directory is that run's newest checkpoint: the same recipe and seed "
                  "trained further (its training log equals this run's over every common epoch), evaluated "
                  "the same way."]
    lines += ["", "## Trend over the second half of the points (least squares against log10 steps)", "",
              "| domain | metric | target | now | slope per decade of steps | steps at which the trend reaches the target |",
              "|---|---|---|---|---|---|"]
    for k in kinds:
        for key, t in data["trends"][k].items():
            now = data["rows"][-1]["domains"][k].get(key, math.nan)
            reach = ("too few points for a trend" if t.get("too_few_points") else "met" if t.get("met_now") else
                     (f"{t['steps_to_target']:.3g}" if t.get("steps_to_target") else "not approaching it"))
            lines.append(f"| {k} | {key} | {TARGETS[key]} | {now:.3f} | {t['slope_per_decade']:.3g} | {reach} |")
    lines += ["", f"![learning curve]({data['name']}.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="flow-2d")
    ap.add_argument("--out", required=True, help="the run directory (created, or resumed)")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--every", type=int, default=15, help="epochs per segment (one point of the curve each)")
    ap.add_argument("--steps", type=int, default=2000, help="rollout length of each evaluation")
    ap.add_argument("--domains", default="cylinder,box")
    ap.add_argument("--name", default="flow_learning_curve")
    ap.add_argument("--final-from", metavar="RUN",
                    help="a run of the same recipe trained further (e.g. the shipped model's run): its training log "
                         "must equal this run's over their common epochs (the same trajectory, bit for bit), and its "
                         "newest checkpoint becomes the curve's last point")
    ap.add_argument("overrides", nargs="*", help="config overrides of the first segment (key=value)")
    args = ap.parse_args(argv)
    if args.every < 1 or args.epochs < args.every:
        ap.error("--every must be >= 1 and <= --epochs")
    torch.set_num_threads(1)
    run, kinds = Path(args.out), args.domains.split(",")
    out_json = RESULTS / f"{args.name}.json"
    old = json.loads(out_json.read_text()) if out_json.exists() else {}  # finished segments of this run
    rows = [r for r in old.get("rows", []) if old.get("run") == str(run)]
    refs = None
    for target in range(args.every, args.epochs + 1, args.every):
        if any(r["epochs"] == target for r in rows):
            continue
        seconds = train_to(run, args.experiment, target, args.overrides) if done_epochs(run) < target else math.nan
        if refs is None:
            cfg = yaml.safe_load((run / "config.yaml").read_text())["config"]
            refs = references(cfg, kinds, args.steps)
        row = evaluate(run, refs, args.steps)
        row["train_seconds"] = seconds
        rows.append(row)
        rows.sort(key=lambda r: r["epochs"])
        d = row["domains"]
        print(f"{row['optimizer_steps']} steps: " + "; ".join(
            f"{k} St {v['strouhal_net']:.3f}/{v['strouhal_reference']:.3f} amp {v['amplitude_ratio']:.0%} "
            f"t50 {v['error_t50']:.3f}" for k, v in d.items()), flush=True)
        write(args, argv, run, kinds, rows)  # after every segment: a stopped run keeps what it measured
    if args.final_from:
        final = Path(args.final_from)
        same_trajectory(run, final)
        if not any(r.get("source") == str(final) for r in rows):
            if refs is None:
                cfg = yaml.safe_load((run / "config.yaml").read_text())["config"]
                refs = references(cfg, kinds, args.steps)
            row = evaluate(final, refs, args.steps)
            row.update(source=str(final), train_seconds=math.nan)
            rows = sorted([r for r in rows if r["epochs"] != row["epochs"]] + [row], key=lambda r: r["epochs"])
    if rows:  # also when every segment was done: the tables follow this script's current rules
        write(args, argv, run, kinds, rows)
    return 0


def write(args, argv, run: Path, kinds: list[str], rows: list[dict]) -> None:
    data = {"command": "python benchmarks/flow_learning_curve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "run": str(run), "experiment": args.experiment, "overrides": args.overrides, "steps": args.steps,
            "domains": kinds, "name": args.name, "targets": TARGETS, "rows": rows,
            "trends": {k: {key: trend(rows, k, key) for key in TARGETS
                           if key != "one_step_error" or k == "cylinder"} for k in kinds}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(data))
    plot(rows, kinds, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    sys.exit(main())
