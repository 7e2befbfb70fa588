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
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigError, apply_overrides, flatten, require
from ..grid import Grid
from ..linalg import METHODS, SolverConfig
from ..physics import HeatStepper
from ..physics.heat import HEAT_SCHEMES
from ..physics.burgers import BurgersStepper
from ..physics.initial_conditions import random_fourier
from ..physics.navier_stokes import NS_METHODS, NavierStokes2D, decaying_turbulence, taylor_green
from ..train import io
from .registry import RUNNABLES, lookup, register_runnable, timestamped_run_dir
from .simulation_outputs import _animate, _markdown, _plot_final, _write_trajectory

DTYPES = {"float32": torch.float32, "float64": torch.float64}


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


@dataclass
class _Setup:
    """What a builder hands to the time loop and the writers."""

    state: torch.Tensor                                    # initial state [B, C, *space]
    step: Callable[[torch.Tensor], torch.Tensor]           # state^n -> state^{n+1}
    diagnostics: Callable[[torch.Tensor, float], dict[str, float]]  # (state, t) -> numbers
    summarize: Callable[[dict[str, list[float]]], dict[str, Any]]   # diagnostic series -> invariants
    channels: list[str]
    grid_attrs: dict[str, Any]
    view: Callable[[torch.Tensor], torch.Tensor]           # state -> plotted scalar [B, *space]
    view_name: str
    coordinates: list[np.ndarray]                          # positions of the plotted values per axis
    series: list[str]                                      # diagnostics drawn against time
    symmetric_colors: bool = True
    #: animation colour scale: each frame's own range (decaying flows) or the first frame's
    rescale_frames: bool = False
    #: (state, t) -> plotted field minus the exact one [B, *space], where an exact solution exists
    view_error: Callable[[torch.Tensor, float], torch.Tensor] | None = None


#: how diagnostics are labelled in figures and reports


# ---------------------------------------------------------------------------------- configs


def _run_section() -> dict[str, Any]:
    # what counts as a failed step, and whether it stops the run (see :func:`simulate`)
    return {"stop_on_failure": False, "blowup_factor": 10.0}


def _solver_section(method: str, rtol: float, restart: int = 20) -> dict[str, Any]:
    return {"method": method, "max_iters": None, "rtol": rtol, "preconditioner": None, "restart": restart}


def _heat_defaults(ndim: int, n: int, dt: float, steps: int, save_every: int) -> dict[str, Any]:
    return {
        "seed": 0, "batch": 1, "dtype": "float64", "steps": steps, "save_every": save_every,
        "grid": {"n": n, "extent": 1.0, "boundary": "dirichlet"},
        "physics": {"ndim": ndim, "nu": 0.1, "dt": dt, "scheme": "implicit_euler"},
        "init": {"modes": 5 if ndim == 1 else 4, "amplitude": 1.0},
        "solver": _solver_section("cg", 1e-8),
        "run": _run_section(),
    }


def _burgers_defaults(ndim: int, n: int, nu: float, dt: float, steps: int, save_every: int,
                      modes: int) -> dict[str, Any]:
    return {
        "seed": 0, "batch": 1, "dtype": "float64", "steps": steps, "save_every": save_every,
        "grid": {"n": n, "extent": 1.0},
        "physics": {"ndim": ndim, "nu": nu, "dt": dt, "picard_iterations": 1},
        "init": {"modes": modes, "amplitude": 1.0, "offset": 0.5},
        "solver": _solver_section("bicgstab", 1e-8),
        "run": _run_section(),
    }


