"""Use and judge a trained physics-constrained flow solver.

* :func:`load_flow_model` — the model of a ``flow-2d``/``flow-3d`` run directory (newest intact
  checkpoint) with its resolved config.
* :func:`neural_rollout` / :func:`reference_rollout` — the network's rollout and the numerical
  reference solver's (:class:`~pdeaccel.physics.incompressible.MACFlowSolver`, float64, sub-stepped
  to a Courant number of 0.5) on the same environment, with the residual diagnostics and a
  shedding probe (mean vertical velocity in a window behind the obstacle, as in the paper's
  control experiment).
* :func:`shedding_frequency` — the probe's dominant frequency from its power spectrum.
* :func:`simulate_trained` — ``pdeaccel simulate --model RUN_DIR``: a rollout on a named held-out
  environment or a user-supplied mask, with HDF5 trajectory, figure, GIF of speed and vorticity
  with the obstacle drawn, and ``report.md``/``report.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from .._checks import integer
from ..losses import FlowResidual
from ..neural_flow import potential_of, velocity_from_potential
from ..physics.flow import FlowEnvironment, from_mask
from ..physics.incompressible import MACFlowSolver
from ..train import io
from .flow import HELD_OUT, build_environment, held_out_environment, held_out_spec, move_spec
from .registry import timestamped_run_dir
# model files and output writers live in flow_models / flow_outputs; these names stay importable from here
from .flow_models import (MODELS_DIR, export_flow_model, load_flow_model, resolve_model, step_mirrored,  # noqa: F401
                          training_command)
from .flow_outputs import _animate_fields, _plot_fields, _write_h5, cell_speed, vorticity  # noqa: F401
from .flow_envs import reference_substeps  # noqa: F401 (benchmarks import it from here)

Velocity = tuple[torch.Tensor, ...]


# ------------------------------------------------------------------------------ rollouts
@dataclass
class Rollout:
    """What a rollout recorded: per step diagnostics, the probe, and saved velocity snapshots."""

    times: list[float] = field(default_factory=list)
    probe: list[float] = field(default_factory=list)
    diagnostics: dict[str, list[float]] = field(default_factory=dict)
    snapshots: list[Velocity] = field(default_factory=list)
    snapshot_steps: list[int] = field(default_factory=list)
    snapshot_solids: list[np.ndarray] = field(default_factory=list)  # the solid cells at each snapshot
    wall_seconds: float = 0.0
    mean_velocity: Velocity | None = None  # time average over the steps after ``average_from``
    stable: bool = True
    first_unstable_step: int | None = None


def probe_window(env: FlowEnvironment) -> torch.Tensor:
    """Mask of the y-faces (2D) / y-faces (3D) in a window behind the obstacle: from 1 to 3
    obstacle sizes downstream of its centre, ±1 size across (the whole height if no obstacle)."""
    coords = env.face_coordinates(1)
    obstacles = env.obstacles[0]
    if obstacles:
        o = obstacles[0]
        c = o.center
        size = 2 * o.radius if o.shape != "box" else max(o.size)
        window = (coords[0] > c[0] + size) & (coords[0] < c[0] + 3 * size) & ((coords[1] - c[1]).abs() < size)
    else:
        window = torch.ones_like(coords[0], dtype=torch.bool)
    return window.to(env.fluid.dtype) * env.face_free[1][0, 0]


def _probe_value(v: torch.Tensor, window: torch.Tensor) -> float:
    return float((v[0, 0] * window).sum() / window.sum().clamp(min=1.0))


def neural_rollout(model: Any, env: FlowEnvironment, steps: int, *, save_steps: Iterable[int] = (),
                   diagnostics: bool = True, progress: bool = False,
                   env_at: Callable[[int], FlowEnvironment] | None = None,
                   average_from: int | None = None) -> Rollout:
    """``steps`` fine time steps from rest of a flow model (:mod:`pdeaccel.flow_model`; a model
    that advances T steps per call is called ``ceil(steps/T)`` times and every fine state is
    recorded); residual diagnostics per step (``diagnostics``); the velocity is kept at
    ``save_steps``. With moving obstacles ``env_at(k)`` is the environment of step ``k → k+1``
    (``env_at(0)`` is ``env``; a model that advances T steps per call sees the environment of
    the first step of each call); its solid mask is kept with every snapshot."""
    save_steps = set(save_steps)
    out = Rollout()
    window = probe_window(env)
    residual = FlowResidual(env) if diagnostics else None
    state = model.initial_state(env)
    u_old = model.velocity(state, env)
    pending: list = []  # fine states of the last call not yet recorded
    start = time.perf_counter()
    with torch.no_grad():
        for k in tqdm(range(1, steps + 1), desc="neural rollout", disable=not progress, leave=False):
            if not pending:
                if env_at is not None and k > 1:
                    env = env_at(k - 1)
                    residual = FlowResidual(env) if diagnostics else None
                new = model(state, env)
                pending = model.trajectory(state, new)[1:]
                state = new
            fine = pending.pop(0)
            u = velocity_from_potential(fine.potential, env.grid)
            if not all(bool(torch.isfinite(c).all()) for c in u):
                out.stable, out.first_unstable_step = False, k
                break
            out.times.append(k * env.dt)
            out.probe.append(_probe_value(u[1], window))
            if residual is not None:
                t = residual.terms(u_old, u, fine.pressure)
                for key in ("momentum_abs", "boundary_abs", "divergence_abs"):
                    out.diagnostics.setdefault(key, []).append(float(getattr(t, key).mean()))
                out.diagnostics.setdefault("max_speed", []).append(max(float(c.abs().max()) for c in u))
            if k in save_steps:
                out.snapshots.append(tuple(c.clone() for c in u))
                out.snapshot_steps.append(k)
                out.snapshot_solids.append((env.fluid[0, 0] == 0).numpy())
            if average_from is not None and k > average_from:
                _accumulate(out, u, steps - average_from)
            u_old = u
    out.wall_seconds = time.perf_counter() - start
    return out


def parse_resolution(text: str) -> tuple[int, int]:
    """``"full"`` → (1, 1); ``"R"`` → R times coarser in space; ``"R:Q"`` → and Q times in time."""
    if text in ("full", "1"):
        return 1, 1
    try:
        parts = [int(x) for x in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or any(x < 1 for x in parts):
        raise ValueError(f"--resolution must be 'full', 'R' or 'R:Q' (R, Q positive integers: R times coarser in space, "
                         f"Q in time), got {text!r}.")
    return parts[0], parts[1] if len(parts) == 2 else 1


def coarse_rollout(model: Any, env: FlowEnvironment, steps: int, space: int, time_: int, *,
                   save_steps: Iterable[int] = (), progress: bool = False) -> tuple[Rollout, Any]:
    """A NeuralStagger model's simulation ``space`` times coarser in space and ``time_`` in time
    (:meth:`~pdeaccel.stagger.StaggeredFlowSolver.resolution_indices`): only those sub-solvers
    run, and their sub-fields are assembled on the coarse grid. ``steps`` fine steps; the coarse
    states fall every ``time_`` fine steps. Returns the rollout (velocities on the coarse grid;
    the probe and residual are not defined there) and the coarse grid."""
    if not hasattr(model, "resolution_indices"):
        raise ValueError("--resolution other than 'full' needs a NeuralStagger model (model.kind=staggered); "
                         "this one is vanilla.")
    idx = model.resolution_indices(space, time_)
    views = model.sub_views(env)
    grid = model.coarse_grid(env.grid, space)
    from ..decompose import decompose

    solid = (decompose(env.fluid, (space,) * env.ndim)[0, 0, 0] == 0).numpy()
    sub = model.decompose_state(model.initial_state(env), env, idx)
    save_steps = set(save_steps)
    out = Rollout()
    start = time.perf_counter()
    calls = math.ceil(steps / model.window)
    with torch.no_grad():
        for c in tqdm(range(calls), desc="coarse rollout", disable=not progress, leave=False):
            sub = model.step_subset(sub, views)
            slots = [k for k in range(model.window) if (k + 1) % time_ == 0]
            for k, state in zip(slots, model.lattice_states(sub, env, space)):
                step = c * model.window + k + 1
                if step > steps:
                    break
                u = velocity_from_potential(state.potential, grid)
                if not all(bool(torch.isfinite(x).all()) for x in u):
                    out.stable, out.first_unstable_step = False, step
                    break
                out.times.append(step * env.dt)
                out.diagnostics.setdefault("max_speed", []).append(max(float(x.abs().max()) for x in u))
                if step in save_steps or step == steps:
                    out.snapshots.append(tuple(x.clone() for x in u))
                    out.snapshot_steps.append(step)
                    out.snapshot_solids.append(solid)
            if not out.stable:
                break
    out.wall_seconds = time.perf_counter() - start
    return out, grid


def reference_rollout(env: FlowEnvironment, steps: int, *, save_steps: Iterable[int] = (), substeps: int | None = None,
                      progress: bool = False, env_at: Callable[[int], FlowEnvironment] | None = None,
                      average_from: int | None = None) -> Rollout:
    """The numerical reference on the same environment (float64), sampled every network step.
    With ``env_at`` (moving obstacles) the solver is given ``env_at(k)`` after network step ``k``
    (between two, it moves the obstacles itself at their constant velocity)."""
    save_steps = set(save_steps)
    env64 = env.to(dtype=torch.float64)
    sub = substeps or reference_substeps(env64)
    solver = MACFlowSolver(env64.replace(dt=env.dt / sub), advection="upwind3")
    out = Rollout()
    window = probe_window(env64)
    state = solver.initial_state()
    start = time.perf_counter()
    for k in tqdm(range(1, steps + 1), desc="reference rollout", disable=not progress, leave=False):
        state = solver.run(state, sub)
        if env_at is not None:
            solver.env = env_at(k).to(dtype=torch.float64).replace(dt=env.dt / sub)
        out.times.append(k * env.dt)
        out.probe.append(_probe_value(state.velocity[1], window))
        if k in save_steps:
            out.snapshots.append(tuple(c.clone() for c in state.velocity))
            out.snapshot_steps.append(k)
            out.snapshot_solids.append((solver.env.fluid[0, 0] == 0).numpy())
        if average_from is not None and k > average_from:
            _accumulate(out, state.velocity, steps - average_from)
    out.wall_seconds = time.perf_counter() - start
    return out


def _accumulate(out: Rollout, u: Velocity, count: int) -> None:
    """Add ``u / count`` to the rollout's time-averaged velocity (float64)."""
    part = tuple(c.detach().to(torch.float64) / count for c in u)
    out.mean_velocity = part if out.mean_velocity is None else tuple(a + b for a, b in zip(out.mean_velocity, part))


