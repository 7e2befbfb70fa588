"""Named numerical simulations: what ``pdeaccel simulate NAME`` runs.

A simulation is a nested config (grid, physics, initial condition, solver, steps) and a builder
that turns it into an initial state, a time stepper from :mod:`pdeaccel.physics` and the
diagnostics worth watching. :func:`simulate` resolves the config (dotted ``key=value``
overrides), steps it with a progress bar while a solver monitor counts the iterations of every
linear solve, and writes a run directory::

    trajectory.h5   states [T, B, C, *space], times, per-step diagnostics, config and grid (attrs)
    final.png       snapshots (1D), first/last field (2D; vorticity for Navier–Stokes), mid-plane
                    slices (3D), and the main diagnostics against time
    animation.gif   2D cases: the plotted field over time
    report.md/json  steps, wall time, steps/s, solver iterations per step, invariants

Every default runs in seconds on one CPU core.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from ..config import apply_overrides, flatten, require
from ..train import io
from ..linalg import IterationLog
from .registry import RUNNABLES, lookup, register_runnable, timestamped_run_dir
from .simulation_setups import (_TURBULENCE_INIT, DTYPES, _build_burgers, _build_heat, _build_navier_stokes,  # noqa: F401
                                _positive_float, _positive_int,
                                _burgers_defaults, _heat_defaults, _ns_defaults, _Setup, _solver_section)
from .simulation_outputs import _animate, _markdown, _plot_final, _write_trajectory



@dataclass
class Simulation:
    """A named simulation: its default nested config and the builder that runs it.

    ``defaults`` holds every key :func:`simulate` accepts as an override (``grid.n=64``,
    ``physics.dt=0.01``, ``solver.method=gmres``, ``steps=50`` ...).
    """

    name: str
    description: str
    defaults: dict[str, Any]
    #: ``build(config, monitor) -> _Setup``; every linear solve reports to ``monitor``
    build: Callable[[dict[str, Any], Callable], "_Setup"] = field(repr=False, compare=False)


def _register(*sims: tuple[str, str, dict[str, Any], Callable]) -> dict[str, Simulation]:
    for name, description, defaults, build in sims:
        register_runnable("simulation", name, Simulation(name, description, defaults, build))
    return RUNNABLES["simulation"]


#: the simulations of the one registry (:data:`pdeaccel.experiments.registry.RUNNABLES`)
SIMULATIONS: dict[str, Simulation] = _register(
    ("heat-1d", "Heat equation u_t = ν u_xx in 1D, Dirichlet walls, implicit Euler, CG; random sine series",
     _heat_defaults(1, 127, 0.001, 200, 4), _build_heat),
    ("heat-2d", "Heat equation u_t = ν Δu in 2D, Dirichlet walls, implicit Euler, CG; random sine series",
     _heat_defaults(2, 63, 0.001, 100, 2), _build_heat),
    ("heat-3d", "Heat equation u_t = ν Δu in 3D, Dirichlet walls, implicit Euler, CG; mid-plane slices",
     _heat_defaults(3, 31, 0.001, 50, 5), _build_heat),
    ("burgers-1d", "Viscous Burgers u_t + (u²/2)_x = ν u_xx, periodic, implicit Euler (one Picard step), BiCGSTAB",
     _burgers_defaults(1, 256, 2e-3, 2e-3, 200, 4, 3), _build_burgers),
    ("burgers-2d", "Scalar viscous Burgers u_t + Σ_d (u²/2)_{x_d} = ν Δu in 2D, periodic, implicit Euler, BiCGSTAB",
     _burgers_defaults(2, 64, 2e-3, 5e-3, 100, 2, 3), _build_burgers),
    ("ns-2d-turbulence", "Decaying 2D turbulence, incompressible Navier–Stokes on a periodic MAC grid, "
     "velocity and pressure as one saddle-point system solved with GMRES(8) (the PRDP setting)",
     _ns_defaults("coupled", dict(_TURBULENCE_INIT)), _build_navier_stokes),
    ("ns-2d-projection", "Decaying 2D turbulence, incompressible Navier–Stokes on a periodic MAC grid, "
     "incremental pressure projection (BiCGSTAB momentum, CG pressure)",
     _ns_defaults("projection", dict(_TURBULENCE_INIT)), _build_navier_stokes),
    ("taylor-green", "Taylor–Green vortex (an exact Navier–Stokes solution), projection scheme; "
     "reports the error against the exact decaying vortex",
     _ns_defaults("projection", {"kind": "taylor-green", "amplitude": 1.0}, dtype="float64", steps=50, save_every=1,
                  grid={"n": 64, "extent": 2.0 * math.pi}, physics={"nu": 0.1, "dt": 0.02},
                  solver=_solver_section("bicgstab", 1e-10), pressure_solver=_solver_section("cg", 1e-12)),
     _build_navier_stokes),
)


def get_simulation(name: str) -> Simulation:
    """The named simulation; an unknown name fails with the list and a suggestion."""
    return lookup("simulation", name)


# ---------------------------------------------------------------------------------- the run


def default_run_dir(name: str) -> Path:
    return timestamped_run_dir("simulate", name)


def resolve_config(name: str, overrides: Iterable[str] = (), steps: int | None = None) -> dict[str, Any]:
    """The simulation's defaults with ``key=value`` overrides (and ``steps``) applied."""
    defaults = get_simulation(name).defaults
    # an unknown key lists this simulation's own keys (not the training experiments')
    cfg = apply_overrides(defaults, list(overrides),
                          keys_hint=f"The keys of simulation {name!r} are: {', '.join(flatten(defaults))}.")
    if steps is not None:
        require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, "steps", steps, "an integer >= 1")
        cfg["steps"] = steps
    return cfg


