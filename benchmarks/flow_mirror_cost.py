"""Cost of the mirror-equivariant flow step (model.mirror) against the plain step, side by side.

The same trained 2D model steps the held-out cylinder plain and mirrored (two network passes as
one batch), alternating repeats in one process, one thread; medians of the per-step times.

    .venv/bin/python benchmarks/flow_mirror_cost.py [--model models/flow-2d] [--batches 1,32]

Writes benchmarks/results/flow_mirror_cost.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from pdeaccel.experiments.flow import held_out_environment
from pdeaccel.experiments.flow_eval import load_flow_model
from pdeaccel.physics.flow import FlowEnvironment

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/flow-2d")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--name", default="flow_mirror_cost")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, cfg, _ = load_flow_model(args.model)
    if cfg["physics"]["ndim"] != 2 or not hasattr(model, "mirror"):
        ap.error("--model must be a 2D vanilla flow model")
    env1 = held_out_environment(cfg["physics"], "cylinder")
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        env = FlowEnvironment.stack([env1] * batch)
        start_state = model.initial_state(env)
        times: dict[bool, list[float]] = {False: [], True: []}
        with torch.no_grad():
            for _ in range(args.repeats):
                for mirror in (False, True):  # alternating: a burst of load hits both
                    model.mirror = mirror
                    state = model(start_state, env)  # warm-up call
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        state = model(state, env)
                    times[mirror].append((time.perf_counter() - t0) / args.steps)
        plain, mirrored = statistics.median(times[False]), statistics.median(times[True])
        rows.append({"batch": batch, "plain_seconds_per_step": plain, "mirror_seconds_per_step": mirrored,
                     "ratio": mirrored / plain})
    data = {"command": "python benchmarks/flow_mirror_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "model": args.model, "grid": [cfg["physics"]["length"], cfg["physics"]["height"]],
            "machine": f"{platform.machine()}, 1 of {os.cpu_count()} CPUs, torch {torch.__version__}",
            "load_average": os.getloadavg(), "rows": rows}
    lines = ["# Cost of the mirror-equivariant flow step (benchmarks/flow_mirror_cost.py)", "",
             f"Command: `{data['command']}`. Model `{args.model}` on the held-out cylinder "
             f"({data['grid'][0]}×{data['grid'][1]}), {data['machine']}, load average at the end "
             f"{data['load_average'][0]:.1f}; plain and mirrored steps alternate, {args.repeats} repeats of "
             f"{args.steps} steps, medians.", "",
             "| batch | plain ms/step | mirrored ms/step | mirrored / plain |", "|---|---|---|---|"]
    lines += [f"| {r['batch']} | {1e3 * r['plain_seconds_per_step']:.2f} | {1e3 * r['mirror_seconds_per_step']:.2f} | "
              f"{r['ratio']:.2f}× |" for r in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
