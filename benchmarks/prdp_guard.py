"""The divergence guard on a real divergence: heat-1d trained at K = 1 (the paper's K0 for Heat 1D).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prdp_guard.py

Why K = 1 diverges: the emulator's loss goes through û₂ = x_K(û₁), K warm-started Jacobi sweeps
on A = I − νΔt·L (x₀ = b = û₁), whose Jacobian is M_K = A⁻¹ + G^K (I − A⁻¹), G = I − D⁻¹A. The
implicit gradient back-propagates with A⁻ᵀ instead (the converged solve's sensitivity). At
νΔt/h² ≈ 0.96 the eigenvalues of M_1 are negative on the upper third of the spectrum while those
of A⁻¹ are all positive, so on those modes the "gradient" points uphill and the loss grows
geometrically. With unrolled gradients (the true gradient of x_K) or with K = 2 (all
eigenvalues of M_2 positive) the same training converges. The script measures this spectrum
and trains heat-1d (cpu size, seed 0, 100 epochs) five ways, and burgers-1d once at K = 1: fixed K = 1 with the guard, with the
guard's explosion test off (``train.guard_factor=1e300``; non-finite values are still caught),
with unrolled gradients, fixed K = 2, and PRDP started at K0 = 1, ΔK = 1. Writes
``benchmarks/results/prdp_guard.md`` + ``.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from pdeaccel.experiments.runner import resolve_config, train_run
from pdeaccel.train.report import markdown_table

ROOT = Path(__file__).resolve().parent

RUNS = [  # (label, experiment, schedule, overrides)
    ("K = 1, guard on", "heat-1d", "fixed:1", []),
    ("K = 1, guard's explosion test off", "heat-1d", "fixed:1", ["train.guard_factor=1e300"]),
    ("K = 1, unrolled gradients", "heat-1d", "fixed:1", ["solver.grad=unrolled"]),
    ("K = 2", "heat-1d", "fixed:2", []),
    ("PRDP from K0 = 1, ΔK = 1 (the paper's Heat 1D controller)", "heat-1d", "prdp", ["prdp.k0=1", "prdp.delta_k=1"]),
    # the paper's Burgers diverged below K = 4; ours (GMRES(1), implicit gradients) at K = 1:
    ("burgers-1d, K = 1 (its own 60 epochs)", "burgers-1d", "fixed:1", []),
]


def jacobi_spectrum(n: int, r: float, ks: list[int]) -> list[dict]:
    """Eigenvalues of M_K = A⁻¹ + G^K(I − A⁻¹) against those of A⁻¹ for A = I − r·L (Dirichlet, n
    points, r = νΔt/h²): both are diagonal in the sine basis, so no matrix is formed."""
    s2 = np.sin(np.arange(1, n + 1) * np.pi / (2 * (n + 1))) ** 2
    a = 1 + 4 * r * s2  # eigenvalues of A
    g = 1 - a / (1 + 2 * r)  # of the Jacobi iteration matrix G = I − D⁻¹A
    out = []
    for k in ks:
        m = 1 / a + g**k * (1 - 1 / a)
        out.append({"k": k, "min_eigenvalue": float(m.min()), "modes_with_flipped_sign": int((m < 0).sum()),
                    "modes": n})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = resolve_config("heat-1d")
    n = cfg["physics"]["n"]
    r = cfg["physics"]["nu_dt"] * (n + 1) ** 2
    spectrum = jacobi_spectrum(n, r, [1, 2, 3, 4])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, name, schedule, overrides) in enumerate(RUNS):
            over = overrides + ([f"train.epochs={args.epochs}"] if name == "heat-1d" else [])
            s = train_run(name, schedule=schedule, overrides=over, out=Path(tmp) / str(i), progress=False)
            events = json.loads((Path(tmp) / str(i) / "events.json").read_text())
            rows = [line.split(",") for line in (Path(tmp) / str(i) / "metrics.csv").read_text().splitlines()]
            header, rows = rows[0], rows[1:]
            col = {h: j for j, h in enumerate(header)}
            losses = [float(row[col["train_loss"]]) for row in rows]
            vals = [float(row[col["val_metric"]]) for row in rows]
            runs.append({"label": label, "experiment": name, "schedule": schedule, "overrides": over,
                         "final_val_metric": s["final_val_metric"], "best_val_metric": s["best_val_metric"],
                         "max_train_loss": max(losses), "max_val_metric": max(vals), "k_final": s["k_final"],
                         "guard_events": events["divergence_guard"], "refinements": events["refinements"],
                         "train_loss": losses, "val_metric": vals, "forward_iters": s["forward_iters"]})
            print(f"{label}: final val {s['final_val_metric']:.4g}, max val {max(vals):.3g}, "
                  f"guard events {len(events['divergence_guard'])}", flush=True)
    data = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prdp_guard.py"
                       + ("" if args.epochs == 100 else f" --epochs {args.epochs}"),
            "experiment": "heat-1d", "size": "cpu", "seed": cfg["seed"], "r": r, "spectrum": spectrum, "runs": runs,
            "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread"}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "prdp_guard.json").write_text(json.dumps(data, indent=2))
    (results / "prdp_guard.md").write_text(render(data))
    return 0


def render(d: dict) -> str:
    runs = {r["label"]: r for r in d["runs"]}
    on, off = runs["K = 1, guard on"], runs["K = 1, guard's explosion test off"]
    ev = on["guard_events"][0] if on["guard_events"] else None
    lines = [
        "# The divergence guard on a real divergence: heat-1d at K = 1", "",
        f"Command: `{d['command']}` (heat-1d, cpu size, seed {d['seed']}, {len(on['val_metric'])} epochs per run; "
        f"{d['machine']}).", "",
        "## Why training at K = 1 diverges", "",
        f"The emulator's loss goes through K warm-started Jacobi sweeps on A = I − νΔt·L (νΔt/h² = {d['r']:.3f}), "
        "whose Jacobian is M_K = A⁻¹ + G^K (I − A⁻¹). Implicit differentiation back-propagates with A⁻ᵀ, the "
        "converged solve's sensitivity. Where M_K and A⁻¹ have eigenvalues of opposite sign, that gradient "
        "points uphill for the loss actually computed, and the loss grows geometrically:", "",
        markdown_table(["K", "smallest eigenvalue of M_K", "modes where M_K < 0 < A⁻¹"],
                       [[s["k"], f"{s['min_eigenvalue']:.3f}", f"{s['modes_with_flipped_sign']} of {s['modes']}"]
                        for s in d["spectrum"]]), "",
        "Odd K flip the sign of the high modes, even K never do. This is also why the heat experiments "
        "refine over even K only. Unrolled gradients differentiate x_K itself, so K = 1 trains with them "
        "(row 3 below).", "",
        "## The trainings (heat-1d unless named)", "",
        markdown_table(["run", "guard events", "K_final", "max train loss", "max validation", "final validation"],
                       [[r["label"], len(r["guard_events"]), r["k_final"], f"{r['max_train_loss']:.3g}",
                         f"{r['max_val_metric']:.3g}", f"{r['final_val_metric']:.4g}"] for r in d["runs"]]), "",
    ]
    if ev is not None:
        best = min(on["train_loss"][: ev["epoch"]])
        lines += [
            f"With the guard, the loss at K = 1 bottoms out at {best:.3g} and then grows a few-fold per epoch. In "
            f"epoch {ev['epoch']}, step {ev['step']}, a minibatch loss of {ev['value']:.3g} exceeds 1000× the best epoch "
            f"loss at this K. The guard restores the state after that best epoch (the start of epoch {ev['epoch']} "
            f"was already diverged), raises K {ev['old_k']} → {ev['new_k']} (the fixed schedule doubles K), logs both "
            f"in `events.json` (`divergence_guard` and `refinements`) and goes on: epoch {ev['epoch']}, rerun at "
            f"K = {ev['new_k']} from the restored state, validates at {on['val_metric'][ev['epoch']]:.3g}, the last "
            f"epoch at {on['final_val_metric']:.4g}. (The table's maximum validation of this run, "
            f"{on['max_val_metric']:.3g}, is from the diverging epochs before the guard fired; they stay in the "
            "log, and their iterations in the count.) "
            f"Without the explosion test the same run blows up: the training loss reaches "
            f"{off['max_train_loss']:.3g} and the validation error {off['max_val_metric']:.3g}.", "",
        ]
    prdp = runs["PRDP from K0 = 1, ΔK = 1 (the paper's Heat 1D controller)"]
    first = prdp["refinements"][0] if prdp["refinements"] else None
    if first is not None:
        lines += [
            f"PRDP started at K0 = 1 does not need the guard: the validation error worsens, so its own rule "
            f"(rc > 1) refines to K = {first['new_k']} in epoch {first['epoch']}. By then its validation error had "
            f"already grown to {prdp['max_val_metric']:.3g}, and it ends at {prdp['final_val_metric']:.4g}, against "
            f"{runs['K = 2']['final_val_metric']:.4g} for fixed K = 2. Our heat experiments start at K0 = 2 for this "
            "reason.", "",
        ]
    burgers = runs["burgers-1d, K = 1 (its own 60 epochs)"]
    lines += [f"We did not reproduce the paper's divergence of Burgers below K = 4: burgers-1d (GMRES(1), implicit "
              f"gradients) trained at fixed K = 1 does not diverge ({len(burgers['guard_events'])} guard events, "
              f"training loss never above {burgers['max_train_loss']:.3g}), but it only reaches validation "
              f"{burgers['final_val_metric']:.4g}, where converged training reaches 0.0366 "
              "(`benchmarks/results/prdp.md`).", ""]
    lines += ["Per-epoch training losses and validation errors of every run are in `prdp_guard.json`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