def simulate(name: str, *, steps: int | None = None, overrides: Iterable[str] = (), out: str | Path | None = None,
             progress: bool = True, animate: bool = True) -> dict[str, Any]:
    """Run the named simulation and write its run directory (see the module docstring).

    Args:
        name: a key of :data:`SIMULATIONS`.
        steps: number of time steps (default: the config's ``steps``).
        overrides: ``"key.sub=value"`` strings; unknown keys fail with a did-you-mean message.
        out: run directory (default ``runs/simulate/<name>/<timestamp>``); must not exist or be empty.
        progress: show a tqdm progress bar.
        animate: also write ``animation.gif`` (2D simulations only).

    Returns:
        The report: ``run_dir``, ``steps``, ``final_time``, ``wall_seconds``, ``steps_per_second``,
        ``solver_iterations`` (per method: mean/max/total per step), ``invariants`` and ``files``.
    """
    sim = get_simulation(name)
    cfg = resolve_config(name, overrides, steps)
    n_steps = _positive_int(cfg, "steps")
    save_every = _positive_int(cfg, "save_every")
    dt = _positive_float(cfg, "physics.dt")
    stop_on_failure = cfg["run"]["stop_on_failure"]
    require(isinstance(stop_on_failure, bool), "run.stop_on_failure", stop_on_failure, "true, false")
    blowup_factor = _positive_float(cfg, "run.blowup_factor")
    require(blowup_factor > 1, "run.blowup_factor", blowup_factor, "a finite number > 1")
    log = IterationLog()
    setup = sim.build(cfg, log)

    run_dir = Path(out) if out is not None else default_run_dir(name)
    io.prepare_fresh_run_dir(run_dir)

    state = setup.state
    saved, saved_times, saved_steps = [state.clone()], [0.0], [0]
    series: dict[str, list[float]] = {k: [v] for k, v in setup.diagnostics(state, 0.0).items()}
    series_times = [0.0]
    # failed steps: a linear solve that missed its tolerance, max |state| beyond blowup_factor × the
    # initial one, or a non-finite state (which always ends the run: nothing after it means anything)
    initial_max = float(state.abs().max())
    failures: list[dict[str, Any]] = []
    steps_done, stopped_at = 0, None
    start = time.perf_counter()
    with torch.no_grad(), tqdm(range(1, n_steps + 1), desc=name, unit="step", disable=not progress,
                               dynamic_ncols=True) as bar:
        for k in bar:
            new = setup.step(state)
            iterations = log.end_step()
            t = k * dt
            found = _step_failures(k, t, new, log.last_unconverged, initial_max, blowup_factor)
            failures += found
            if any(f["kind"] == "non-finite" for f in found):
                stopped_at = k
                break
            state, steps_done = new, k
            halt = bool(found) and stop_on_failure
            for key, value in setup.diagnostics(state, t).items():
                series[key].append(value)
            series_times.append(t)
            if k % save_every == 0 or k == n_steps or halt:
                saved.append(state.clone())
                saved_times.append(t)
                saved_steps.append(k)
            if iterations:
                bar.set_postfix({m: v for m, v in iterations.items()}, refresh=False)
            if halt:
                stopped_at = k
                break
    wall = time.perf_counter() - start
    n_steps = steps_done  # what the report describes: the steps actually run and kept

    states = torch.stack(saved).cpu()
    views = torch.stack([setup.view(s) for s in saved]).cpu()
    files = ["trajectory.h5", "final.png"]
    _write_trajectory(run_dir / "trajectory.h5", name, cfg, setup, states, views, saved_times, saved_steps,
                      series, series_times)
    error = setup.view_error(state, saved_times[-1]).cpu() if setup.view_error is not None else None
    _plot_final(run_dir / "final.png", name, setup, views, saved_times, saved_steps, series, series_times, error)
    if animate and len(setup.coordinates) == 2:
        _animate(run_dir / "animation.gif", name, setup, views, saved_times, saved_steps)
        files.append("animation.gif")
    files += ["report.md", "report.json"]

    report = {
        "simulation": name, "description": sim.description, "run_dir": str(run_dir),
        "steps": n_steps, "dt": dt, "final_time": n_steps * dt, "saved_states": len(saved),
        "state_shape": list(states.shape), "wall_seconds": wall, "steps_per_second": n_steps / wall,
        "solver_iterations": log.summary(), "invariants": setup.summarize(series),
        "failures": _failure_summary(failures, stopped_at, blowup_factor),
        "config": cfg, "files": files,
    }
    io.write_json(run_dir / "report.json", report)
    io.atomic_write_text(run_dir / "report.md", _markdown(report, setup, animate and "animation.gif" in files))
    if failures:
        message = f"{name}: {report['failures']['summary']}; see {run_dir / 'report.md'}"
        if stopped_at is not None:
            raise FloatingPointError(message)
        warnings.warn(message, stacklevel=2)  # the CLI prints it as one `warning: ...` line
    return report


