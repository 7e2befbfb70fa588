"""The simulations' configs and builders: each builder turns a resolved config into a
:class:`_Setup` (initial state, a time stepper of :mod:`pdeaccel.physics`, the diagnostics worth
watching, what to plot); :mod:`pdeaccel.experiments.simulations` registers them by name."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..config import ConfigError, require
from ..grid import Grid
from ..linalg import METHODS, SolverConfig
from ..physics import HeatStepper
from ..physics.heat import HEAT_SCHEMES
from ..physics.burgers import BurgersStepper
from ..physics.initial_conditions import random_fourier
from ..physics.navier_stokes import NS_METHODS, NavierStokes2D, decaying_turbulence, taylor_green

DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
