"""What ``pdeaccel simulate`` writes into a run directory: the HDF5 trajectory, the final-state figure,
the GIF of the plotted field and the markdown report (each written atomically through
:mod:`pdeaccel.train.io`)."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch

from ..config import to_yaml
from ..train import io
from ..train.report import figure, markdown_table, save_png

if TYPE_CHECKING:
    from .simulation_setups import _Setup

#: how the report and the figures name each diagnostic series
_LABELS = {
    "max_abs_u": "max |u|",
    "rms_u": "rms u",
    "mass": "mass ∫u dx",
    "mass_drift": "max |mass − mass₀|",
    "kinetic_energy": "kinetic energy ½⟨|u|²⟩",
    "kinetic_energy_exact": "exact kinetic energy",
    "max_abs_divergence": "max |∇·u|",
    "max_abs_vorticity": "max |ω|",
    "velocity_error_rel_l2": "relative L2 velocity error",
    "velocity_error_max": "max velocity error",
}


def _write_trajectory(path: Path, name: str, cfg: dict[str, Any], setup: _Setup, states: torch.Tensor,
                      views: torch.Tensor, times: list[float], steps: list[int],
                      series: dict[str, list[float]], series_times: list[float]) -> None:
    """HDF5 built in memory, then published atomically: a crash never leaves half a file."""
    buf = BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("states", data=states.numpy(), compression="gzip", compression_opts=4)
        f["states"].attrs["layout"] = "[time, batch, channel, *space]"
        f["states"].attrs["channels"] = setup.channels
        f.create_dataset("times", data=np.asarray(times, dtype=np.float64))
        f.create_dataset("steps", data=np.asarray(steps, dtype=np.int64))
        if setup.view_name not in setup.channels:
            f.create_dataset(setup.view_name, data=views.numpy(), compression="gzip", compression_opts=4)
        diag = f.create_group("diagnostics")
        diag.create_dataset("times", data=np.asarray(series_times, dtype=np.float64))
        for key, values in series.items():
            diag.create_dataset(key, data=np.asarray(values, dtype=np.float64))
        f.attrs["simulation"] = name
        f.attrs["config_yaml"] = to_yaml(cfg)
        f.attrs["config_json"] = json.dumps(cfg)
        grid = f.create_group("grid")
        for key, value in setup.grid_attrs.items():
            grid.attrs[key] = value
        for axis, coords in enumerate(setup.coordinates):
            grid.create_dataset(f"{setup.view_name}_axis{axis}", data=coords)
    io.atomic_write_bytes(path, buf.getvalue())

def _image_extent(coordinates: list[np.ndarray]) -> list[float]:
    """imshow extent so that pixel centres sit at the sample positions."""
    out = []
    for c in coordinates[:2]:
        h = float(c[1] - c[0]) if len(c) > 1 else 1.0
        out += [float(c[0]) - h / 2, float(c[-1]) + h / 2]
    return out


def _color_limits(field: np.ndarray, symmetric: bool) -> tuple[float, float]:
    lo, hi = float(field.min()), float(field.max())
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1.0
        return -m, m
    if hi - lo < 1e-12:
        return lo - 1.0, hi + 1.0
    return lo, hi


def _field_panel(fig, ax, field: np.ndarray, setup: _Setup, title: str, limits: tuple[float, float] | None = None,
                 label: str | None = None):
    vmin, vmax = limits if limits is not None else _color_limits(field, setup.symmetric_colors)
    image = ax.imshow(field.T, origin="lower", extent=_image_extent(setup.coordinates), vmin=vmin, vmax=vmax,
                      cmap="RdBu_r" if setup.symmetric_colors else "viridis", interpolation="bilinear")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=label or setup.view_name)
    return image


def _series_panel(ax, setup: _Setup, series: dict[str, list[float]], times: list[float]) -> None:
    colors = ["tab:blue", "tab:orange"]
    axes = [ax, ax.twinx()] if len(setup.series) > 1 else [ax]
    for axis, key, color in zip(axes, setup.series, colors):
        axis.plot(times, series[key], color=color, lw=1.8, label="simulated")
        axis.set_ylabel(_LABELS.get(key, key), color=color)
        axis.tick_params(axis="y", labelcolor=color)
        if key == "kinetic_energy" and "kinetic_energy_exact" in series:
            axis.plot(times, series["kinetic_energy_exact"], color=color, ls="--", lw=1.2, label="exact")
            axis.legend(loc="upper center", fontsize=8)
    ax.set_xlabel("t")
    ax.set_title("diagnostics", fontsize=10)
    ax.grid(alpha=0.3)


def _plot_final(path: Path, name: str, setup: _Setup, views: torch.Tensor, times: list[float], steps: list[int],
                series: dict[str, list[float]], series_times: list[float], error: torch.Tensor | None) -> None:
    import matplotlib

    sample = views[:, 0].numpy()  # first batch sample: [T, *space]
    ndim = sample.ndim - 1
    last = len(times) - 1
    if ndim == 1:
        fig, axes = figure(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
        picks = sorted(set(np.linspace(0, last, min(6, last + 1)).round().astype(int).tolist()))
        cmap = matplotlib.colormaps["viridis"]
        for i, idx in enumerate(picks):
            axes[0].plot(setup.coordinates[0], sample[idx], color=cmap(i / max(len(picks) - 1, 1)), lw=1.6,
                         label=f"t = {times[idx]:.3g} (step {steps[idx]})")
        axes[0].set_xlabel("x")
        axes[0].set_ylabel(setup.view_name)
        axes[0].set_title(f"{name}: snapshots", fontsize=10)
        axes[0].legend(fontsize=8, loc="best")
        axes[0].grid(alpha=0.3)
        _series_panel(axes[1], setup, series, series_times)
    else:
        fig, axes = figure(1, 3, figsize=(15.5, 4.4))
        where = ""
        if ndim == 3:
            mid = sample.shape[-1] // 2
            sample = sample[..., mid]
            where = f", slice z = {setup.coordinates[2][mid]:.3g}"
        panels = [(sample[idx], f"{setup.view_name} at t = {times[idx]:.3g} (step {steps[idx]}){where}", None)
                  for idx in (0, last)]
        if error is not None:
            # an exact solution keeps its shape, so the first field would look like the last: show the error
            panels = [panels[1], (error[0].numpy(), f"{setup.view_name} − exact at t = {times[last]:.3g}",
                                  f"{setup.view_name} error")]
        for ax, (field, title, label) in zip(axes[:2], panels):
            _field_panel(fig, ax, field, setup, title, label=label)
        _series_panel(axes[2], setup, series, series_times)
    fig.suptitle(f"{name} — step {steps[-1]}, t = {times[-1]:.3g}", fontsize=12)
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def _animate(path: Path, name: str, setup: _Setup, views: torch.Tensor, times: list[float], steps: list[int],
             max_frames: int = 80, fps: int = 12) -> None:
    """GIF of the plotted field, with the first frame's colour scale (so decay stays visible) or,
    with ``setup.rescale_frames``, each frame's own (so a decaying flow stays visible).

    Frames are blitted: the axes and labels are drawn once, then only the image, the title and
    (when rescaling) the colorbar are redrawn per frame (a full matplotlib draw costs ~0.1 s).
    """
    from PIL import Image

    frames = views[:, 0].numpy()
    picks = sorted(set(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int).tolist()))
    limits = _color_limits(frames[0], setup.symmetric_colors)
    fig, ax = figure(figsize=(5.2, 4.4), dpi=80)
    image = _field_panel(fig, ax, frames[0], setup, f"{name}: {setup.view_name}\nstep 0, t = 0", limits)
    fig.tight_layout()
    colorbar_axes = image.colorbar.ax
    image.set_animated(True)
    ax.title.set_animated(True)
    colorbar_axes.set_animated(setup.rescale_frames)
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)
    images, palette = [], None
    for i in picks:
        fig.canvas.restore_region(background)
        image.set_data(frames[i].T)
        if setup.rescale_frames:
            image.set_clim(*_color_limits(frames[i], setup.symmetric_colors))
        ax.set_title(f"{name}: {setup.view_name}\nstep {steps[i]}, t = {times[i]:.3g}", fontsize=10)
        ax.draw_artist(image)
        ax.draw_artist(ax.title)
        if setup.rescale_frames:
            fig.draw_artist(colorbar_axes)
        rgba = np.asarray(fig.canvas.buffer_rgba())
        frame = Image.fromarray(rgba[..., :3].copy())
        # one palette for all frames, from the first (its colorbar holds every colour of the map)
        palette = palette or frame.quantize(colors=255, method=Image.Quantize.MEDIANCUT)
        images.append(frame.quantize(palette=palette, dither=Image.Dither.NONE))
    buf = BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    io.atomic_write_bytes(path, buf.getvalue())


def _markdown(report: dict[str, Any], setup: _Setup, animated: bool) -> str:
    name = report["simulation"]
    rows = [["steps", report["steps"]], ["dt", report["dt"]], ["final time", report["final_time"]],
            ["saved states [T, B, C, *space]", str(report["state_shape"])],
            ["wall time (s)", report["wall_seconds"]], ["steps / second", report["steps_per_second"]]]
    solver_rows = [[m, s["unit"], s["mean"], s["max"], s["total"]] for m, s in report["solver_iterations"].items()]
    invariant_rows = [[k, v] for k, v in report["invariants"].items()]
    fail = report["failures"]
    failure_lines = [f"**Failures: {fail['summary']}.**", ""]
    if fail["per_step"]:
        shown = fail["per_step"][:20]
        failure_lines += [markdown_table(["step", "t", "failure", "detail"],
                                         [[f["step"], f["t"], f["kind"], f["detail"]] for f in shown]), ""]
        if len(fail["per_step"]) > len(shown):
            failure_lines += [f"({len(fail['per_step']) - len(shown)} more in report.json)", ""]
    lines = [f"# {name}", "", report["description"], "",
             markdown_table(["quantity", "value"], rows), "",
             "## Failures", "", *failure_lines,
             "## Solver iterations per time step", "",
             "Counts of the slowest sample in the batch, summed over the solves of a step.", "",
             markdown_table(["method", "unit", "mean", "max", "total"], solver_rows), "",
             "## Invariants", "", markdown_table(["quantity", "value"], invariant_rows), "",
             "![final state](final.png)", ""]
    if animated:
        lines += ["![animation](animation.gif)", ""]
    lines += ["## Resolved config", "", "```yaml", to_yaml(report["config"]).rstrip(), "```", ""]
    return "\n".join(lines)