def loss_optimal_steps(env: FlowEnvironment, velocity: Velocity, steps: int, *, pressure: torch.Tensor | None = None,
                       advection: str = "central",
                       theta: float = 0.5, beta: float = 20.0, max_iter: int = 400,
                       restarts: int = 3) -> list[Velocity]:
    """The time stepper the loss defines, with no network: each new state is the minimiser of
    ``L_momentum + β·L_boundary`` over (a, p) (L-BFGS, float64, ``restarts`` runs of ``max_iter``
    iterations), started from the previous one (the first pressure guess: ``pressure`` or 0).
    What a perfect network would produce; its error against the reference is the loss's own
    discretisation error."""
    env = env.to(dtype=torch.float64)
    residual = FlowResidual(env, theta=theta, advection=advection)
    a = potential_of(tuple(c.double() for c in velocity), env)
    p = torch.zeros_like(env.fluid) if pressure is None else pressure.double().clone()
    out = []
    for _ in range(steps):
        u_old = velocity_from_potential(a, env.grid)
        an, pn = a.clone().requires_grad_(True), p.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([an, pn], max_iter=max_iter, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-12, tolerance_change=1e-15)

        def closure():
            opt.zero_grad()
            t = residual.terms(u_old, velocity_from_potential(an, env.grid), pn)
            loss = (t.momentum + beta * t.boundary).sum()
            loss.backward()
            return loss

        for _ in range(restarts):
            opt.step(closure)
        a, p = an.detach(), pn.detach()
        out.append(velocity_from_potential(a, env.grid))
    return out


