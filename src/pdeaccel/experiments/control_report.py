"""The report of ``pdeaccel control``: its markdown table and its figures (the frequency against the
optimisation iterations, the spectra before and after, the vorticity at the optimum through the
model and re-simulated)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..control import ControlSettings, power_spectrum
from ..train.report import figure, save_png
from .flow_eval import shedding_frequency, vorticity


# ------------------------------------------------------------------------------ report
def _shedding(signal: np.ndarray, share: float, inflow: float) -> bool:
    """A developed oscillation: a clean spectral peak and an amplitude above 1% of the inflow."""
    return bool(share > 0.5 and float(np.std(signal)) > 0.01 * abs(inflow))


def eval_record(ev, settings: ControlSettings, inflow: float) -> dict[str, Any]:
    """What the report keeps of one rollout: frequencies, peak share, amplitude, whether it sheds, seconds."""
    f_peak, _ = shedding_frequency(list(ev.signal), ev.sample_dt)
    return {"frequency": float(ev.frequency.detach()), "frequency_peak_interpolated": f_peak,
            "peak_share": ev.share, "amplitude": float(np.std(ev.signal)),
            "shedding": _shedding(ev.signal, ev.share, inflow), "seconds": ev.warmup_seconds + ev.window_seconds,
            "sample_dt": ev.sample_dt}


def target_record(target: float, initial: dict[str, float], best: dict[str, float], steps: list[dict[str, Any]],
                  through, check, first_signal, settings: ControlSettings, inflow: float, *, converged: bool,
                  stopped: str, seconds_total: float, **extra: Any) -> dict[str, Any]:
    """The report's record of one target: the control found, the model's rollout there (``through``)
    and the numerical one (``check``), the optimisation steps and their times."""
    model_rec, check_rec = eval_record(through, settings, inflow), eval_record(check, settings, inflow)
    return {
        "target": target, "initial": dict(initial), "best": best, "iterations": len(steps), "converged": converged,
        "stopped": stopped,
        "frequency_model": model_rec["frequency"], "frequency_numerical": check_rec["frequency"],
        "error_model": (model_rec["frequency"] - target) / target,
        "error_numerical": (check_rec["frequency"] - target) / target,
        "model_eval": model_rec, "numerical_eval": check_rec,
        "seconds_per_iteration": float(np.mean([h["seconds"] for h in steps])),
        "gradient_seconds_per_iteration": float(np.mean([h["gradient_seconds"] for h in steps])),
        "seconds_total": seconds_total, **extra, "history": steps,
        "_signals": {"model_first": first_signal, "model_best": through.signal, "numerical_best": check.signal,
                     "sample_dt_model": through.sample_dt, "sample_dt_numerical": check.sample_dt},
        "_snapshots": {"model": through.bound.snapshot(through.state), "numerical": check.bound.snapshot(check.state)},
    }


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if isinstance(x, float) and math.isfinite(x) else str(x)


def markdown(report: dict[str, Any]) -> str:
    name = report["control"]
    s = report["settings"]
    lines = [f"# Flow control: {report['problem']} ({report['size']} size)", "", report["description"] + ".", "",
             f"- through: {report['simulator']}" + (f" — `{report['model']['model']}`, {report['model'].get('epochs')} "
                                                    "epochs" if report["model"]["model"] != "numerical" else ""),
             f"- verified by: {report['verifier']}",
             f"- control `{name}`, start {report['targets'][0]['initial'][name]:g}; warm-up {s['warmup']} steps "
             f"(no gradient), back-propagation through {s['window']} steps (checkpoints every {s['checkpoint_every']}), "
             f"Adam lr {s['lr']}, at most {s['iterations']} iterations, stop within {100 * s['tolerance']:g}% of the target",
             f"- at the start the numerical solver sheds at f = {_fmt(report['initial_numerical']['frequency'])}",
             "", f"| target f | {name} found | f through the model | f re-simulated (numerical) | error model / "
                 "numerical | iterations | s per iteration (gradient window) | s total | model sheds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["targets"]:
        if "skipped" in r:
            lines.append(f"| {_fmt(r['target'])} | – | no shedding | – | – | 0 | – | – | **NO** |")
            continue
        lines.append(f"| {_fmt(r['target'])} | {_fmt(r['best'][name])} | {_fmt(r['frequency_model'])} | "
                     f"{_fmt(r['frequency_numerical'])} | {100 * r['error_model']:+.1f}% / {100 * r['error_numerical']:+.1f}% | "
                     f"{r['iterations']} | {_fmt(r['seconds_per_iteration'], 3)} ({_fmt(r['gradient_seconds_per_iteration'], 3)}) | "
                     f"{_fmt(r['seconds_total'], 3)} | {'yes' if r['model_eval']['shedding'] else 'NO'} |")
    calibrated = [r for r in report["targets"] if r.get("calibration_rounds")]
    if calibrated:
        lines += ["", "Output calibration (ours; `calibration.rounds`): each round optimises through the model to a "
                      "model target, re-simulates the optimum numerically and shifts the model target by the miss; "
                      "the total time includes the re-simulations.", ""]
        for r in calibrated:
            steps = "; ".join(f"round {c['round']}: model target {_fmt(c['model_target'])} → {name} "
                              f"{_fmt(c['control'][name])}, re-simulated {_fmt(c['frequency_numerical'])} "
                              f"({100 * c['error_numerical']:+.1f}%)" for c in r["calibration_rounds"])
            lines.append(f"- target {_fmt(r['target'])}: {steps}; re-simulations {_fmt(r['numerical_seconds'], 3)} s")
    skipped = [r["skipped"] for r in report["targets"] if "skipped" in r]
    if skipped:
        lines += ["", f"Not optimised: {skipped[0]}."]
    if "frequency.png" in report["files"]:
        lines += ["", "![frequency](frequency.png)", "", "![spectra](spectra.png)", "", "![flow](flow.png)"]
    lines.append("")
    return "\n".join(lines)


def _figure(rows: int, cols: int, figsize: tuple[float, float]):
    return figure(rows, cols, figsize=figsize, squeeze=False)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    save_png(fig, path, dpi=90)


def plot_frequency(path: Path, report: dict[str, Any]) -> None:
    fig, axes = _figure(1, 1, (7, 4))
    ax = axes[0, 0]
    for i, r in enumerate(report["targets"]):
        color = f"C{i}"
        its = [h["iteration"] for h in r["history"]]
        ax.plot(its, [h["frequency"] for h in r["history"]], "o-", color=color, label=f"target {r['target']:g}")
        ax.axhline(r["target"], color=color, ls=":", lw=1)
        ax.plot([its[-1] + 0.5], [r["frequency_numerical"]], "s", color=color, mfc="none", ms=9)
    ax.set(xlabel="optimisation iteration", ylabel="shedding frequency",
           title=f"{report['problem']}: through {report['simulator'].split(' (')[0]} (squares: re-simulated by the "
                 "numerical solver)")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_spectra(path: Path, results: list[dict], before, settings: ControlSettings, report: dict) -> None:
    fig, axes = _figure(1, len(results), (4.2 * len(results), 3.4))
    sig0 = before.signal
    for ax, r in zip(axes[0], results):
        s = r["_signals"]
        curves = [("numerical, start", sig0, before.sample_dt, "k", ":"),
                  ("model, start", s["model_first"], s["sample_dt_model"], "C1", ":"),
                  ("model, optimum", s["model_best"], s["sample_dt_model"], "C1", "-"),
                  ("numerical, optimum", s["numerical_best"], s["sample_dt_numerical"], "k", "-")]
        for label, sig, dt, color, ls in curves:
            if sig is None:
                continue
            f, p = power_spectrum(torch.as_tensor(sig, dtype=torch.float64), dt, settings.pad)
            ax.plot(f.numpy(), (p / p[1:].max().clamp(min=1e-300)).numpy(), color=color, ls=ls, label=label, lw=1)
        ax.axvline(r["target"], color="C3", lw=1, label="target")
        ax.set(xlim=(0, min(4 * r["target"], 0.5 / before.sample_dt)), xlabel="frequency", ylabel="power (normalised)",
               title=f"target {r['target']:g}")
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_flows(path: Path, results: list[dict], report: dict) -> None:
    fig, axes = _figure(len(results), 2, (10, 2.6 * len(results)))
    for row, r in zip(axes, results):
        for ax, key in zip(row, ("model", "numerical")):
            u, solid, h = r["_snapshots"][key]
            w = vorticity(u, h).numpy()
            lim = max(float(np.percentile(np.abs(w), 99)), 1e-12)  # the corners of the obstacle spike
            ax.imshow(w.T, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim,
                      extent=(0.0, solid.shape[0] - 1.0, 0.0, solid.shape[1] - 1.0))
            ax.contour(solid.T.astype(float), levels=[0.5], colors="k", linewidths=0.8)
            ax.set(xticks=[], yticks=[])
            what = "through the model" if key == "model" else "re-simulated, numerical"
            f = r["frequency_model"] if key == "model" else r["frequency_numerical"]
            ax.set_title(f"target {r['target']:g}: vorticity at the optimum, {what} (f = {f:.4g})", fontsize=8)
    _save(fig, path)