def _ns_defaults(method: str, init: dict[str, Any], **changes: Any) -> dict[str, Any]:
    cfg = {
        "seed": 0, "batch": 1, "dtype": "float32", "steps": 60, "save_every": 1,
        "grid": {"n": 32, "extent": 1.0},
        "physics": {"nu": 1e-3, "dt": 0.02, "method": method},
        "init": init,
        # the coupled saddle-point system: restarted GMRES(8), rtol 1e-5, no preconditioner, as in
        # the PRDP paper (its iterations are restart cycles); the projection's momentum predictor
        "solver": (_solver_section("gmres", 1e-5, restart=8) if method == "coupled"
                   else _solver_section("bicgstab", 1e-6)),
        # used by physics.method=projection only: the pressure Poisson solve
        "pressure_solver": _solver_section("cg", 1e-6),
        "run": _run_section(),
    }
    for key, value in changes.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


_TURBULENCE_INIT = {"kind": "turbulence", "peak_wavenumber": 3.0, "smoothing": 4.0, "rms_velocity": 1.0}


# ---------------------------------------------------------------------------------- builders


def _dtype(cfg: dict[str, Any]) -> torch.dtype:
    require(cfg["dtype"] in DTYPES, "dtype", cfg["dtype"], ", ".join(DTYPES))
    return DTYPES[cfg["dtype"]]


def _positive_int(cfg: dict[str, Any], key: str, minimum: int = 1) -> int:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    require(isinstance(node, int) and not isinstance(node, bool) and node >= minimum, key, node,
            f"an integer >= {minimum}")
    return node


def _positive_float(cfg: dict[str, Any], key: str, *, allow_zero: bool = False,
                    maximum: float | None = None) -> float:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    ok = isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node) and (
        node >= 0 if allow_zero else node > 0) and (maximum is None or node <= maximum)
    require(ok, key, node, "a finite number " + (">= 0" if allow_zero else "> 0")
            + ("" if maximum is None else f" and <= {maximum:g}"))
    return float(node)


# an initial amplitude beyond this overflows (float32 at once, float64 in the first products) and
# surfaced as "b contains NaN" deep inside a solve instead of naming the key
_MAX_AMPLITUDE = 1e6


def _solver(cfg: dict[str, Any], section: str, monitor: Callable | None) -> SolverConfig:
    s = cfg[section]
    require(s["method"] in METHODS, f"{section}.method", s["method"], ", ".join(METHODS))
    if s["max_iters"] is not None:
        _positive_int(cfg, f"{section}.max_iters")
    _positive_float(cfg, f"{section}.rtol", allow_zero=True)
    _positive_int(cfg, f"{section}.restart")
    require(s["preconditioner"] in (None, "jacobi"), f"{section}.preconditioner", s["preconditioner"],
            "null (none) or jacobi")
    return SolverConfig(method=s["method"], max_iters=s["max_iters"], rtol=float(s["rtol"]),
                        preconditioner=s["preconditioner"], restart=s["restart"], monitor=monitor)


def _generator(cfg: dict[str, Any]) -> torch.Generator:
    require(isinstance(cfg["seed"], int) and not isinstance(cfg["seed"], bool), "seed", cfg["seed"], "an integer")
    return torch.Generator().manual_seed(cfg["seed"])


def _grid_attrs(grid: Grid, layout: str) -> dict[str, Any]:
    return {"shape": list(grid.shape), "extent": list(grid.extent), "boundary": list(grid.boundary),
            "spacing": list(grid.spacing), "layout": layout}


def _monotone(values: list[float], *, increasing: bool = False) -> bool:
    """True if the series never moves the wrong way by more than round-off."""
    scale = max(abs(v) for v in values) or 1.0
    return all(((b - a) if not increasing else (a - b)) <= 1e-9 * scale for a, b in zip(values, values[1:]))