def outflow_wiggle(velocity: Velocity, env: FlowEnvironment) -> float:
    """Mean |second difference along x| of the speed in the last quarter of the channel (away
    from the walls): odd-even oscillations ahead of a prescribed outflow show up here."""
    s = cell_speed(velocity)
    nx, ny = s.shape
    part = s[3 * nx // 4:-2, 3:-3]
    return float((part[2:] - 2 * part[1:-1] + part[:-2]).abs().mean())


def velocity_error(u: Velocity, ref: Velocity, env: FlowEnvironment) -> float:
    """Relative L2 difference over the free faces."""
    num = sum(float((((a.double() - b.double()) * f.double()) ** 2).sum()) for a, b, f in zip(u, ref, env.face_free))
    den = sum(float(((b.double() * f.double()) ** 2).sum()) for b, f in zip(ref, env.face_free))
    return math.sqrt(num / max(den, 1e-300))


def shedding_frequency(signal: list[float], dt: float, discard: int = 0) -> tuple[float, float]:
    """Dominant frequency of ``signal`` (after ``discard`` warm-up samples) from the peak of its
    periodogram, refined by parabolic interpolation of the log-power around the peak; and the
    fraction of the signal's variance within ±2 bins of it (≈1 for clean shedding)."""
    x = np.asarray(signal[discard:], dtype=np.float64)
    if len(x) < 16 or not np.isfinite(x).all():
        return float("nan"), 0.0
    x = (x - x.mean()) * np.hanning(len(x))
    power = np.abs(np.fft.rfft(x)) ** 2
    power[0] = 0.0
    k = int(np.argmax(power))
    shift = 0.0
    if 0 < k < len(power) - 1 and power[k - 1] > 0 and power[k + 1] > 0:
        a, b, c = np.log(power[k - 1]), np.log(power[k]), np.log(power[k + 1])
        shift = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) != 0 else 0.0
    freq = (k + shift) / (len(x) * dt)
    share = float(power[max(k - 2, 0):k + 3].sum() / max(power.sum(), 1e-300))
    return float(freq), share


