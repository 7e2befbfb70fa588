"""The numerical reference at its cheapest: how coarse a sub-stepping and which precision keep
MACFlowSolver within the learned solver's own error, and what it then costs per time unit, side by
side with the learned model (the like-for-like row of the flow speed-up).

For the held-out cylinder, the reference of ``benchmarks/flow.py`` (float64, sub-stepped to
Courant 0.5) is the truth; cheaper references (fewer sub-steps per Δt, float32) are run for
``--steps`` steps and their relative L2 velocity error against it is measured at the same steps,
beside the learned model's error, and timed at batch 1.

    .venv/bin/python benchmarks/flow_like_for_like.py --model models/flow-2d --steps 300

Writes benchmarks/results/flow_like_for_like.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pdeaccel.experiments.flow import held_out_environment
from pdeaccel.experiments.flow_eval import (load_flow_model, neural_rollout, reference_rollout, reference_substeps,
                                            velocity_error)
from pdeaccel.physics.incompressible import MACFlowSolver

RESULTS = Path(__file__).resolve().parent / "results"


def cheap_rollout(env, steps: int, substeps: int, dtype: torch.dtype, save: list[int]) -> tuple[dict, float]:
    e = env.to(dtype=dtype)
    solver = MACFlowSolver(e.replace(dt=env.dt / substeps), advection="upwind3")
    state = solver.initial_state()
    out = {}
    start = time.perf_counter()
    for k in range(1, steps + 1):
        state = solver.run(state, substeps)
        if k in save:
            out[k] = tuple(c.to(torch.float32) for c in state.velocity)
    return out, (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="flow-2d")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--substeps", default="1,2,3")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, cfg, _ = load_flow_model(args.model)
    env = held_out_environment(cfg["physics"], "cylinder")
    save = sorted({s for s in (10, 50, 100, args.steps) if s <= args.steps})
    truth = reference_rollout(env, args.steps, save_steps=save)
    fine = reference_substeps(env.to(dtype=torch.float64))
    truth_states = dict(zip(truth.snapshot_steps, truth.snapshots))
    start = time.perf_counter()
    net = neural_rollout(model, env, args.steps, save_steps=save, diagnostics=False)
    net_seconds = (time.perf_counter() - start) / args.steps
    rows = [{"solver": "learned model (float32)", "seconds_per_time_unit": net_seconds / env.dt,
             "errors": {k: velocity_error(u, truth_states[k], env) for k, u in zip(net.snapshot_steps, net.snapshots)}}]
    rows.append({"solver": f"reference, {fine} sub-steps, float64 (the truth)",
                 "seconds_per_time_unit": truth.wall_seconds / args.steps / env.dt, "errors": {k: 0.0 for k in save}})
    for substeps in (int(x) for x in args.substeps.split(",")):
        for dtype in (torch.float32, torch.float64):
            try:
                states, seconds = cheap_rollout(env, args.steps, substeps, dtype, save)
                errors = {k: velocity_error(u, truth_states[k], env) for k, u in states.items()}
            except (RuntimeError, ValueError) as exc:  # a too-coarse step may blow up
                errors, seconds = {"failed": str(exc)[:80]}, float("nan")
            rows.append({"solver": f"reference, {substeps} sub-step(s), {str(dtype).split('.')[-1]}",
                         "seconds_per_time_unit": seconds / env.dt, "errors": errors})
    data = {"command": "python benchmarks/flow_like_for_like.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "model": str(args.model), "dt": env.dt, "steps": args.steps, "rows": rows}
    net_err = max(rows[0]["errors"].values())
    lines = ["# The learned flow solver against the cheapest adequate numerical reference (held-out cylinder)", "",
             f"`{data['command']}`; Δt = {env.dt:g}, batch 1, one thread. Errors: relative L2 velocity error against "
             f"the float64 reference at Courant 0.5 ({fine} sub-steps).", "",
             "| solver | s per time unit | speed-up of the learned model | error at steps " + ", ".join(map(str, save))
             + " | within the learned model's error? |", "|---|---|---|---|---|"]
    for r in rows:
        errs = r["errors"]
        ok = all(isinstance(v, float) and v <= net_err for v in errs.values())
        speed = r["seconds_per_time_unit"] / rows[0]["seconds_per_time_unit"]
        lines.append(f"| {r['solver']} | {r['seconds_per_time_unit']:.3g} | {speed:.3g}× | "
                     + ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in errs.values())
                     + f" | {'yes' if ok else 'no'} |")
    lines += ["", "A reference row marked 'yes' is at least as accurate as the learned model at every step "
              "compared: the learned model's speed-up over the cheapest such row is the like-for-like one."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flow_like_for_like.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / "flow_like_for_like.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
