"""Figures and reports of runs: loss/metric curves, K schedules, savings tables.

Everything here reads what a run directory holds (``metrics.csv``, ``report.json``), so
``pdeaccel report RUN`` can rebuild figures and tables from a finished or interrupted run.
"""

from __future__ import annotations

import csv
from io import BytesIO
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure

from .io import atomic_write_bytes


def figure(*grid: int, figsize: tuple[float, float], dpi: float | None = None, **subplots_kw):
    """A figure and its axes without pyplot: no global backend is chosen or changed by importing
    or using this module (a user's interactive session keeps its own). The figure has its own Agg
    canvas, so it can be drawn to pixels (``fig.canvas.buffer_rgba()``, for GIF frames) as well as
    saved; nothing needs closing. Every figure the package writes is made here."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*grid, **subplots_kw)


def save_png(fig, path: str | Path, dpi: float = 110) -> None:
    """PNG through an atomic write: a run killed while drawing never leaves half a figure behind."""
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a pdeaccel run directory?")
    rows = []
    with open(path) as fh:
        for row in csv.DictReader(fh):
            rows.append({k: _num(v) for k, v in row.items()})
    return rows


def _num(v: str) -> Any:
    if v in ("True", "False"):
        return v == "True"
    if v == "":
        return None
    try:
        f = float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    except ValueError:
        return v


def cumulative(values: Sequence[float]) -> list[float]:
    out, acc = [], 0.0
    for v in values:
        acc += v
        out.append(acc)
    return out


def plot_run(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str) -> None:
    """Training loss, validation metric and K against epoch for one run."""
    epochs = [r["epoch"] for r in rows]
    fig, axes = figure(1, 3, figsize=(13, 3.6))
    losses = [r["train_loss"] for r in rows]
    # a log-loss (physics-constrained flow training) is negative: plot it on a linear axis
    (axes[0].semilogy if min(losses) > 0 else axes[0].plot)(epochs, losses)
    axes[0].set(xlabel="epoch", ylabel="training loss", title="training loss")
    axes[1].semilogy(epochs, [r["val_metric"] for r in rows], color="C1")
    axes[1].set(xlabel="epoch", ylabel="validation metric", title="validation")
    diagnostics = [k for k in rows[0] if k.startswith("val_") and k != "val_metric"]
    if all(r["k"] is None for r in rows) and diagnostics:
        # no solver budget to show: the task's validation diagnostics instead
        for i, key in enumerate(diagnostics):
            axes[2].semilogy(epochs, [max(float(r[key]), 1e-300) for r in rows], color=f"C{i + 2}",
                             label=key.removeprefix("val_"))
        axes[2].set(xlabel="epoch", title="validation diagnostics")
        axes[2].legend(fontsize=8)
    else:
        axes[2].step(epochs, [r["k"] if r["k"] is not None else float("nan") for r in rows], where="post", color="C2")
        axes[2].set(xlabel="epoch", ylabel="K (solver iterations)", title="iteration budget")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def plot_comparison(runs: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], path: str | Path,
                    title: str, k_converged: int | None = None) -> None:
    """Validation metric against epoch and against cumulative training iterations, and K schedules.

    ``runs`` maps a label ("PRDP", "converged") to a list of runs (one per seed).
    """
    fig, axes = figure(1, 3, figsize=(14, 3.8))
    for i, (label, seeds) in enumerate(runs.items()):
        color = f"C{i}"
        for j, rows in enumerate(seeds):
            epochs = [r["epoch"] for r in rows]
            metric = [r["val_metric"] for r in rows]
            iters = cumulative([r["forward_iters"] + r["backward_iters"] for r in rows])
            kw = {"color": color, "alpha": 0.8, "label": label if j == 0 else None}
            axes[0].semilogy(epochs, metric, **kw)
            axes[1].semilogy(iters, metric, **kw)
            axes[2].step(epochs, [r["k"] for r in rows], where="post", **kw)
    if k_converged is not None:
        axes[2].axhline(k_converged, color="gray", ls=":", label=f"K_ε = {k_converged}")
    axes[0].set(xlabel="epoch", ylabel="validation metric", title="validation vs epoch")
    axes[1].set(xlabel="cumulative solver iterations (fwd + bwd)", ylabel="validation metric",
                title="validation vs cost")
    axes[2].set(xlabel="epoch", ylabel="K", title="iteration budget K")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def plot_sweep(ks: Sequence[int], finals: Sequence[Sequence[float]], path: str | Path, title: str,
               k_converged: int | None = None) -> None:
    """Final validation metric against a fixed K (incomplete convergence evidence)."""
    fig, ax = figure(figsize=(5.5, 3.8))
    for k, vals in zip(ks, finals):
        ax.scatter([k] * len(vals), vals, color="C0", alpha=0.6)
    means = [sum(v) / len(v) for v in finals]
    ax.plot(ks, means, color="C0", marker="o", label="mean over seeds")
    if k_converged is not None:
        ax.axvline(k_converged, color="gray", ls=":", label=f"K_ε = {k_converged}")
    ax.set(xscale="log", yscale="log", xlabel="fixed K (solver iterations)", ylabel="final validation metric",
           title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