# ------------------------------------------------------------------------------ simulate
def moving_environments(physics: dict[str, Any], spec: dict[str, Any]) -> Callable[[int], FlowEnvironment] | None:
    """``k -> environment after k steps`` of a spec with a moving obstacle (None if nothing moves):
    the spec is advanced with :func:`~pdeaccel.experiments.flow.move_spec`, as in training."""
    if "velocity" not in spec:
        return None
    specs = [spec]
    envs: dict[int, FlowEnvironment] = {}  # built once: the neural and the reference rollout ask for the same steps

    def env_at(k: int) -> FlowEnvironment:
        while len(specs) <= k:
            specs.append(move_spec(physics, specs[-1]))
        if k not in envs:
            envs[k] = build_environment(physics, specs[k])
        return envs[k]

    return env_at


def _environment(cfg: dict[str, Any], env_name: str, inflow: float | None) -> tuple[FlowEnvironment, dict]:
    p = cfg["physics"]
    if env_name in HELD_OUT:
        return held_out_environment(p, env_name, inflow), held_out_spec(p, env_name, inflow)
    path = Path(env_name)
    if path.suffix.lower() in (".png", ".npy"):
        if not path.exists():
            raise FileNotFoundError(f"--env {env_name}: no such file.")
        if p["ndim"] != 2:
            raise ValueError("a mask file describes a 2D domain; this model is 3D.")
        mask = np.load(path) if path.suffix.lower() == ".npy" else path
        env = from_mask(mask, frame="channel", outflow="prescribed", profile="parabolic",
                        inflow_speed=inflow if inflow is not None else float(p["inflow_max"]),
                        mu=p["mu"], rho=p["rho"], dt=p["dt"], dtype=torch.float32)
        return env, {"kind": "mask", "file": str(path)}
    raise ValueError(f"--env must be 'cylinder', 'box', 'moving' or a mask file (.png image, dark = solid; or .npy "
                     f"array [x, y], 1 = fluid); got {env_name!r}.")