def _build_heat(cfg: dict[str, Any], monitor: Callable) -> _Setup:
    dtype = _dtype(cfg)
    ndim = _positive_int(cfg, "physics.ndim")
    require(ndim in (1, 2, 3), "physics.ndim", ndim, "1, 2, 3")
    n = _positive_int(cfg, "grid.n", 3)
    boundary = cfg["grid"]["boundary"]
    require(boundary in ("dirichlet", "neumann", "periodic"), "grid.boundary", boundary, "dirichlet, neumann, periodic")
    scheme = cfg["physics"]["scheme"]
    require(scheme in HEAT_SCHEMES, "physics.scheme", scheme, ", ".join(HEAT_SCHEMES))
    grid = Grid((n,) * ndim, extent=_positive_float(cfg, "grid.extent"), boundary=boundary)
    stepper = HeatStepper(grid, nu=_positive_float(cfg, "physics.nu"), dt=_positive_float(cfg, "physics.dt"),
                          scheme=scheme)
    solver = _solver(cfg, "solver", monitor)
    u0 = random_fourier(grid, _positive_int(cfg, "batch"), modes=_positive_int(cfg, "init.modes"),
                        amplitude=_positive_float(cfg, "init.amplitude", maximum=_MAX_AMPLITUDE),
                        generator=_generator(cfg), dtype=dtype)

    def diagnostics(u: torch.Tensor, t: float) -> dict[str, float]:
        return {"max_abs_u": float(u.abs().max()), "rms_u": float(u.pow(2).mean().sqrt())}

    def summarize(series: dict[str, list[float]]) -> dict[str, Any]:
        m, r = series["max_abs_u"], series["rms_u"]
        return {"max_abs_u_initial": m[0], "max_abs_u_final": m[-1], "max_abs_u_ratio": m[-1] / m[0],
                "max_abs_u_nonincreasing": _monotone(m), "rms_u_initial": r[0], "rms_u_final": r[-1],
                "rms_u_nonincreasing": _monotone(r)}

    position = {"dirichlet": "interior nodes (i+1)*h", "periodic": "nodes i*h", "neumann": "cell centres (i+1/2)*h"}
    layout = f"{boundary} grid: unknowns at the {position[boundary]} of every axis"
    return _Setup(u0, lambda u: stepper(u, solver), diagnostics, summarize, ["u"], _grid_attrs(grid, layout),
                  lambda u: u[:, 0], "u", [grid.axis_coordinates(a).numpy() for a in range(ndim)],
                  ["max_abs_u", "rms_u"])


def _build_burgers(cfg: dict[str, Any], monitor: Callable) -> _Setup:
    dtype = _dtype(cfg)
    ndim = _positive_int(cfg, "physics.ndim")
    require(ndim in (1, 2, 3), "physics.ndim", ndim, "1, 2, 3")
    n = _positive_int(cfg, "grid.n", 3)
    grid = Grid((n,) * ndim, extent=_positive_float(cfg, "grid.extent"), boundary="periodic")
    stepper = BurgersStepper(grid, nu=_positive_float(cfg, "physics.nu"), dt=_positive_float(cfg, "physics.dt"),
                             picard_iterations=_positive_int(cfg, "physics.picard_iterations"))
    solver = _solver(cfg, "solver", monitor)
    offset = cfg["init"]["offset"]
    require(isinstance(offset, (int, float)) and not isinstance(offset, bool) and math.isfinite(offset)
            and abs(offset) <= _MAX_AMPLITUDE, "init.offset", offset, f"a finite number in [-{_MAX_AMPLITUDE:g}, {_MAX_AMPLITUDE:g}]")
    u0 = float(offset) + random_fourier(grid, _positive_int(cfg, "batch"), modes=_positive_int(cfg, "init.modes"),
                                        amplitude=_positive_float(cfg, "init.amplitude", maximum=_MAX_AMPLITUDE),
                                        generator=_generator(cfg), dtype=dtype)
    cell_volume = math.prod(grid.spacing)
    space = tuple(range(1, ndim + 2))
    mass0 = u0.sum(dim=space) * cell_volume

    def diagnostics(u: torch.Tensor, t: float) -> dict[str, float]:
        mass = u.sum(dim=space) * cell_volume
        return {"max_abs_u": float(u.abs().max()), "mass": float(mass.mean()),
                "mass_drift": float((mass - mass0).abs().max())}

    def summarize(series: dict[str, list[float]]) -> dict[str, Any]:
        m, mass = series["max_abs_u"], series["mass"]
        return {"mass_initial": mass[0], "mass_final": mass[-1], "mass_drift_max": max(series["mass_drift"]),
                "mass_drift_relative": max(series["mass_drift"]) / max(abs(mass[0]), 1e-300),
                "max_abs_u_initial": m[0], "max_abs_u_final": m[-1], "max_abs_u_max": max(m),
                "max_abs_u_nonincreasing": _monotone(m)}

    return _Setup(u0, lambda u: stepper(u, solver), diagnostics, summarize, ["u"],
                  _grid_attrs(grid, "periodic grid: unknowns (cell averages) at nodes i*h per axis"),
                  lambda u: u[:, 0], "u", [grid.axis_coordinates(a).numpy() for a in range(ndim)],
                  ["max_abs_u", "mass"], symmetric_colors=False)


