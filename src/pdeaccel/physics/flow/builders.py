"""Builders of flow environments: the lid-driven cavity, channels (with a box or a cylinder), a
pipe, and any user-drawn 2D mask."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from ..._checks import choice, integer, integers, real
from ...grid import Grid
from ...stencils import mac_coordinates, mac_face_shape
from .environment import FlowEnvironment
from .obstacles import Obstacle, rasterise

PROFILES = ("parabolic", "uniform")
OUTFLOWS = ("open", "prescribed")


def lid_driven_cavity(n: int | Sequence[int] = 32, *, ndim: int = 2, length: float = 1.0, lid_speed: float = 1.0,
                      reynolds: float = 100.0, rho: float = 1.0, dt: float | None = None,
                      dtype: torch.dtype = torch.float64) -> FlowEnvironment:
    """A square (cubic) cavity of side ``length`` with ``n`` fluid cells per side, closed by no-slip
    walls; the top wall (high y) slides along +x at ``lid_speed``.

    ``μ = ρ·lid_speed·length / reynolds``. Default ``dt``: half a cell per lid passage
    (``0.5·h/lid_speed``). The grid has ``n+2`` cells per axis (the wall layer).
    """
    ndim = integer("ndim", ndim, minimum=2, maximum=3)
    sizes = integers("n", n, ndim, minimum=2)
    real("length", length, positive=True), real("lid_speed", lid_speed)
    real("reynolds", reynolds, positive=True), real("rho", rho, positive=True)
    h = length / sizes[0]
    if any(abs(length / s - h) > 1e-12 * h for s in sizes):
        raise ValueError(f"a cavity needs square cells; got n={sizes} for one side length {length}.")
    grid, fluid, faces = _walled_box(sizes, h, dtype)
    # the lid is the top layer of wall cells (high y): the x-faces inside it carry the lid speed
    faces[0][:, :, :, -1] = lid_speed
    mu = rho * abs(lid_speed) * length / reynolds if lid_speed != 0 else rho * length / reynolds
    dt = 0.5 * h / max(abs(lid_speed), 1e-12) if dt is None else dt
    return FlowEnvironment(grid, fluid, tuple(faces), mu=mu, rho=rho, dt=dt, origin=(h,) * ndim)


def channel(
    length: float,
    height: float,
    resolution: int,
    *,
    ndim: int = 2,
    depth: float | None = None,
    inflow_speed: float = 1.0,
    profile: Literal["parabolic", "uniform"] = "parabolic",
    outflow: Literal["open", "prescribed"] = "open",
    obstacles: Sequence[Obstacle] = (),
    mu: float = 0.01,
    rho: float = 1.0,
    dt: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> FlowEnvironment:
    """A channel along x of ``length`` × ``height`` (× ``depth`` in 3D) with no-slip walls.

    ``resolution`` cells span the height (``h = height/resolution``). The fluid enters at x = 0
    with mean speed ``inflow_speed`` (``profile="parabolic"``: plane Poiseuille
    ``6Ū·y(H−y)/H²``, in 3D the product profile ``36Ū·y(H−y)z(W−z)/(H²W²)``; or uniform) and
    leaves at x = length through an open outflow (pressure 0, zero normal gradient) or, with
    ``outflow="prescribed"``, through faces carrying the inflow profile (Wandel et al.'s
    in/outflow cells; the flow then has no open boundary). ``obstacles`` are in physical
    coordinates (origin at the inflow wall corner). Default ``dt``: half a cell at the peak
    inflow speed.
    """
    real("length", length, positive=True), real("height", height, positive=True), real("inflow_speed", inflow_speed)
    choice("profile", profile, PROFILES)
    choice("outflow", outflow, OUTFLOWS)
    ndim = integer("ndim", ndim, minimum=2, maximum=3)
    integer("resolution (cells across the height)", resolution, minimum=2)
    h = height / resolution
    extents = [length, height] + ([height if depth is None else depth] if ndim == 3 else [])
    real("depth", extents[-1], positive=True)
    cells = [max(2, round(e / h)) for e in extents]
    grid, fluid, faces = _walled_box(cells, h, dtype)
    origin = (h,) * ndim
    coords = mac_coordinates(grid, 0, origin, dtype, "cpu")
    shape_fn = torch.ones_like(coords[1])
    if profile == "parabolic":
        for a in range(1, ndim):
            H = cells[a] * h
            y = coords[a].clamp(0.0, H)
            shape_fn = shape_fn * 6.0 * y * (H - y) / H**2
    u_in = inflow_speed * shape_fn
    # the inflow column x-faces (and the outer boundary face) carry the profile
    faces[0][0, 0, :2] = u_in[:2]
    out = torch.zeros_like(fluid)
    if outflow == "prescribed":
        faces[0][0, 0, -2:] = u_in[-2:]
    else:
        interior = (slice(1, -1),) * (ndim - 1)
        out[(0, 0, -1) + interior] = 1.0
    fluid_bg, faces_bg = fluid, tuple(faces)
    fluid, faces = rasterise(grid, fluid_bg, faces_bg, (tuple(obstacles),), origin)
    peak = abs(inflow_speed) * (1.5 ** (ndim - 1) if profile == "parabolic" else 1.0)
    dt = 0.5 * h / max(peak, 1e-12) if dt is None else dt
    return FlowEnvironment(grid, fluid, faces, mu=mu, rho=rho, dt=dt, outflow=out,
                           obstacles=(tuple(obstacles),), background=(fluid_bg, faces_bg), origin=origin)


def channel_with_box(
    length: float = 3.0,
    height: float = 1.0,
    resolution: int = 32,
    *,
    box_center: Sequence[float] | None = None,
    box_size: Sequence[float] | None = None,
    box_velocity: Sequence[float] = (),
    **channel_kwargs,
) -> FlowEnvironment:
    """:func:`channel` with an axis-aligned box (default: a square of side height/5 at x = height,
    centred in the cross-section). Extra keyword arguments go to :func:`channel`."""
    ndim = channel_kwargs.get("ndim", 2)
    depth = channel_kwargs.get("depth") or height
    center = box_center or ((height, height / 2) if ndim == 2 else (height, height / 2, depth / 2))
    size = box_size or (height / 5,) * ndim
    return channel(length, height, resolution,
                   obstacles=(Obstacle.box(center, size, velocity=box_velocity),), **channel_kwargs)


def channel_with_cylinder(
    length: float = 2.2,
    height: float = 0.41,
    resolution: int = 41,
    *,
    center: Sequence[float] = (0.2, 0.2),
    radius: float = 0.05,
    angular_velocity: float | Sequence[float] = 0.0,
    reynolds: float | None = None,
    **channel_kwargs,
) -> FlowEnvironment:
    """:func:`channel` with a cylinder; the defaults are Schäfer & Turek's (1996) benchmark
    channel (2.2 × 0.41, cylinder of diameter 0.1 at (0.2, 0.2), parabolic inflow).

    ``angular_velocity`` spins the cylinder (a prescribed tangential surface velocity, the
    "magnus" environments). ``reynolds`` (if given) sets ``μ = ρ·Ū·D/Re`` with Ū the mean inflow
    speed and D = 2·radius.
    """
    ndim = channel_kwargs.get("ndim", 2)
    if ndim == 3 and len(center) == 2:
        center = (center[0], center[1], (channel_kwargs.get("depth") or height) / 2)
    if reynolds is not None:
        real("reynolds", reynolds, positive=True)
        rho = channel_kwargs.get("rho", 1.0)
        channel_kwargs["mu"] = rho * abs(channel_kwargs.get("inflow_speed", 1.0)) * 2 * radius / reynolds
    obstacle = Obstacle.cylinder(center, radius, angular_velocity=angular_velocity)
    return channel(length, height, resolution, obstacles=(obstacle,), **channel_kwargs)


def pipe(length: float = 4.0, diameter: float = 1.0, resolution: int = 16, *, ndim: int = 2,
         inflow_speed: float = 1.0, mu: float = 0.01, rho: float = 1.0, dt: float | None = None,
         dtype: torch.dtype = torch.float64) -> FlowEnvironment:
    """A straight pipe along x with Poiseuille inflow of mean speed ``inflow_speed`` and an open
    outflow. 2D: the plane channel of width ``diameter``. 3D: a circular cross-section (cells
    whose centre lies farther than ``diameter/2`` from the axis are wall), inflow
    ``2Ū(1 − r²/R²)``. ``resolution`` cells span the diameter."""
    if ndim == 2:
        return channel(length, diameter, resolution, inflow_speed=inflow_speed, mu=mu, rho=rho, dt=dt, dtype=dtype)
    if dt is None:  # half a cell at the peak speed 2Ū
        dt = 0.25 * diameter / resolution / max(abs(inflow_speed), 1e-12)
    env = channel(length, diameter, resolution, ndim=3, inflow_speed=inflow_speed, profile="uniform",
                  mu=mu, rho=rho, dt=dt, dtype=dtype)
    R = diameter / 2
    _, y, z = env.cell_coordinates()
    inside = ((y - R) ** 2 + (z - R) ** 2 <= R * R)[None, None]
    fluid = env.fluid * inside
    outflow = env.outflow * inside
    _, fy, fz = env.face_coordinates(0)
    r2 = ((fy - R) ** 2 + (fz - R) ** 2) / (R * R)
    u_in = (2 * inflow_speed * (1 - r2)).clamp(min=0.0)
    faces = [f.clone() for f in env.face_velocity]
    faces[0][0, 0, :2] = u_in[:2]
    return env.replace(fluid=fluid, outflow=outflow, face_velocity=tuple(faces), background=(fluid, tuple(faces)))


def from_mask(
    mask: np.ndarray | torch.Tensor | str | Path,
    *,
    cell_size: float = 1.0,
    frame: Literal["channel", "closed", "none"] = "channel",
    inflow_speed: float = 1.0,
    profile: Literal["parabolic", "uniform"] = "uniform",
    outflow: Literal["open", "prescribed"] = "open",
    threshold: float = 0.5,
    mu: float = 0.1,
    rho: float = 1.0,
    dt: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> FlowEnvironment:
    """An environment from a user-drawn 2D mask.

    ``mask`` is either an array indexed ``[x, y]`` (grid order) with 1/True = fluid and 0/False =
    solid, or the path of an image (read with ``matplotlib.image.imread``; rows are y from the
    top, as displayed) whose dark pixels (grey level below ``threshold``, on a 0–1 scale) are
    solid. ``frame`` adds a layer of cells around it: ``"channel"`` — inflow at low x (speed
    ``inflow_speed``, ``profile``), outflow at high x, no-slip walls along y; ``"closed"`` —
    no-slip walls all around; ``"none"`` — nothing added (outside the grid counts as a wall at
    rest).
    """
    arr = _read_mask(mask, threshold)
    choice("frame", frame, ("channel", "closed", "none"))
    real("cell_size", cell_size, positive=True)
    nx, ny = arr.shape
    pad = 0 if frame == "none" else 1
    grid = Grid((nx + 2 * pad, ny + 2 * pad), ((nx + 2 * pad) * cell_size, (ny + 2 * pad) * cell_size), "neumann")
    fluid = torch.zeros((1, 1) + grid.shape, dtype=dtype)
    fluid[0, 0, pad:pad + nx, pad:pad + ny] = torch.as_tensor(arr, dtype=dtype)
    faces = _zero_faces(grid, dtype)
    origin = (pad * cell_size,) * 2
    out = torch.zeros_like(fluid)
    if frame == "channel":
        choice("profile", profile, PROFILES)
        choice("outflow", outflow, OUTFLOWS)
        _, y = mac_coordinates(grid, 0, origin, dtype, "cpu")
        H = ny * cell_size
        yc = y.clamp(0.0, H)
        u_in = inflow_speed * (6.0 * yc * (H - yc) / H**2 if profile == "parabolic" else torch.ones_like(yc))
        faces[0][0, 0, :2] = u_in[:2]
        if outflow == "prescribed":
            faces[0][0, 0, -2:] = u_in[-2:]
        else:
            out[0, 0, -1, 1:-1] = 1.0
        # inflow/outflow cells next to a solid pixel of the mask's first/last column stay walls
        faces[0][0, 0, 1] *= fluid[0, 0, 1]
        out[0, 0, -1] *= fluid[0, 0, -2]
        if outflow == "prescribed":
            faces[0][0, 0, -2] *= fluid[0, 0, -2]
    h = cell_size
    dt = 0.5 * h / max(abs(inflow_speed), 1e-12) if dt is None else dt
    return FlowEnvironment(grid, fluid, tuple(faces), mu=mu, rho=rho, dt=dt, outflow=out, origin=origin,
                           background=(fluid, tuple(faces)))


def _read_mask(mask, threshold: float) -> np.ndarray:
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        if not path.is_file():
            raise ValueError(f"mask image {str(path)!r} does not exist or is not a file.")
        import matplotlib.image as mpimg

        try:
            img = np.asarray(mpimg.imread(str(path)), dtype=np.float64)
        except (OSError, SyntaxError, ValueError) as exc:  # PIL reports a damaged PNG as SyntaxError
            raise ValueError(f"mask image {str(path)!r} cannot be read as an image: {exc}") from None
        if img.max() > 1.0:  # 8-bit images other than PNG come back as 0..255
            img = img / 255.0
        if img.ndim == 3:
            img = img[..., :3].mean(axis=-1)
        if img.ndim != 2:
            raise ValueError(f"mask image must be greyscale or RGB(A), got array of shape {img.shape}.")
        return (np.flipud(img).T >= threshold).astype(np.float64)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a NumPy array, a torch tensor or an image path, got {type(mask).__name__}.")
    if not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool) or np.iscomplexobj(mask):
        raise TypeError(f"mask must hold real numbers (0 solid, 1 fluid), got dtype {mask.dtype}.")
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2D array indexed [x, y], got shape {mask.shape}.")
    arr = mask.astype(np.float64)
    if not np.all(np.isin(arr, (0.0, 1.0))):
        bad = np.unique(arr[~np.isin(arr, (0.0, 1.0))])[:5]
        raise ValueError(f"mask values must be 0 (solid) or 1 (fluid), found {bad.tolist()}.")
    if arr.sum() == 0:
        raise ValueError("mask has no fluid cell (all zeros); 1 marks fluid, 0 solid.")
    return arr


def _walled_box(cells: Sequence[int], h: float, dtype: torch.dtype) -> tuple[Grid, torch.Tensor, list[torch.Tensor]]:
    """A box of ``cells`` fluid cells of side ``h`` inside one layer of wall cells: its grid, the
    fluid mask and zero face velocities."""
    grid = Grid(tuple(c + 2 for c in cells), tuple((c + 2) * h for c in cells), "neumann")
    fluid = torch.zeros((1, 1) + grid.shape, dtype=dtype)
    fluid[(slice(None), slice(None)) + (slice(1, -1),) * grid.ndim] = 1.0
    return grid, fluid, _zero_faces(grid, dtype)


def _zero_faces(grid: Grid, dtype: torch.dtype) -> list[torch.Tensor]:
    return [torch.zeros((1, 1) + mac_face_shape(grid, d), dtype=dtype) for d in range(grid.ndim)]