def _step_failures(k: int, t: float, state: torch.Tensor, unconverged: dict[str, int], initial_max: float,
                   blowup_factor: float) -> list[dict[str, Any]]:
    """What went wrong in step ``k`` (empty if nothing): one entry per kind of failure."""
    out = []
    if unconverged:
        out.append({"step": k, "t": t, "kind": "not converged",
                    "detail": ", ".join(f"{m}: {n} solve(s) missed the tolerance" for m, n in unconverged.items())})
    if not bool(torch.isfinite(state).all()):
        out.append({"step": k, "t": t, "kind": "non-finite", "detail": "the state holds NaN/inf"})
        return out
    peak = float(state.abs().max())
    if peak > blowup_factor * initial_max:
        out.append({"step": k, "t": t, "kind": "blow-up",
                    "detail": f"max |state| {peak:.4g} > {blowup_factor:g} × the initial {initial_max:.4g}"})
    return out


def _failure_summary(failures: list[dict[str, Any]], stopped_at: int | None, blowup_factor: float) -> dict[str, Any]:
    by_kind = {kind: [f for f in failures if f["kind"] == kind] for kind in ("not converged", "blow-up", "non-finite")}
    parts = []
    if by_kind["not converged"]:
        first = by_kind["not converged"][0]
        parts.append(f"linear solves did not converge in {len(by_kind['not converged'])} step(s) "
                     f"(first at step {first['step']}: {first['detail']})")
    if by_kind["blow-up"]:
        first = by_kind["blow-up"][0]
        parts.append(f"the solution blew up (max |state| > {blowup_factor:g}× the initial) in "
                     f"{len(by_kind['blow-up'])} step(s) (first at step {first['step']}: {first['detail']})")
    if by_kind["non-finite"]:
        parts.append(f"the state became NaN/inf at step {by_kind['non-finite'][0]['step']} (reduce physics.dt or "
                     "raise the solver budget)")
    if stopped_at is not None:
        parts.append(f"stopped at step {stopped_at}"
                     + (" (run.stop_on_failure=true)" if not by_kind["non-finite"] else ""))
    return {"ok": not failures, "summary": "; ".join(parts) or "every step converged and stayed bounded",
            "steps_not_converged": len(by_kind["not converged"]), "steps_blown_up": len(by_kind["blow-up"]),
            "non_finite_step": by_kind["non-finite"][0]["step"] if by_kind["non-finite"] else None,
            "stopped_at_step": stopped_at, "per_step": failures}