def _build_navier_stokes(cfg: dict[str, Any], monitor: Callable) -> _Setup:
    dtype = _dtype(cfg)
    method = cfg["physics"]["method"]
    require(method in NS_METHODS, "physics.method", method, ", ".join(NS_METHODS))
    n = _positive_int(cfg, "grid.n", 3)
    length = _positive_float(cfg, "grid.extent")
    nu = _positive_float(cfg, "physics.nu", allow_zero=True)
    ns = NavierStokes2D(n, length=length, nu=nu, dt=_positive_float(cfg, "physics.dt"), method=method)
    solver = _solver(cfg, "solver", monitor)
    pressure_solver = _solver(cfg, "pressure_solver", monitor) if method == "projection" else None
    batch = _positive_int(cfg, "batch")
    init = cfg["init"]
    exact: Callable[[float], torch.Tensor] | None = None
    view_error = None
    if init["kind"] == "turbulence":
        velocity = decaying_turbulence(n, batch, generator=_generator(cfg),
                                       smoothing=_positive_float(cfg, "init.smoothing"),
                                       peak_wavenumber=_positive_float(cfg, "init.peak_wavenumber"),
                                       rms_velocity=_positive_float(cfg, "init.rms_velocity", maximum=_MAX_AMPLITUDE),
                                       dtype=dtype)
        pressure = None
    elif init["kind"] == "taylor-green":
        amplitude = _positive_float(cfg, "init.amplitude", maximum=_MAX_AMPLITUDE)
        velocity, pressure = taylor_green(n, length, amplitude=amplitude, batch=batch, dtype=dtype)

        def exact(t: float) -> torch.Tensor:
            return taylor_green(n, length, t=t, nu=nu, amplitude=amplitude, batch=batch, dtype=dtype)[0]

        def view_error(w: torch.Tensor, t: float) -> torch.Tensor:
            return ns.vorticity(w - exact(t))[:, 0]
    else:
        raise ConfigError(f"config key 'init.kind' has value {init['kind']!r}; allowed: turbulence, taylor-green.")
    held = {"pressure": pressure}

    def step(w: torch.Tensor) -> torch.Tensor:
        # the pressure is carried between steps: the coupled solve's initial guess, the projection's p^n
        w, held["pressure"] = ns(w, solver, held["pressure"], pressure_solver)
        return w

    def diagnostics(w: torch.Tensor, t: float) -> dict[str, float]:
        out = {"kinetic_energy": float(ns.kinetic_energy(w).mean()),
               "max_abs_divergence": float(ns.divergence(w).abs().max()),
               "max_abs_vorticity": float(ns.vorticity(w).abs().max())}
        if exact is not None:
            ref = exact(t)
            err = w - ref
            out["velocity_error_rel_l2"] = float(err.pow(2).sum().sqrt() / ref.pow(2).sum().sqrt())
            out["velocity_error_max"] = float(err.abs().max())
            out["kinetic_energy_exact"] = float(ns.kinetic_energy(ref).mean())
        return out

    def summarize(series: dict[str, list[float]]) -> dict[str, Any]:
        e = series["kinetic_energy"]
        out = {"kinetic_energy_initial": e[0], "kinetic_energy_final": e[-1], "kinetic_energy_ratio": e[-1] / e[0],
               "kinetic_energy_nonincreasing": _monotone(e),
               "max_abs_divergence_initial": series["max_abs_divergence"][0],
               "max_abs_divergence_max": max(series["max_abs_divergence"]),
               "max_abs_vorticity_final": series["max_abs_vorticity"][-1]}
        if exact is not None:
            out.update({"velocity_error_rel_l2_final": series["velocity_error_rel_l2"][-1],
                        "velocity_error_rel_l2_max": max(series["velocity_error_rel_l2"]),
                        "velocity_error_max_final": series["velocity_error_max"][-1],
                        "kinetic_energy_exact_final": series["kinetic_energy_exact"][-1]})
        return out

    layout = ("periodic MAC grid of N x N cells of width h: channel 0 = u on x-faces (i*h, (j+1/2)*h), "
              "channel 1 = v on y-faces ((i+1/2)*h, j*h); vorticity at cell corners (i*h, j*h)")
    corners = (np.arange(n) * ns.h).astype(np.float64)
    series = (["velocity_error_rel_l2", "kinetic_energy"] if exact is not None
              else ["kinetic_energy", "max_abs_vorticity"])
    return _Setup(velocity, step, diagnostics, summarize, ["u", "v"], _grid_attrs(ns.grid, layout),
                  lambda w: ns.vorticity(w)[:, 0], "vorticity", [corners, corners], series,
                  rescale_frames=True, view_error=view_error)


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