def simulate_trained(model_dir: str | Path, env_name: str = "cylinder", *, steps: int = 200,
                     inflow: float | None = None, out: str | Path | None = None, animate: bool = True,
                     progress: bool = True, resolution: str = "full", mirror: bool = False) -> dict[str, Any]:
    """Roll a trained flow model out on an environment and write a run directory. With a
    NeuralStagger model, ``resolution`` ``"R"`` or ``"R:Q"`` runs only the sub-solvers of a
    simulation R times coarser in space and Q in time (:func:`coarse_rollout`). ``mirror``
    steps a 2D vanilla model mirror-equivariantly (``model.mirror``) whatever it was trained with."""
    steps = integer("--steps", steps, minimum=1)
    space, time_ = parse_resolution(resolution)
    model, cfg, _ = load_flow_model(model_dir)
    if mirror:
        step_mirrored(model)
    env, spec = _environment(cfg, env_name, inflow)
    if (space, time_) != (1, 1):
        model.resolution_indices(space, time_)  # a clear error before anything is written
        if "velocity" in spec:
            raise ValueError("--resolution other than 'full' runs on a fixed environment; --env moving is not "
                             "supported there.")
    run_dir = Path(out) if out is not None else timestamped_run_dir("simulate", "flow")
    io.prepare_fresh_run_dir(run_dir)
    save_every = max(1, steps // 80)
    h = env.spacing[0]
    if (space, time_) == (1, 1):
        roll = neural_rollout(model, env, steps, save_steps=range(save_every, steps + 1, save_every),
                              progress=progress, env_at=moving_environments(cfg["physics"], spec))
    else:
        roll, coarse = coarse_rollout(model, env, steps, space, time_, progress=progress,
                                      save_steps=range(save_every, steps + 1, save_every))
        h = coarse.spacing[0]
    freq, share = shedding_frequency(roll.probe, env.dt, discard=len(roll.probe) // 4) if roll.probe else (math.nan, 0.0)
    size = 2 * spec["radius"] if "radius" in spec else max(spec["size"]) if "size" in spec else None  # none for masks
    files = ["trajectory.h5", "final.png"]
    _write_h5(run_dir / "trajectory.h5", roll, env, cfg, spec)
    solid = (env.fluid[0, 0] == 0).numpy()
    if roll.snapshot_solids:
        solid = roll.snapshot_solids[-1]  # where a moving obstacle ended up
    if model.ndim == 2 and roll.snapshots:
        _plot_fields(run_dir / "final.png", roll.snapshots[-1], solid, h,
                     f"step {roll.snapshot_steps[-1]}, t = {roll.snapshot_steps[-1] * env.dt:g}")
        if animate:
            _animate_fields(run_dir / "animation.gif", roll, solid, env, h=h)
            files.append("animation.gif")
    elif roll.snapshots:  # 3D: the mid-depth slice
        mid = solid.shape[2] // 2
        sl = tuple(c[..., mid] for c in roll.snapshots[-1][:2])  # u, v in the z = mid plane
        _plot_fields(run_dir / "final.png", sl, solid[..., mid], h, "mid-depth slice")
    report = {"model": str(model_dir), "environment": spec, "steps": steps, "dt": env.dt,
              "mirror": bool(getattr(model, "mirror", False)),
              "resolution": {"space": space, "time": time_, "sub_solvers": len(model.resolution_indices(space, time_))
                             if hasattr(model, "resolution_indices") else 1},
              "stable": roll.stable, "first_unstable_step": roll.first_unstable_step,
              "steps_per_second": len(roll.times) / max(roll.wall_seconds, 1e-12),
              "mean_momentum_residual": float(np.mean(roll.diagnostics.get("momentum_abs", [math.nan]))),
              "mean_boundary_error": float(np.mean(roll.diagnostics.get("boundary_abs", [math.nan]))),
              "max_divergence": float(np.max(roll.diagnostics.get("divergence_abs", [math.nan]))),
              "shedding_frequency": freq, "spectral_peak_share": share,
              "strouhal": freq * size / spec["inflow"] if size else None,
              "files": files + ["report.md", "report.json"], "run_dir": str(run_dir)}
    io.write_json(run_dir / "report.json", report)
    lines = [f"# Neural flow rollout: {spec.get('kind')} ({steps} steps of Δt = {env.dt:g})", "",
             "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report.items() if k not in ("files", "run_dir")]
    lines += ["", "![final](final.png)", ""] + (["![animation](animation.gif)", ""] if "animation.gif" in files else [])
    io.atomic_write_text(run_dir / "report.md", "\n".join(lines))
    return report
