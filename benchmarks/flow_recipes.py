"""Flow-solver training recipes side by side: shedding quality of several trained runs in one run.

Every run is rolled out from rest on the held-out cylinder and box against the same float64
reference (computed once per time step Δt) and judged as in ``flow_learning_curve.py``: Strouhal
number, wake amplitude and mean flow over the last 60% of the rollout, the error at t = 50 and the
one-step error on a developed reference wake. Each row states the run's recipe (its overrides of
the experiment's defaults), its optimiser steps and its training wall time, both including the
run it was initialised from (``net.init_from``), so fine-tuned recipes are charged their whole
budget.

    .venv/bin/python benchmarks/flow_recipes.py default=runs/shed-dt1 mirror=runs/mirror-ft [--steps 2000]
    .venv/bin/python benchmarks/flow_recipes.py mirrored=runs/shed-dt1+mirror   # mirror-stepped at inference only

Writes benchmarks/results/NAME.md and NAME.json (NAME defaults to flow_recipes).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import torch
import yaml

from pdeaccel.experiments.flow_eval import training_command

HERE = Path(__file__).resolve().parent
#: LABEL=RUN+mirror: the run's network stepped mirror-equivariantly (model.mirror) at inference only
MIRROR_SUFFIX = "+mirror"
RESULTS = HERE / "results"


def _curve_module():
    spec = importlib.util.spec_from_file_location("flow_learning_curve", HERE / "flow_learning_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def budget(run: Path) -> tuple[int, float, list[str]]:
    """Optimiser steps and training wall seconds of ``run`` and of the runs it was initialised from,
    and the chain of run directories."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())["config"]
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = len(rows) * cfg["train"]["steps_per_epoch"]
    seconds = sum(float(r["train_seconds"]) for r in rows)
    chain = [str(run)]
    source = cfg.get("net", {}).get("init_from")
    if source:
        s, t, c = budget(Path(source))
        steps, seconds, chain = steps + s, seconds + t, chain + c
    return steps, seconds, chain


def markdown(data: dict) -> str:
    curve = _curve_module()
    kinds = data["domains"]
    lines = ["# Flow-solver training recipes side by side (benchmarks/flow_recipes.py)", "",
             f"Command: `{data['command']}`. Rollouts of {data['steps']} steps from rest against the float64 reference "
             "on the same grid; St and amplitude over the last 60% (no St when the wake amplitude is under "
             "10% of the reference's); one-step error from the reference's developed cylinder wake at step 600. "
             "Steps and wall time include the runs a recipe was initialised from; wall time is training only, on a "
             "shared 2-core machine (one thread per run, other jobs running), so compare it loosely.", "",
             "| recipe | run (initialised from) | optimiser steps | train wall h | " + curve.metric_header(kinds),
             "|---|---|---|---|" + "---|" * (4 * len(kinds) + 1)]
    for r in data["rows"]:
        chain = " ← ".join(f"`{c}`" for c in r["chain"])
        lines.append(f"| {r['label']} | {chain} | {r['optimizer_steps']} | {r['train_seconds'] / 3600:.2f} | "
                     + curve.metric_cells(r, kinds))
    lines += ["", "Recipes (each run's `pdeaccel train` command, its overrides of the defaults):", ""]
    lines += [f"- {r['label']}: `{r['command']}`" for r in data["rows"]]
    targets = data["targets"]
    lines += ["", f"Targets (shedding issue): St within {targets['strouhal_gap']:.0%}, amplitude ≥ "
              f"{targets['amplitude_ratio']:.0%}, mean-flow error ≤ {targets['mean_flow_error']:.0%}, error at t = 50 ≤ "
              f"{targets['error_t50']}, one-step error ≤ {targets['one_step_error']:.0%}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="LABEL=RUN", help="a label and a flow run directory")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--domains", default="cylinder,box")
    ap.add_argument("--name", default="flow_recipes")
    args = ap.parse_args(argv)
    pairs = []
    for item in args.runs:
        label, sep, path = item.partition("=")
        mirror = path.endswith(MIRROR_SUFFIX)
        path = path.removesuffix(MIRROR_SUFFIX)
        if not sep or not label or not (Path(path) / "config.yaml").exists():
            ap.error(f"{item!r}: give LABEL=RUN (or LABEL=RUN{MIRROR_SUFFIX}) with RUN a flow run directory "
                     "(config.yaml, metrics.csv, checkpoints)")
        pairs.append((label, Path(path), mirror))
    torch.set_num_threads(1)
    curve = _curve_module()
    kinds = args.domains.split(",")
    refs: dict[float, dict] = {}  # one reference per time step
    rows = []
    for label, run, mirror in pairs:
        cfg = yaml.safe_load((run / "config.yaml").read_text())["config"]
        dt = float(cfg["physics"]["dt"])
        if dt not in refs:
            refs[dt] = curve.references(cfg, kinds, args.steps)
        row = curve.evaluate(run, refs[dt], args.steps, mirror=mirror)
        steps, seconds, chain = budget(run)
        row.update(label=label, run=str(run), optimizer_steps=steps, train_seconds=seconds, chain=chain,
                   command=training_command(cfg) + ("  (stepped with model.mirror=true at inference only)"
                                                    if mirror else ""), mirrored_at_inference=mirror)
        rows.append(row)
        print(f"{label}: " + "; ".join(f"{k} amp {v['amplitude_ratio']:.0%} t50 {v['error_t50']:.3f}"
                                       for k, v in row["domains"].items()), flush=True)
    data = {"command": "python benchmarks/flow_recipes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "steps": args.steps, "domains": kinds, "targets": curve.TARGETS, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
