"""What ``pdeaccel simulate --model`` writes: the HDF5 trajectory, the speed and vorticity figure and
GIF (each written atomically), and the cell speed and vorticity they show."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..physics.flow import FlowEnvironment
from ..train import io
from ..train.report import figure, save_png

if TYPE_CHECKING:
    from .flow_eval import Rollout

Velocity = tuple[torch.Tensor, ...]


def cell_speed(u: Velocity) -> torch.Tensor:
    """|u| at cell centres (face values averaged per axis), ``[*cells]`` of the first sample."""
    comps = [0.5 * (c.narrow(d + 2, 0, c.shape[d + 2] - 1) + c.narrow(d + 2, 1, c.shape[d + 2] - 1))
             for d, c in enumerate(u)]
    return torch.sqrt(sum(c[0, 0] ** 2 for c in comps))


def vorticity(u: Velocity, h: float) -> torch.Tensor:
    """2D vorticity ∂v/∂x − ∂u/∂y at interior cell corners of the first sample."""
    ux, uy = u[0][0, 0], u[1][0, 0]
    return (uy[1:, 1:-1] - uy[:-1, 1:-1]) / h - (ux[1:-1, 1:] - ux[1:-1, :-1]) / h


def _write_h5(path: Path, roll: Rollout, env: FlowEnvironment, cfg: dict, spec: dict) -> None:
    import json

    import h5py

    buf = BytesIO()  # written whole, then published atomically: a crash never leaves half a file
    with h5py.File(buf, "w") as f:
        f.attrs["config"] = json.dumps(cfg)
        f.attrs["environment"] = json.dumps(spec)
        f.create_dataset("fluid", data=env.fluid[0, 0].numpy())
        f.create_dataset("times", data=np.asarray(roll.times))
        f.create_dataset("probe", data=np.asarray(roll.probe))
        f.create_dataset("snapshot_steps", data=np.asarray(roll.snapshot_steps))
        for d in range(env.ndim):
            if roll.snapshots:
                f.create_dataset(f"velocity_{'xyz'[d]}", data=torch.stack([s[d][0, 0] for s in roll.snapshots]).numpy(),
                                 compression="gzip")
        for k, v in roll.diagnostics.items():
            f.create_dataset(f"diagnostics/{k}", data=np.asarray(v))
    io.atomic_write_bytes(path, buf.getvalue())


def _limits(u: Velocity, h: float) -> tuple[float, float]:
    """Colour-scale limits: the largest speed and the largest |vorticity|."""
    return float(cell_speed(u).max()), float(vorticity(u, h).abs().max()) if len(u) == 2 else 1.0


def _draw(axes, u: Velocity, solid: np.ndarray, h: float, limits=None):
    speed = np.ma.masked_where(solid, cell_speed(u).numpy())
    vort = vorticity(u, h).numpy() if len(u) == 2 else None
    lim = limits or _limits(u, h)
    ims = [axes[0].imshow(speed.T, origin="lower", cmap="viridis", vmin=0, vmax=lim[0])]
    if vort is not None:
        ims.append(axes[1].imshow(vort.T, origin="lower", cmap="RdBu_r", vmin=-lim[1], vmax=lim[1],
                                  # interior corners sit half a cell past the cell centres 0..N-2
                                  extent=(0.0, solid.shape[0] - 1.0, 0.0, solid.shape[1] - 1.0)))
    for ax in axes:
        ax.contour(solid.T.astype(float), levels=[0.5], colors="k", linewidths=0.8)  # the obstacle and walls
        ax.set_xticks([]), ax.set_yticks([])
    axes[0].set_title("speed |u|", fontsize=9)
    if len(axes) > 1:
        axes[1].set_title("vorticity", fontsize=9)
    return ims, lim


def _plot_fields(path: Path, u: Velocity, solid: np.ndarray, h: float, title: str) -> None:
    fig, axes = figure(2, 1, figsize=(8, 5.5))
    ims, _ = _draw(axes, u, solid, h)
    for im, ax in zip(ims, axes):
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def _animate_fields(path: Path, roll: Rollout, solid: np.ndarray, env: FlowEnvironment, fps: int = 10,
                    h: float | None = None) -> None:
    from PIL import Image

    h = env.spacing[0] if h is None else h
    frames = []
    limits = _limits(roll.snapshots[-1], h)  # one colour scale for all frames: the developed flow's
    solids = roll.snapshot_solids or [solid] * len(roll.snapshots)
    for u, k, solid_k in zip(roll.snapshots, roll.snapshot_steps, solids):
        fig, axes = figure(2, 1, figsize=(6, 4.2), dpi=70)
        ims, _ = _draw(axes, u, solid_k, h, limits)
        for im, ax in zip(ims, axes):  # the colour bars also put every colour of the maps in each frame
            fig.colorbar(im, ax=ax, shrink=0.8)
        fig.suptitle(f"step {k}, t = {k * env.dt:g}", fontsize=10)
        fig.tight_layout()
        fig.canvas.draw()
        frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()))
    # one palette for all frames, from the developed flow (the first frames are nearly uniform)
    palette = frames[-1].quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    frames = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    buf = BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    io.atomic_write_bytes(path, buf.getvalue())