class _IterationLog:
    """Solver monitor: per time step and per solver method, the iterations of the slowest sample."""

    def __init__(self) -> None:
        self.steps: list[dict[str, int]] = []
        self._current: dict[str, int] = {}
        self._unconverged: dict[str, int] = {}
        #: per method, the sample solves of the last finished step that missed their tolerance
        self.last_unconverged: dict[str, int] = {}

    def __call__(self, direction: str, method: str, iterations: torch.Tensor) -> None:
        if direction == "forward":
            self._current[method] = self._current.get(method, 0) + int(iterations.max())

    def record_result(self, direction: str, result) -> None:
        """Called by :func:`~pdeaccel.linalg.solve` with every forward result: count the misses."""
        if direction == "forward":
            missed = int((~result.converged).sum())
            if missed:
                self._unconverged[result.method] = self._unconverged.get(result.method, 0) + missed

    def end_step(self) -> dict[str, int]:
        done, self._current = self._current, {}
        self.last_unconverged, self._unconverged = self._unconverged, {}
        self.steps.append(done)
        return done

    def summary(self) -> dict[str, dict[str, Any]]:
        methods = sorted({m for s in self.steps for m in s})
        out = {}
        for m in methods:
            counts = [s.get(m, 0) for s in self.steps]
            out[m] = {"mean": statistics.fmean(counts), "max": max(counts), "total": sum(counts),
                      "unit": "restart cycles" if m == "gmres" else "iterations"}
        return out


def default_run_dir(name: str) -> Path:
    return timestamped_run_dir("simulate", name)


def resolve_config(name: str, overrides: Iterable[str] = (), steps: int | None = None) -> dict[str, Any]:
    """The simulation's defaults with ``key=value`` overrides (and ``steps``) applied."""
    defaults = get_simulation(name).defaults
    # an unknown key lists this simulation's own keys (not the training experiments')
    cfg = apply_overrides(defaults, list(overrides),
                          keys_hint=f"The keys of simulation {name!r} are: {', '.join(flatten(defaults))}.")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {steps!r}.")
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
    log = _IterationLog()
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
