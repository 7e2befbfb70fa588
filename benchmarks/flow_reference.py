"""Validate the MAC reference solver against published benchmark data and time it.

* Lid-driven cavity, Re = 100 and 1000: centre-line profiles u(y) at x = 0.5 and v(x) at y = 0.5
  against Ghia, Ghia & Shin (1982), J. Comput. Phys. 48:387-411, Tables I and II.
* Flow past a cylinder in a channel, Re = 100: Strouhal number against Schäfer & Turek (1996),
  "Benchmark computations of laminar flow around a cylinder", Notes on Numerical Fluid
  Mechanics 52:547-566, test case 2D-2 (St = 0.2950 - 0.3050).
* Lid-driven cubic cavity (3D, ``--cavity3d``): Re = 1000 centre-line profiles u(y) at x = z = 0.5
  and v(x) at y = z = 0.5 against Albensoeder & Kuhlmann (2005), J. Comput. Phys. 206:536-558,
  Tables 5 and 6 (Chebyshev collocation); Re = 100 by a three-grid convergence study (Richardson
  extrapolation), since no Re = 100 table could be obtained.

Writes benchmarks/results/flow_reference.{md,json,png}. One CPU thread. ``--cavity3d`` runs only the
3D cavity (about 16 minutes) and merges it into the existing .md/.json (section "3D lid-driven cubic
cavity", figure flow_reference_3d.png); a 2D run keeps that section.

    .venv/bin/python benchmarks/flow_reference.py [--quick] [--cavity3d]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.interpolate import RegularGridInterpolator

from pdeaccel.physics.flow import FlowEnvironment, channel_with_cylinder, lid_driven_cavity
from pdeaccel.physics.incompressible import FlowState, MACFlowSolver

RESULTS = Path(__file__).resolve().parent / "results"

# Ghia, Ghia & Shin (1982), Table I: u along the vertical line through the geometric centre.
GHIA_Y = [1.0, 0.9766, 0.9688, 0.9609, 0.9531, 0.8516, 0.7344, 0.6172, 0.5, 0.4531, 0.2813, 0.1719,
          0.1016, 0.0703, 0.0625, 0.0547, 0.0]
GHIA_U = {
    100: [1.0, 0.84123, 0.78871, 0.73722, 0.68717, 0.23151, 0.00332, -0.13641, -0.20581, -0.21090,
          -0.15662, -0.10150, -0.06434, -0.04775, -0.04192, -0.03717, 0.0],
    1000: [1.0, 0.65928, 0.57492, 0.51117, 0.46604, 0.33304, 0.18719, 0.05702, -0.06080, -0.10648,
           -0.27805, -0.38289, -0.29730, -0.22220, -0.20196, -0.18109, 0.0],
}
# Table II: v along the horizontal line through the geometric centre.
GHIA_X = [1.0, 0.9688, 0.9609, 0.9531, 0.9453, 0.9063, 0.8594, 0.8047, 0.5, 0.2344, 0.2266, 0.1563,
          0.0938, 0.0781, 0.0703, 0.0625, 0.0]
GHIA_V = {
    100: [0.0, -0.05906, -0.07391, -0.08864, -0.10313, -0.16914, -0.22445, -0.24533, 0.05454, 0.17527,
          0.17507, 0.16077, 0.12317, 0.10890, 0.10091, 0.09233, 0.0],
    1000: [0.0, -0.21388, -0.27669, -0.33714, -0.39188, -0.51550, -0.42665, -0.31966, 0.02526, 0.32235,
           0.33075, 0.37095, 0.32627, 0.30353, 0.29012, 0.27485, 0.0],
}
# Botella & Peyret (1998), "Benchmark spectral results on the lid-driven cavity flow", Computers &
# Fluids 27:421-433 (Chebyshev collocation, corner singularity subtracted): centre-line extrema at
# Re = 1000 — a grid-converged yardstick (Ghia's are a 129² solution).
BOTELLA_RE1000 = {"u_min": -0.3885698, "v_max": 0.3769447, "v_min": -0.5270771}
# Schäfer & Turek (1996), 2D-2: channel 2.2 × 0.41, cylinder D = 0.1 at (0.2, 0.2), parabolic
# inflow of mean speed Ū = 1, ν = 1e-3 (Re = ŪD/ν = 100); St = D f / Ū.
ST_RANGE = (0.2950, 0.3050)

# Albensoeder & Kuhlmann (2005), "Accurate three-dimensional lid-driven cavity flow", J. Comput. Phys.
# 206:536-558, Table 5 (lid-parallel velocity on the line through the centre normal to the lid) and
# Table 6 (lid-normal velocity on the line through the centre along the lid motion): cube, rigid
# end walls, Re = 1000, Chebyshev collocation, at Ghia's 17 points. Numbers taken from the
# transcription in github.com/tum-pbs/PICT, tests/validations.py (commit a95d7f9d0713, function
# lid_driven_cavity_3D, key (1000, 1, 1, False); the original paper was not accessible here).
# Their frame (cube [-1/2, 1/2]^3, lid at x = -1/2 moving +y) mapped to ours (cube [0, 1]^3, lid at
# y = 1 moving +x, spanwise z): y = 1/2 - x_AK, x = y_AK + 1/2, u = v_AK, v = -u_AK.
AK_Y = [0.0, 0.0547, 0.0625, 0.0703, 0.1016, 0.1719, 0.2813, 0.4531, 0.5, 0.6172, 0.7344, 0.8516,
        0.9531, 0.9609, 0.9688, 0.9766, 1.0]
AK_U = [0.0, -0.20623, -0.22283, -0.23696, -0.27293, -0.25160, -0.10999, -0.00612, 0.00802, 0.03905,
        0.07334, 0.12183, 0.33171, 0.39821, 0.48443, 0.58964, 1.0]
AK_X = [0.0, 0.0625, 0.0703, 0.0781, 0.0938, 0.1563, 0.2266, 0.2344, 0.5, 0.8047, 0.8594, 0.9063,
        0.9453, 0.9531, 0.9609, 0.9688, 1.0]
AK_V = [0.0, 0.21738, 0.22746, 0.23503, 0.24407, 0.22924, 0.17580, 0.16987, 0.03674, -0.15223,
        -0.31117, -0.43423, -0.33511, -0.29032, -0.24095, -0.18864, 0.0]
# Centre-line extrema of Albensoeder & Kuhlmann as quoted in Ben Beya & Lili (2008), C. R. Mécanique
# 336:863-872, Table 1 (value, position), in our frame; second-hand, not checked against the paper.
AK_EXTREMA = {"u_min": (-0.2803833, 0.12419), "v_max": (0.2466511, 0.10913), "v_min": (-0.4350186, 0.90957)}


def profiles(state: FlowState, n: int) -> dict:
    """Centre-line profiles of a cavity with n cells (wall layer around it): at the face
    positions (with the wall values at the ends) and interpolated to Ghia's points."""
    h = 1.0 / n
    centres = (np.arange(n) + 0.5) * h
    u = state.velocity[0][0, 0, n // 2 + 1, 1:-1].numpy()  # x-faces on x = 0.5
    v = state.velocity[1][0, 0, 1:-1, n // 2 + 1].numpy()  # y-faces on y = 0.5
    y_line, u_line = np.r_[0.0, centres, 1.0], np.r_[0.0, u, 1.0]
    x_line, v_line = np.r_[0.0, centres, 1.0], np.r_[0.0, v, 0.0]
    return {"y": y_line, "u": u_line, "x": x_line, "v": v_line,
            "u_at_ghia": np.interp(GHIA_Y, y_line, u_line), "v_at_ghia": np.interp(GHIA_X, x_line, v_line)}


def extremum(x: np.ndarray, f: np.ndarray, kind: str) -> tuple[float, float]:
    """Sub-grid extremum: the parabola through the discrete extremum and its two neighbours."""
    k = int(np.argmin(f) if kind == "min" else np.argmax(f))
    k = min(max(k, 1), len(f) - 2)
    c = np.polyfit(x[k - 1:k + 2], f[k - 1:k + 2], 2)
    xe = -c[1] / (2 * c[0])
    return float(np.polyval(c, xe)), float(xe)


def prolong(state: FlowState, coarse: FlowEnvironment, fine: FlowEnvironment) -> tuple[torch.Tensor, ...]:
    """Multilinear interpolation of a coarse face field onto a finer grid (physical coordinates)."""
    out = []
    for d in range(coarse.ndim):
        mesh = [c.numpy() for c in coarse.face_coordinates(d)]
        nd = len(mesh)
        points = tuple(mesh[k][tuple(slice(None) if b == k else 0 for b in range(nd))] for k in range(nd))
        interp = RegularGridInterpolator(points, state.velocity[d][0, 0].numpy(), bounds_error=False, fill_value=None)
        target = np.stack([c.numpy() for c in fine.face_coordinates(d)], axis=-1)
        out.append(torch.from_numpy(interp(target))[None, None])
    return tuple(out)


def run_cavity(re: float, n: int, cfl: float, tol: float, max_time: float, start: tuple | None) -> dict:
    env = lid_driven_cavity(n, reynolds=re, dt=cfl / n)
    solver = MACFlowSolver(env, advection="upwind3")
    if start is None:
        state = solver.initial_state()
    else:
        coarse_state, coarse_env = start
        state = solver.initial_state(prolong(coarse_state, coarse_env, env))
    t0 = time.perf_counter()
    state, steps, rate = solver.run_to_steady(state, tol=tol, max_steps=round(max_time / env.dt), check_every=20)
    wall = time.perf_counter() - t0
    prof = profiles(state, n)
    err_u = prof["u_at_ghia"] - np.array(GHIA_U[int(re)])
    err_v = prof["v_at_ghia"] - np.array(GHIA_V[int(re)])
    result = {
        "re": re, "n": n, "dt": env.dt, "diffusion": solver._diffusion_scheme, "start": "rest" if start is None else f"{int(round(1 / coarse_env.spacing[0]))}² solution",
        "steps": steps, "simulated_time": state.time, "final_rate": rate, "converged": rate < tol,
        "wall_s": wall, "steps_per_s": steps / wall,
        "rms_u": float(np.sqrt(np.mean(err_u**2))), "rms_v": float(np.sqrt(np.mean(err_v**2))),
        "max_u": float(np.abs(err_u).max()), "max_v": float(np.abs(err_v).max()),
        "max_divergence": float(solver.divergence(state).abs().max()),
        "pressure_iterations_last": int(solver.last_pressure_solve.iterations.max()),
        "u_min": extremum(prof["y"], prof["u"], "min"), "v_max": extremum(prof["x"], prof["v"], "max"),
        "v_min": extremum(prof["x"], prof["v"], "min"),
    }
    print(f"cavity Re={re:g} {n}²: {steps} steps (t={state.time:.1f}, rate {rate:.1e}) in {wall:.1f} s "
          f"({result['steps_per_s']:.1f} steps/s); RMS u {result['rms_u']:.4f} v {result['rms_v']:.4f}", flush=True)
    return {"summary": result, "profiles": {k: v.tolist() for k, v in prof.items()}, "state": state, "env": env}


def strouhal(times: np.ndarray, signal: np.ndarray) -> dict:
    """Frequency from upward zero crossings (mean period) and from the FFT peak."""
    v = signal - signal.mean()
    up = np.where((v[:-1] < 0) & (v[1:] >= 0))[0]
    crossings = times[up] - v[up] * (times[up + 1] - times[up]) / (v[up + 1] - v[up])
    periods = np.diff(crossings)
    dt = times[1] - times[0]
    pad = 8 * len(v)
    spectrum = np.abs(np.fft.rfft(v * np.hanning(len(v)), n=pad))
    freqs = np.fft.rfftfreq(pad, dt)
    return {"f_crossings": 1.0 / periods.mean(), "period_spread": periods.std() / periods.mean(),
            "periods": len(periods), "f_fft": float(freqs[np.argmax(spectrum)])}


def run_cylinder(resolution: int, t_end: float, cfl: float = 0.6, kick: float = 1.0) -> dict:
    env = channel_with_cylinder(resolution=resolution, reynolds=100.0)
    dt = cfl * env.spacing[0] / 1.5  # Courant number cfl at the peak inflow speed 1.5Ū
    env = env.replace(dt=dt)
    # the symmetric start would shed only after round-off grows; spinning the cylinder for
    # t < kick (ω = 4) breaks the symmetry, then the benchmark's fixed cylinder takes over
    spinning = channel_with_cylinder(resolution=resolution, reynolds=100.0, angular_velocity=4.0, dt=dt)
    solver = MACFlowSolver(spinning, advection="upwind3")
    state = solver.initial_state()
    fx, fy = env.face_coordinates(1)
    i = int(torch.argmin((fx[:, 0] - 0.45).abs()))
    j = int(torch.argmin((fy[0] - 0.2).abs()))
    probe_at = (float(fx[i, j]), float(fy[i, j]))
    times, probe = [], []
    steps = round(t_end / dt)
    t0 = time.perf_counter()
    for k in range(steps):
        if k == round(kick / dt):
            solver.env = env
        state = solver.step(state)
        times.append(state.time)
        probe.append(float(state.velocity[1][0, 0, i, j]))
    wall = time.perf_counter() - t0
    times, probe = np.array(times), np.array(probe)
    late = times > t_end / 2
    freq = strouhal(times[late], probe[late])
    D, U = 0.1, 1.0
    h = env.spacing[0]
    inflow = float(state.velocity[0][0, 0, 1, 1:-1].sum()) * h
    outflow = float(state.velocity[0][0, 0, -2, 1:-1].sum()) * h
    result = {
        "resolution": resolution, "cells_per_diameter": D / h, "grid": list(env.grid.shape), "dt": dt,
        "t_end": t_end, "steps": steps, "wall_s": wall, "steps_per_s": steps / wall, "probe": probe_at,
        "St_crossings": freq["f_crossings"] * D / U, "St_fft": freq["f_fft"] * D / U,
        "periods_used": freq["periods"], "period_spread": freq["period_spread"],
        "probe_amplitude": float(probe[late].std() * math.sqrt(2)),
        "max_divergence": float(solver.divergence(state).abs().max()),
        "flux_in": inflow, "flux_out": outflow,
    }
    print(f"cylinder D={D / h:.1f} cells: St {result['St_crossings']:.4f} (FFT {result['St_fft']:.4f}) over "
          f"{freq['periods']} periods; {steps} steps in {wall:.1f} s ({result['steps_per_s']:.1f} steps/s)", flush=True)
    vorticity = vorticity_field(state, env)
    return {"summary": result, "times": times.tolist(), "probe_signal": probe.tolist(), "vorticity": vorticity, "env": env}


def vorticity_field(state: FlowState, env: FlowEnvironment) -> np.ndarray:
    """ω = ∂v/∂x − ∂u/∂y at the cell corners (interior), NaN where a corner touches a solid cell."""
    u, v = (c[0, 0].numpy() for c in state.velocity)
    h = env.spacing[0]
    w = (v[1:, 1:-1] - v[:-1, 1:-1]) / h - (u[1:-1, 1:] - u[1:-1, :-1]) / h
    fluid = env.fluid[0, 0].numpy()
    corner_fluid = fluid[:-1, :-1] * fluid[1:, :-1] * fluid[:-1, 1:] * fluid[1:, 1:]
    return np.where(corner_fluid > 0, w, np.nan)


def figure(cavities: dict, cylinder: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 16))
    gs = fig.add_gridspec(4, 2, height_ratios=[1, 1, 0.62, 0.5])
    colors = plt.cm.viridis(np.linspace(0.0, 0.8, 4))
    for row, re in enumerate((100, 1000)):
        ax_u, ax_v = fig.add_subplot(gs[row, 0]), fig.add_subplot(gs[row, 1])
        for k, (n, run) in enumerate(sorted(cavities.get(re, {}).items())):
            p, s = run["profiles"], run["summary"]
            ax_u.plot(p["u"], p["y"], color=colors[k], lw=1.6, label=f"{n}² (RMS {s['rms_u']:.3f})")
            ax_v.plot(p["x"], p["v"], color=colors[k], lw=1.6, label=f"{n}² (RMS {s['rms_v']:.3f})")
        ax_u.plot(GHIA_U[re], GHIA_Y, "o", mfc="none", mec="crimson", ms=7, mew=1.5, label="Ghia et al. 1982")
        ax_v.plot(GHIA_X, GHIA_V[re], "o", mfc="none", mec="crimson", ms=7, mew=1.5, label="Ghia et al. 1982")
        ax_u.set(xlabel="u", ylabel="y", title=f"Cavity Re = {re}: u on x = 0.5")
        ax_v.set(xlabel="x", ylabel="v", title=f"Cavity Re = {re}: v on y = 0.5")
        for ax in (ax_u, ax_v):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=9, loc="best")
    ax_w = fig.add_subplot(gs[2, :])
    s = cylinder["summary"]
    env = cylinder["env"]
    w = cylinder["vorticity"]
    h = env.spacing[0]
    # corners k = 1..N−1 of the grid sit at physical (k − 1)·h; pixels are centred on them
    extent = (-h / 2, (w.shape[0] - 0.5) * h, -h / 2, (w.shape[1] - 0.5) * h)
    lim = np.nanpercentile(np.abs(w), 98)
    image = ax_w.imshow(w.T, origin="lower", extent=extent, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="equal")
    fig.colorbar(image, ax=ax_w, label="vorticity", shrink=0.8, pad=0.01)
    ax_w.add_patch(plt.Circle((0.2, 0.2), 0.05, color="0.3"))
    ax_w.plot(*s["probe"], "k+", ms=10, mew=2)
    ax_w.set(xlabel="x", ylabel="y", title=f"Cylinder Re = 100, vorticity at t = {s['t_end']:g} ({s['cells_per_diameter']:.0f} cells per D)")
    ax_p = fig.add_subplot(gs[3, :])
    t, v = np.array(cylinder["times"]), np.array(cylinder["probe_signal"])
    ax_p.plot(t, v, lw=1.0, color="navy")
    ax_p.axvspan(s["t_end"] / 2, s["t_end"], color="0.9", zorder=0, label="window for St")
    ax_p.set(xlabel="t", ylabel="v at probe (+)",
             title=f"St = {s['St_crossings']:.4f} (Schäfer & Turek 1996: {ST_RANGE[0]}–{ST_RANGE[1]})")
    ax_p.legend(fontsize=9, loc="lower right")
    ax_p.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(cavity_rows: list, cylinder_rows: list, meta: dict, convergence: dict) -> str:
    lines = [
        "# MAC reference solver against published benchmark data",
        "",
        f"`.venv/bin/python benchmarks/flow_reference.py{' --quick' if meta['quick'] else ''}` — "
        f"{meta['threads']} CPU thread, float64, torch {meta['torch']}, total {meta['total_wall_s']:.0f} s.",
        "Solver: `MACFlowSolver(advection=\"upwind3\")` (third-order upwind-biased advection, SSP-RK3, "
        "diffusion explicit or implicit as stability requires, incremental projection with deflated CG, "
        "rtol 1e-6). Not a claim of the papers' accuracy: these are coarse grids.",
        "",
        "## Lid-driven cavity vs Ghia, Ghia & Shin (1982)",
        "",
        "Reference: U. Ghia, K. N. Ghia, C. T. Shin, *High-Re solutions for incompressible flow using the "
        "Navier-Stokes equations and a multigrid method*, J. Comput. Phys. 48 (1982) 387–411, Tables I "
        "and II (17 points each on the centre-lines; their grid 129²). Our profiles are interpolated "
        "linearly between faces to Ghia's points; steady = max|Δu|/dt over the fluid below 1e-4.",
        "",
        "| Re | grid | start | steps | t | final rate | steady | RMS u | max u | RMS v | max v | max div | wall s | steps/s |",
        "|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in cavity_rows:
        lines.append(f"| {r['re']:g} | {r['n']}² | {r['start']} | {r['steps']} | {r['simulated_time']:.1f} | "
                     f"{r['final_rate']:.1e} | {'yes' if r['converged'] else '**no** (time limit)'} | {r['rms_u']:.4f} | {r['max_u']:.4f} | {r['rms_v']:.4f} | "
                     f"{r['max_v']:.4f} | {r['max_divergence']:.1e} | {r['wall_s']:.1f} | {r['steps_per_s']:.1f} |")
    lines += [
        "",
        "Centre-line extrema (parabola through the discrete extremum; value @ position). Botella & "
        "Peyret (1998), *Benchmark spectral results on the lid-driven cavity flow*, Computers & Fluids "
        "27:421–433, give grid-converged Re = 1000 values: "
        f"u_min = {BOTELLA_RE1000['u_min']}, v_max = {BOTELLA_RE1000['v_max']}, v_min = {BOTELLA_RE1000['v_min']}.",
        "",
        "| Re | grid | u_min | v_max | v_min | vs Botella & Peyret (u_min, v_max, v_min) |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in cavity_rows:
        rel = "—"
        if r["re"] == 1000:
            rel = ", ".join(f"{r[k][0] / BOTELLA_RE1000[k] - 1:+.1%}" for k in ("u_min", "v_max", "v_min"))
        lines.append(f"| {r['re']:g} | {r['n']}² | {r['u_min'][0]:.4f} @ {r['u_min'][1]:.3f} | "
                     f"{r['v_max'][0]:.4f} @ {r['v_max'][1]:.3f} | {r['v_min'][0]:.4f} @ {r['v_min'][1]:.3f} | {rel} |")
    if convergence:
        lines += [""]
        for re, (coarse, fine, diff) in convergence.items():
            lines.append(f"Grid convergence, Re = {re}: the {coarse}² and {fine}² profiles differ by at most "
                         f"{diff:.4f} at Ghia's points.")
        lines.append("At Re = 100 the finer grids agree with each other to ~1e-3 but stay ≈ 0.003 (u) / 0.005 (v) "
                     "RMS from Ghia's values: the difference is the discretisation error of Ghia's own 129² "
                     "solution (their smallest tabulated v is −0.2453 at x = 0.8047; the converged minimum is "
                     "≈ −0.254), which is why the coarse 32² grid, whose error happens to go the same way, "
                     "sits closest to them.")
    lines += [
        "",
        "## Cylinder in a channel, Re = 100, vs Schäfer & Turek (1996)",
        "",
        "Reference: M. Schäfer, S. Turek, *Benchmark computations of laminar flow around a cylinder*, "
        "Notes on Numerical Fluid Mechanics 52 (1996) 547–566, test 2D-2: channel 2.2 × 0.41, cylinder "
        "D = 0.1 centred at (0.2, 0.2), parabolic inflow with mean speed 1 (max 1.5), ν = 1e-3; "
        f"**St = D·f/Ū ∈ [{ST_RANGE[0]}, {ST_RANGE[1]}]**. (The unconfined cylinder has St ≈ 0.164 at "
        "Re = 100, Williamson 1996; the 41 % blockage raises it.) Staircase cylinder on the MAC grid, "
        "open outflow (p = 0). The cylinder spins (ω = 4) for t < 1 to break the symmetry; St from "
        "the transverse velocity at the probe over the second half of the run.",
        "",
        "| cells per D | grid | dt | steps | St (zero crossings) | St (FFT) | periods | rel. error vs 0.30 | probe amplitude | flux out / in − 1 | max div | wall s | steps/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in cylinder_rows:
        lines.append(f"| {r['cells_per_diameter']:.1f} | {r['grid'][0]}×{r['grid'][1]} | {r['dt']:.2e} | {r['steps']} | "
                     f"{r['St_crossings']:.4f} | {r['St_fft']:.4f} | {r['periods_used']} | "
                     f"{r['St_crossings'] / 0.30 - 1:+.1%} | {r['probe_amplitude']:.3f} | "
                     f"{r['flux_out'] / r['flux_in'] - 1:.1e} | {r['max_divergence']:.1e} | {r['wall_s']:.1f} | {r['steps_per_s']:.1f} |")
    lines += [
        "",
        "Steps per second are those of the runs above (one thread; the cavity grids include the wall "
        "layer, n+2 cells per side). Figure: `flow_reference.png`.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ 3D cubic cavity
CAVITY3D_HEADING = "## 3D lid-driven cubic cavity"


def profiles3d(state: FlowState, n: int) -> dict:
    """Centre-line profiles of a cubic cavity with n (even) cells per side: u(y) on x = z = 0.5
    (x-faces on x = 0.5) and v(x) on y = z = 0.5 (y-faces on y = 0.5), each the mean of the two
    cell layers either side of the mid-span plane z = 0.5, with the wall values at the ends."""
    if n % 2:
        raise ValueError(f"profiles3d needs an even n, got {n}")
    centres = (np.arange(n) + 0.5) / n
    k = slice(n // 2, n // 2 + 2)  # the cells either side of z = 0.5 (wall layer at index 0)
    u = state.velocity[0][0, 0, n // 2 + 1, 1:-1, k].mean(-1).numpy()
    v = state.velocity[1][0, 0, 1:-1, n // 2 + 1, k].mean(-1).numpy()
    y_line, u_line = np.r_[0.0, centres, 1.0], np.r_[0.0, u, 1.0]
    x_line, v_line = np.r_[0.0, centres, 1.0], np.r_[0.0, v, 0.0]
    return {"y": y_line, "u": u_line, "x": x_line, "v": v_line,
            "u_at_ak": np.interp(AK_Y, y_line, u_line), "v_at_ak": np.interp(AK_X, x_line, v_line)}


def spanwise_asymmetry(state: FlowState) -> float:
    """max |f(z) − ±f(1 − z)| over the three components (w odd, u and v even about z = 0.5); the
    cube and the lid are mirror-symmetric, the solver does not know it."""
    u, v, w = (c[0, 0] for c in state.velocity)
    return max(float((u - u.flip(-1)).abs().max()), float((v - v.flip(-1)).abs().max()),
               float((w + w.flip(-1)).abs().max()))


def mid_planes(state: FlowState, n: int) -> dict:
    """Cell-centred velocities on the mid-span plane z = 0.5 (u, v) and on the plane x = 0.5 (v, w)."""
    u, v, w = (c[0, 0].numpy() for c in state.velocity)
    uc = 0.5 * (u[1:-2] + u[2:-1])[:, 1:-1, 1:-1]      # x-faces -> cell centres, fluid cells
    vc = 0.5 * (v[:, 1:-2] + v[:, 2:-1])[1:-1, :, 1:-1]
    wc = 0.5 * (w[:, :, 1:-2] + w[:, :, 2:-1])[1:-1, 1:-1, :]
    k, i = slice(n // 2 - 1, n // 2 + 1), slice(n // 2 - 1, n // 2 + 1)
    return {"z_mid_u": uc[:, :, k].mean(-1), "z_mid_v": vc[:, :, k].mean(-1),
            "x_mid_v": vc[i].mean(0), "x_mid_w": wc[i].mean(0)}


def run_cavity3d(re: float, n: int, cfl: float, tol: float, max_time: float, start: tuple | None) -> dict:
    env = lid_driven_cavity(n, ndim=3, reynolds=re, dt=cfl / n)
    solver = MACFlowSolver(env, advection="upwind3")
    if start is None:
        state = solver.initial_state()
    else:
        coarse_state, coarse_env = start
        state = solver.initial_state(prolong(coarse_state, coarse_env, env))
    t0 = time.perf_counter()
    state, steps, rate = solver.run_to_steady(state, tol=tol, max_steps=round(max_time / env.dt), check_every=20)
    wall = time.perf_counter() - t0
    prof = profiles3d(state, n)
    lid = env.face_mask[0] * (env.face_velocity[0] != 0)
    result = {
        "re": re, "n": n, "dt": env.dt, "tol": tol, "diffusion": solver._diffusion_scheme,
        "start": "rest" if start is None else f"{int(round(1 / coarse_env.spacing[0]))}³ solution",
        "steps": steps, "simulated_time": state.time, "final_rate": rate, "converged": rate < tol,
        "wall_s": wall, "steps_per_s": steps / wall,
        "max_divergence": float(solver.divergence(state).abs().max()),
        "lid_error": float(((state.velocity[0] - 1.0) * lid).abs().max()),
        "spanwise_asymmetry": spanwise_asymmetry(state),
        "pressure_iterations_last": int(solver.last_pressure_solve.iterations.max()),
        "u_min": extremum(prof["y"], prof["u"], "min"), "v_max": extremum(prof["x"], prof["v"], "max"),
        "v_min": extremum(prof["x"], prof["v"], "min"),
    }
    if int(re) == 1000:
        err_u = prof["u_at_ak"] - np.array(AK_U)
        err_v = prof["v_at_ak"] - np.array(AK_V)
        result.update(max_u=float(np.abs(err_u).max()), max_v=float(np.abs(err_v).max()),
                      rms_u=float(np.sqrt(np.mean(err_u**2))), rms_v=float(np.sqrt(np.mean(err_v**2))))
    print(f"cavity3d Re={re:g} {n}³: {steps} steps (t={state.time:.1f}, rate {rate:.1e}) in {wall:.1f} s "
          f"({result['steps_per_s']:.1f} steps/s); u_min {result['u_min'][0]:.4f} v_max {result['v_max'][0]:.4f} "
          f"v_min {result['v_min'][0]:.4f}" + (f"; max dev u {result['max_u']:.4f} v {result['max_v']:.4f}"
                                               if "max_u" in result else ""), flush=True)
    return {"summary": result, "profiles": {k: v.tolist() for k, v in prof.items()}, "state": state, "env": env,
            "planes": mid_planes(state, n)}


def richardson(ns: list, values: list) -> dict:
    """Observed order p and extrapolated value from three grids (h = 1/n, any ratios): solves
    (f1 − f2)/(f2 − f3) = (h1^p − h2^p)/(h2^p − h3^p); f∞ = f3 + (f3 − f2)/((h2/h3)^p − 1).
    None where the differences change sign (no monotone convergence)."""
    h = [1.0 / n for n in ns]
    f1, f2, f3 = values
    if (f1 - f2) * (f2 - f3) <= 0:
        return {"order": None, "extrapolated": None}
    target = (f1 - f2) / (f2 - f3)

    def g(p):
        return (h[0] ** p - h[1] ** p) / (h[1] ** p - h[2] ** p) - target

    lo, hi = 0.05, 12.0
    if g(lo) * g(hi) > 0:
        return {"order": None, "extrapolated": None}
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if g(lo) * g(mid) <= 0:
            hi = mid
        else:
            lo = mid
    p = 0.5 * (lo + hi)
    return {"order": p, "extrapolated": f3 + (f3 - f2) / ((h[1] / h[2]) ** p - 1.0)}


def figure3d(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(13, 17))
    colors = plt.cm.viridis(np.linspace(0.0, 0.8, 4))
    for row, re in enumerate((100, 1000)):
        ax_u, ax_v = axes[row]
        for k, (n, run) in enumerate(sorted(runs.get(re, {}).items())):
            p = run["profiles"]
            ax_u.plot(p["u"], p["y"], color=colors[k], lw=1.6, label=f"{n}³")
            ax_v.plot(p["x"], p["v"], color=colors[k], lw=1.6, label=f"{n}³")
        if re == 1000:
            ax_u.plot(AK_U, AK_Y, "o", mfc="none", mec="crimson", ms=7, mew=1.5, label="Albensoeder & Kuhlmann 2005")
            ax_v.plot(AK_X, AK_V, "o", mfc="none", mec="crimson", ms=7, mew=1.5, label="Albensoeder & Kuhlmann 2005")
        ax_u.plot(GHIA_U[re], GHIA_Y, "x", color="0.45", ms=6, label="2D, Ghia et al. 1982 (not the same flow)")
        ax_v.plot(GHIA_X, GHIA_V[re], "x", color="0.45", ms=6, label="2D, Ghia et al. 1982 (not the same flow)")
        ax_u.set(xlabel="u", ylabel="y", title=f"Cubic cavity Re = {re}: u on x = z = 0.5")
        ax_v.set(xlabel="x", ylabel="v", title=f"Cubic cavity Re = {re}: v on y = z = 0.5")
        for ax in (ax_u, ax_v):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=9, loc="best")
    finest = runs.get(1000) or runs.get(100)
    re_f = 1000 if runs.get(1000) else 100
    n = max(finest)
    planes = finest[n]["planes"]
    c = (np.arange(n) + 0.5) / n
    for ax, (a, b, xl, yl, title) in zip(axes[2], (
            ("z_mid_u", "z_mid_v", "x", "y", f"Re = {re_f}, {n}³: mid-span plane z = 0.5 (u, v)"),
            ("x_mid_w", "x_mid_v", "z", "y", f"Re = {re_f}, {n}³: plane x = 0.5 (w, v); lid moves into the page"))):
        if a == "x_mid_w":  # plane x = 0.5: arrays [y, z], horizontal axis z, vertical y
            U, V = planes["x_mid_w"], planes["x_mid_v"]
        else:  # plane z = 0.5: arrays [x, y]
            U, V = planes[a].T, planes[b].T
        speed = np.hypot(U, V)
        image = ax.imshow(speed, origin="lower", extent=(0, 1, 0, 1), cmap="magma_r")
        ax.streamplot(c, c, U, V, color="w", density=1.3, linewidth=0.7, arrowsize=0.8)
        fig.colorbar(image, ax=ax, shrink=0.8, label="in-plane speed")
        ax.set(xlabel=xl, ylabel=yl, title=title, xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def finest_2d_re100(cavity_rows: list) -> dict | None:
    """Extrema of the finest 2D Re = 100 cavity of the 2D run (a qualitative yardstick for 3D)."""
    rows = [r for r in cavity_rows if int(r["re"]) == 100]
    return max(rows, key=lambda r: r["n"]) if rows else None


def markdown3d(data: dict, ref2d: dict | None = None) -> str:
    rows, conv = data["runs"], data["richardson_re100"]
    lines = [
        CAVITY3D_HEADING,
        "",
        f"`{data['command']}` — {data['threads']} CPU thread, float64, torch {data['torch']}, "
        f"total {data['total_wall_s']:.0f} s. `lid_driven_cavity(n, ndim=3)`: unit cube, lid y = 1 moving "
        "+x at speed 1, no-slip elsewhere (the end walls z = 0, 1 included), Re = U L/ν; n cells per "
        "side plus the wall layer. Same solver as above (upwind3, SSP-RK3, deflated CG). Profiles: u(y) "
        "on x = z = 0.5 and v(x) on y = z = 0.5 (mean of the two cell layers either side of z = 0.5); in "
        "the literature's frame (z vertical) these are u(z) on the vertical and w(x) on the horizontal "
        "centre-line. Steady = max|Δu|/dt below the tolerance shown.",
        "",
        "Reference: S. Albensoeder, H. C. Kuhlmann, *Accurate three-dimensional lid-driven cavity flow*, "
        "J. Comput. Phys. 206 (2005) 536–558, **Tables 5 and 6** (cube with rigid end walls, Re = 1000, "
        "Chebyshev collocation, at Ghia's 17 points), taken from the transcription in "
        "[tum-pbs/PICT](https://github.com/tum-pbs/PICT) `tests/validations.py` (commit a95d7f9d0713); "
        "their centre-line extrema (u_min −0.2803833 @ 0.12419, v_max 0.2466511 @ 0.10913, "
        "v_min −0.4350186 @ 0.90957) as quoted in Ben Beya & Lili, C. R. Mécanique 336 (2008) 863–872, "
        "Table 1. Neither was checked against the original paper here. **No Re = 100 table could be "
        "obtained** (Ku, Hirsh & Taylor 1987 and Wong & Baker 2002 were not accessible), so Re = 100 is "
        "a grid-convergence study (Richardson extrapolation over three grids) with the 2D values only "
        "as a qualitative yardstick.",
        "",
        "| Re | grid | start | tol | steps | t | final rate | steady | max dev u | max dev v | RMS u | RMS v | "
        "max div | z-asymmetry | wall s | steps/s |",
        "|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        dev = (f"{r['max_u']:.4f} | {r['max_v']:.4f} | {r['rms_u']:.4f} | {r['rms_v']:.4f}"
               if "max_u" in r else "– | – | – | –")
        lines.append(f"| {r['re']:g} | {r['n']}³ | {r['start']} | {r['tol']:.0e} | {r['steps']} | "
                     f"{r['simulated_time']:.1f} | {r['final_rate']:.1e} | "
                     f"{'yes' if r['converged'] else '**no** (time limit)'} | {dev} | {r['max_divergence']:.1e} | "
                     f"{r['spanwise_asymmetry']:.1e} | {r['wall_s']:.1f} | {r['steps_per_s']:.1f} |")
    lines += [
        "",
        "max dev / RMS: |ours − Albensoeder & Kuhlmann| at their 17 points per centre-line (ours "
        "interpolated linearly between faces). z-asymmetry: max |f(z) − ±f(1 − z)| over the three "
        "components (nothing in the solver imposes the mirror symmetry).",
        "",
        "Centre-line extrema (parabola through the discrete extremum; value @ position):",
        "",
        "| Re | grid | u_min | v_max | v_min | vs Albensoeder & Kuhlmann (u_min, v_max, v_min) |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        rel = "—"
        if int(r["re"]) == 1000:
            rel = ", ".join(f"{r[k][0] / AK_EXTREMA[k][0] - 1:+.1%}" for k in ("u_min", "v_max", "v_min"))
        lines.append(f"| {r['re']:g} | {r['n']}³ | {r['u_min'][0]:.4f} @ {r['u_min'][1]:.3f} | "
                     f"{r['v_max'][0]:.4f} @ {r['v_max'][1]:.3f} | {r['v_min'][0]:.4f} @ {r['v_min'][1]:.3f} | {rel} |")
    if conv:
        grids = ", ".join(f"{n}³" for n in conv["grids"])
        lines += ["", f"Re = 100, Richardson extrapolation over {grids} (h = 1/n; observed order p from the "
                      "three values, f∞ = f_fine + (f_fine − f_mid)/((h_mid/h_fine)^p − 1)):", "",
                  "| quantity | " + " | ".join(f"{n}³" for n in conv["grids"]) + " | order p | extrapolated | finest − extrapolated |",
                  "|---|" + "---:|" * (len(conv["grids"]) + 3)]
        for q in ("u_min", "v_max", "v_min"):
            c = conv[q]
            p = "—" if c["order"] is None else f"{c['order']:.2f}"
            e = "—" if c["extrapolated"] is None else f"{c['extrapolated']:.4f}"
            d = "—" if c["extrapolated"] is None else f"{c['values'][-1] - c['extrapolated']:+.4f}"
            lines.append(f"| {q} | " + " | ".join(f"{v:.4f}" for v in c["values"]) + f" | {p} | {e} | {d} |")
        lines.append("")
        lines.append(f"The two finest Re = 100 grids differ by at most {conv['max_profile_difference']:.4f} along the "
                     "two centre-lines (at the reference points).")
    lines += ["", "Figure: `flow_reference_3d.png` (profiles per grid, the mid-span plane and the plane x = 0.5 "
                  "of the finest Re = 1000 grid).", ""]
    lines += reading3d(rows, conv, ref2d)
    return "\n".join(lines).rstrip() + "\n"


def reading3d(rows: list, conv: dict, ref2d: dict | None) -> list:
    """Sentences computed from the rows (so that a rerun keeps them true)."""
    out = []
    ak = sorted((r for r in rows if int(r["re"]) == 1000), key=lambda r: r["n"])
    if ak:
        f = ak[-1]
        out.append(f"- **Re = 1000 vs Albensoeder & Kuhlmann:** on {f['n']}³ the largest deviation is "
                   f"{f['max_u']:.3f} in u and {f['max_v']:.3f} in v (RMS {f['rms_u']:.3f} / {f['rms_v']:.3f}); the "
                   f"extrema are {abs(f['u_min'][0] / AK_EXTREMA['u_min'][0] - 1):.0%} / "
                   f"{abs(f['v_max'][0] / AK_EXTREMA['v_max'][0] - 1):.0%} / "
                   f"{abs(f['v_min'][0] / AK_EXTREMA['v_min'][0] - 1):.0%} too weak (u_min / v_max / v_min) at positions "
                   f"within {max(abs(f[k][1] - AK_EXTREMA[k][1]) for k in AK_EXTREMA):.3f} of the published ones: "
                   "the published shape, an under-resolved vortex.")
        if len(ak) >= 2:
            c, f = ak[-2], ak[-1]
            parts = []
            for k in ("u_min", "v_max", "v_min"):
                ec, ef = abs(c[k][0] - AK_EXTREMA[k][0]), abs(f[k][0] - AK_EXTREMA[k][0])
                parts.append(f"{k} {ec:.4f} → {ef:.4f} (order {np.log(ec / ef) / np.log(f['n'] / c['n']):.1f})")
            out.append(f"- Error of the extrema against the published values, {c['n']}³ → {f['n']}³: "
                       + ", ".join(parts) + f"; max deviation u {c['max_u']:.3f} → {f['max_u']:.3f}, "
                       f"v {c['max_v']:.3f} → {f['max_v']:.3f}.")
            r2 = (f["n"] / c["n"]) ** 2
            ext = {k: f[k][0] + (f[k][0] - c[k][0]) / (r2 - 1.0) for k in ("u_min", "v_max", "v_min")}
            out.append(f"- Two-grid Richardson extrapolation of the extrema assuming order 2: "
                       + ", ".join(f"{k} {ext[k]:.4f} ({ext[k] / AK_EXTREMA[k][0] - 1:+.1%})" for k in ext)
                       + " against Albensoeder & Kuhlmann.")
    if conv:
        rates = [conv[q]["order"] for q in ("u_min", "v_max", "v_min") if conv[q]["order"] is not None]
        if rates:
            out.append(f"- **Re = 100:** the extrema converge monotonically with observed order "
                       f"{min(rates):.1f}–{max(rates):.1f} (below the scheme's 2; the velocity jump at the lid's edges is "
                       f"the likely cause, not checked); the finest grid is within "
                       + ", ".join(f"{abs(conv[q]['values'][-1] / conv[q]['extrapolated'] - 1):.1%}"
                                   for q in ("u_min", "v_max", "v_min") if conv[q]["extrapolated"] is not None)
                       + " of the extrapolated u_min, v_max, v_min.")
            if ref2d is not None:
                two = {q: ref2d[q][0] for q in ("u_min", "v_max", "v_min")}
                src = f"our 2D {ref2d['n']}² run above"
            else:
                two = {"u_min": min(GHIA_U[100]), "v_max": max(GHIA_V[100]), "v_min": min(GHIA_V[100])}
                src = "Ghia et al. at their table points"
            ext = {q: conv[q]["extrapolated"] for q in two if conv[q]["extrapolated"] is not None}
            out.append(f"- Qualitative comparison with the 2D square cavity ({src}: u_min {two['u_min']:.4f}, "
                       f"v_max {two['v_max']:.4f}, v_min {two['v_min']:.4f}): the extrapolated 3D mid-span extrema are "
                       + ", ".join(f"{q} {ext[q] / two[q]:.0%}" for q in ext) + " of the 2D ones.")
    asym = max(r["spanwise_asymmetry"] for r in rows)
    div = max(r["max_divergence"] for r in rows)
    out.append(f"- Mirror symmetry about z = 0.5 holds to {asym:.0e} and the divergence to {div:.0e} (1/s) on every grid.")
    return out


def run_cavity3d_suite(quick: bool) -> dict:
    t_start = time.perf_counter()
    if quick:
        plan = {100: [(16, None, 1e-4)], 1000: [(16, None, 1e-4)]}
        max_time = {100: 20.0, 1000: 10.0}
    else:
        plan = {100: [(16, None, 1e-5), (24, None, 1e-5), (36, 24, 1e-5)], 1000: [(32, None, 1e-4), (48, 32, 1e-4)]}
        max_time = {100: 40.0, 1000: 60.0}
    runs: dict = {}
    for re, grids in plan.items():
        runs[re] = {}
        for n, start_from, tol in grids:
            cfl = 0.5 if re == 100 else 1.0
            start = None
            if start_from is not None:
                prev = runs[re][start_from]
                start = (prev["state"], prev["env"])
            runs[re][n] = run_cavity3d(float(re), n, cfl, tol=tol, max_time=max_time[re], start=start)
    conv = {}
    r100 = runs.get(100, {})
    if len(r100) >= 3:
        ns = sorted(r100)[-3:]
        for q in ("u_min", "v_max", "v_min"):
            vals = [r100[n]["summary"][q][0] for n in ns]
            conv[q] = {"values": vals, **richardson(ns, vals)}
        a, b = r100[ns[-2]]["profiles"], r100[ns[-1]]["profiles"]
        conv["grids"] = ns
        conv["max_profile_difference"] = float(max(np.abs(np.subtract(a["u_at_ak"], b["u_at_ak"])).max(),
                                                   np.abs(np.subtract(a["v_at_ak"], b["v_at_ak"])).max()))
    figure3d(runs, RESULTS / "flow_reference_3d.png")
    return {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flow_reference.py --cavity3d" + (" --quick" if quick else ""),
        "quick": quick, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "total_wall_s": time.perf_counter() - t_start,
        "references": {
            "albensoeder_kuhlmann2005": "S. Albensoeder, H. C. Kuhlmann, J. Comput. Phys. 206 (2005) 536-558, Tables 5 and 6 "
                                        "(via github.com/tum-pbs/PICT tests/validations.py, commit a95d7f9d0713)",
            "ben_beya_lili2008": "B. Ben Beya, T. Lili, C. R. Mecanique 336 (2008) 863-872, Table 1 (A&K extrema)",
            "ak_y": AK_Y, "ak_u": AK_U, "ak_x": AK_X, "ak_v": AK_V, "ak_extrema": AK_EXTREMA,
            "frame": "ours: lid y = 1 moving +x, spanwise z; y = 1/2 - x_AK, x = y_AK + 1/2, u = v_AK, v = -u_AK",
        },
        "richardson_re100": conv,
        "runs": [{**run["summary"], "profiles": run["profiles"]} for re in runs for run in runs[re].values()],
    }


def merge_cavity3d(data: dict) -> None:
    """Write the 3D section into flow_reference.json (key "cavity3d") and .md, keeping the rest."""
    json_path, md_path = RESULTS / "flow_reference.json", RESULTS / "flow_reference.md"
    payload = json.loads(json_path.read_text()) if json_path.exists() else {}
    payload["cavity3d"] = data
    json_path.write_text(json.dumps(payload, indent=1))
    text = md_path.read_text() if md_path.exists() else "# MAC reference solver against published benchmark data\n"
    text = text.split(CAVITY3D_HEADING)[0].rstrip() + "\n\n"
    md_path.write_text(text + markdown3d(data, finest_2d_re100(payload.get("cavity", []))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grids and short runs (a minute)")
    parser.add_argument("--cavity3d", action="store_true",
                        help="only the 3D cubic cavity, merged into the existing results (about 16 minutes)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.cavity3d:
        data = run_cavity3d_suite(args.quick)
        merge_cavity3d(data)
        print(f"merged the 3D cavity into {RESULTS / 'flow_reference.md'} (+ .json, flow_reference_3d.png) "
              f"in {data['total_wall_s']:.0f} s")
        return
    t_start = time.perf_counter()

    if args.quick:
        plan = {100: [(32, None)], 1000: [(32, None)]}
        cylinder_plan = [(20, 4.0)]
    else:
        plan = {100: [(32, None), (64, None), (128, 64)], 1000: [(64, None), (128, 64)]}
        cylinder_plan = [(20, 6.0), (41, 6.0), (61, 6.0)]
    cavities: dict = {}
    for re, runs in plan.items():
        cavities[re] = {}
        for n, start_from in runs:
            cfl = 0.5 if re == 100 else 1.0  # Re = 1000: explicit diffusion stays stable at CFL 1
            start = None
            if start_from is not None:
                prev = cavities[re][start_from]
                start = (prev["state"], prev["env"])
            max_time = 80.0 if not args.quick else (15.0 if re == 100 else 10.0)
            cavities[re][n] = run_cavity(float(re), n, cfl, tol=1e-4, max_time=max_time, start=start)
    cylinders = [run_cylinder(r, t) for r, t in cylinder_plan]

    cavity_rows = [run["summary"] for re in cavities for run in cavities[re].values()]
    cylinder_rows = [c["summary"] for c in cylinders]
    meta = {"quick": args.quick, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "total_wall_s": time.perf_counter() - t_start}
    convergence = {}
    for re, runs in cavities.items():
        if len(runs) >= 2:
            coarse, fine = sorted(runs)[-2:]
            a, b = runs[coarse]["profiles"], runs[fine]["profiles"]
            diff = max(np.abs(np.subtract(a["u_at_ghia"], b["u_at_ghia"])).max(),
                       np.abs(np.subtract(a["v_at_ghia"], b["v_at_ghia"])).max())
            convergence[re] = (coarse, fine, float(diff))
    figure(cavities, cylinders[-1], RESULTS / "flow_reference.png")
    # the 3D cavity (--cavity3d) is a separate run: keep its section and data
    kept = json.loads((RESULTS / "flow_reference.json").read_text()) if (RESULTS / "flow_reference.json").exists() else {}
    text = markdown(cavity_rows, cylinder_rows, meta, convergence)
    if "cavity3d" in kept:
        text = text.rstrip() + "\n\n" + markdown3d(kept["cavity3d"], finest_2d_re100(cavity_rows))
    (RESULTS / "flow_reference.md").write_text(text)
    payload = {
        "meta": meta,
        "references": {
            "ghia1982": "U. Ghia, K. N. Ghia, C. T. Shin, J. Comput. Phys. 48 (1982) 387-411, Tables I and II",
            "schaefer_turek1996": "M. Schäfer, S. Turek, Notes Numer. Fluid Mech. 52 (1996) 547-566, test 2D-2",
            "botella_peyret1998": "O. Botella, R. Peyret, Computers & Fluids 27 (1998) 421-433",
            "ghia_y": GHIA_Y, "ghia_u": GHIA_U, "ghia_x": GHIA_X, "ghia_v": GHIA_V, "strouhal_range": ST_RANGE,
            "botella_re1000_extrema": BOTELLA_RE1000,
        },
        "grid_convergence_max_profile_difference": {str(k): v for k, v in convergence.items()},
        "cavity": [{**run["summary"], "profiles": run["profiles"]} for re in cavities for run in cavities[re].values()],
        "cylinder": [{**c["summary"], "times": c["times"], "probe_signal": c["probe_signal"]} for c in cylinders],
    }
    if "cavity3d" in kept:
        payload["cavity3d"] = kept["cavity3d"]
    (RESULTS / "flow_reference.json").write_text(json.dumps(payload, indent=1))
    print(f"wrote {RESULTS / 'flow_reference.md'} (+ .json, .png) in {meta['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
