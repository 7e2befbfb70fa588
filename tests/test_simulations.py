"""Named simulations (`pdeaccel simulate`): run directory contents, overrides, invariants.

Every simulation runs a few steps at a tiny size. The numbers the reports give are checked
against things we did not compute the same way: the exact per-step decay of a discrete sine
eigenmode (heat), the Taylor–Green vortex written out here from its textbook formula, and the
HDF5 trajectory read back independently.
"""

from __future__ import annotations

import json
import math

import h5py
import matplotlib.image as mpimg
import numpy as np
import pytest
import yaml
from PIL import Image

from pdeaccel.config import ConfigError
from pdeaccel.experiments.simulations import SIMULATIONS, get_simulation, resolve_config, simulate

#: overrides that make each simulation tiny (and batch 2, to see the batch axis)
TINY = {
    "heat-1d": ["grid.n=16", "init.modes=3"],
    "heat-2d": ["grid.n=10", "init.modes=2"],
    "heat-3d": ["grid.n=6", "init.modes=2"],
    "burgers-1d": ["grid.n=16"],
    "burgers-2d": ["grid.n=10"],
    "ns-2d-turbulence": ["grid.n=12"],
    "ns-2d-projection": ["grid.n=12"],
    "taylor-green": ["grid.n=8"],
}
CHANNELS = {"heat": 1, "burgers": 1, "ns": 2, "taylor": 2}
REQUIRED = ("heat-1d", "heat-2d", "heat-3d", "burgers-1d", "burgers-2d", "ns-2d-turbulence", "ns-2d-projection",
            "taylor-green")


def test_every_required_simulation_is_registered_and_has_tiny_settings():
    assert set(REQUIRED) <= set(SIMULATIONS)
    assert set(SIMULATIONS) <= set(TINY), "add tiny test settings for the new simulation"
    for name, sim in SIMULATIONS.items():
        assert sim.name == name and sim.description
        assert {"steps", "save_every", "seed", "grid", "physics", "solver"} <= set(sim.defaults)


@pytest.mark.parametrize("name", sorted(TINY))
def test_simulation_writes_run_directory(name, tmp_path):
    out = tmp_path / "run"
    report = simulate(name, steps=3, overrides=TINY[name] + ["batch=2", "save_every=2"], out=out, progress=False)
    cfg = report["config"]
    n, ndim = cfg["grid"]["n"], cfg["physics"].get("ndim", 2)
    channels = CHANNELS[name.split("-")[0]]
    expected_shape = (3, 2, channels) + (n,) * ndim  # saved at steps 0, 2 and the last one, 3
    dt = cfg["physics"]["dt"]

    with h5py.File(out / "trajectory.h5", "r") as f:
        states = np.asarray(f["states"])
        assert states.shape == expected_shape
        assert np.isfinite(states).all()
        np.testing.assert_allclose(np.asarray(f["times"]), [0.0, 2 * dt, 3 * dt])
        np.testing.assert_array_equal(np.asarray(f["steps"]), [0, 2, 3])
        assert json.loads(f.attrs["config_json"]) == cfg
        assert yaml.safe_load(f.attrs["config_yaml"]) == cfg
        assert list(f["grid"].attrs["shape"]) == [n] * ndim
        assert len(np.asarray(f["diagnostics/times"])) == 4  # every step, and the initial state
        if channels == 2:
            assert np.asarray(f["vorticity"]).shape == (3, 2) + (n, n)
    # no temporary files left behind by the atomic writes
    assert sorted(p.name for p in out.iterdir()) == sorted(report["files"])

    image = mpimg.imread(out / "final.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    if ndim == 2:
        with Image.open(out / "animation.gif") as gif:
            assert gif.n_frames == 3
    else:
        assert not (out / "animation.gif").exists()

    assert report["steps"] == 3 and report["saved_states"] == 3
    assert report["final_time"] == pytest.approx(3 * dt)
    assert report["steps_per_second"] > 0 and report["wall_seconds"] > 0
    assert report["solver_iterations"], "the monitor saw no solve"
    for stats in report["solver_iterations"].values():
        assert 0 < stats["mean"] <= stats["max"] and stats["total"] == pytest.approx(3 * stats["mean"])
    assert json.loads((out / "report.json").read_text())["invariants"] == report["invariants"]
    md = (out / "report.md").read_text()
    assert name in md and "final.png" in md and "Invariants" in md


def test_overrides_apply_and_unknown_keys_suggest_the_right_one(tmp_path):
    report = simulate("heat-1d", steps=2, overrides=["grid.n=12", "physics.nu=0.05", "init.modes=2"],
                      out=tmp_path / "a", progress=False)
    assert report["config"]["physics"]["nu"] == 0.05 and report["state_shape"] == [2, 1, 1, 12]
    with h5py.File(tmp_path / "a" / "trajectory.h5", "r") as f:
        assert json.loads(f.attrs["config_json"])["physics"]["nu"] == 0.05

    with pytest.raises(ConfigError, match=r"grid\.nn.*Did you mean grid\.n"):
        simulate("heat-1d", steps=2, overrides=["grid.nn=12"], out=tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match=r"physics\.scheme.*'leapfrog'.*crank_nicolson"):
        simulate("heat-1d", steps=2, overrides=["physics.scheme=leapfrog"], out=tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match=r"physics\.method.*coupled, projection"):
        simulate("taylor-green", steps=1, overrides=["physics.method=spectral"], out=tmp_path / "d", progress=False)
    with pytest.raises(ConfigError, match="'steps' has value .*; allowed: an integer >= 1"):
        resolve_config("heat-1d", steps=0)
    with pytest.raises(ValueError, match="Did you mean heat-2d"):
        get_simulation("heat-2")
    # a rejected config writes nothing
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_non_empty_run_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already holds files"):
        simulate("heat-1d", steps=1, overrides=TINY["heat-1d"], out=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    simulate("heat-2d", steps=1, overrides=TINY["heat-2d"], out=empty, progress=False, animate=False)
    assert (empty / "trajectory.h5").exists() and not (empty / "animation.gif").exists()


def test_heat_max_decays_exactly_like_the_discrete_sine_mode(tmp_path):
    """One sine mode a·sin(πx) is an eigenvector of the Dirichlet Laplacian (eigenvalue
    λ = −(4/h²)·sin²(πh/2)); implicit Euler multiplies it by 1/(1 − νΔtλ) every step."""
    n, nu, dt, steps = 20, 0.1, 0.01, 5
    report = simulate("heat-1d", steps=steps, out=tmp_path,
                      overrides=[f"grid.n={n}", "init.modes=1", f"physics.nu={nu}", f"physics.dt={dt}",
                                 "solver.rtol=1e-13", "save_every=1"], progress=False)
    inv = report["invariants"]
    h = 1.0 / (n + 1)
    lam = -(4.0 / h**2) * math.sin(math.pi * h / 2) ** 2
    factor = 1.0 / (1.0 - nu * dt * lam)
    assert inv["max_abs_u_final"] == pytest.approx(inv["max_abs_u_initial"] * factor**steps, rel=1e-10)
    assert inv["max_abs_u_nonincreasing"] and inv["max_abs_u_final"] < inv["max_abs_u_initial"]
    with h5py.File(tmp_path / "trajectory.h5", "r") as f:
        maxima = np.abs(np.asarray(f["states"])).reshape(steps + 1, -1).max(axis=1)
    np.testing.assert_allclose(maxima[1:] / maxima[:-1], factor, rtol=1e-10)


def _sine_coefficients(states: np.ndarray, ndim: int) -> np.ndarray:
    """Coefficients of ``[T, n, ..., n]`` Dirichlet fields in the orthonormal discrete sine basis
    sin(jπx_i) (x_i = i/(n+1)), written out here with numpy."""
    n = states.shape[-1]
    i = np.arange(1, n + 1)
    basis = np.sqrt(2 / (n + 1)) * np.sin(np.pi * np.outer(i, i) / (n + 1))
    for axis in range(1, ndim + 1):
        states = np.moveaxis(np.tensordot(states, basis, axes=([axis], [0])), -1, axis)
    return states


@pytest.mark.parametrize("name, n, ndim", [("heat-2d", 10, 2), ("heat-3d", 6, 3)])
def test_heat_fourier_modes_decay_at_their_exact_rates(name, n, ndim, tmp_path):
    """Every discrete sine mode sin(j₁πx)…sin(j_dπz) is an eigenvector of the Dirichlet Laplacian with
    λ = −(4/h²) Σ sin²(j_k πh/2); implicit Euler multiplies its coefficient by 1/(1 − νΔtλ) per step.
    The random initial field excites several modes; each must decay at its own rate, and modes it
    does not excite must stay zero (a merely dissipative stepper passes neither)."""
    report = simulate(name, steps=3, out=tmp_path, progress=False, animate=False,
                      overrides=[f"grid.n={n}", "init.modes=2", "save_every=1", "solver.rtol=1e-12"])
    nu, dt = report["config"]["physics"]["nu"], report["config"]["physics"]["dt"]
    with h5py.File(tmp_path / "trajectory.h5", "r") as f:
        coefficients = _sine_coefficients(np.asarray(f["states"])[:, 0, 0], ndim)
    h = 1.0 / (n + 1)
    lam1 = -(4.0 / h**2) * np.sin(np.arange(1, n + 1) * np.pi * h / 2) ** 2
    lam = sum(np.meshgrid(*([lam1] * ndim), indexing="ij"))
    factor = 1.0 / (1.0 - nu * dt * lam)
    excited = np.abs(coefficients[0]) > 1e-8 * np.abs(coefficients[0]).max()
    assert excited.sum() >= 2**ndim and len(set(factor[excited].round(12))) >= 3  # distinct rates are tested
    for step in range(3):
        np.testing.assert_allclose(coefficients[step + 1][excited] / coefficients[step][excited], factor[excited],
                                   rtol=1e-9)
    assert np.abs(coefficients[:, ~excited]).max() < 1e-12 * np.abs(coefficients[0]).max()


def test_burgers_2d_conserves_the_mean_and_keeps_its_extrema(tmp_path):
    """Periodic viscous Burgers in flux form: the mean of u is conserved exactly (the offset 0.5; the
    Fourier modes have zero mean), and the maximum principle holds (max u never rises, min u never
    falls). Read back from the stored trajectory, not from the report."""
    report = simulate("burgers-2d", steps=4, overrides=TINY["burgers-2d"] + ["save_every=1", "batch=2"],
                      out=tmp_path, progress=False, animate=False)
    with h5py.File(tmp_path / "trajectory.h5", "r") as f:
        states = np.asarray(f["states"])  # [T, batch, 1, n, n]
    means = states.mean(axis=(2, 3, 4))
    np.testing.assert_allclose(means, 0.5, rtol=0, atol=1e-14)
    assert np.ptp(states[0], axis=(1, 2, 3)).min() > 1.0  # a real field, not a constant
    top, bottom = states.max(axis=(2, 3, 4)), states.min(axis=(2, 3, 4))
    assert (np.diff(top, axis=0) <= 1e-12).all() and (np.diff(bottom, axis=0) >= -1e-12).all()
    assert (top[-1] < top[0]).all() and (bottom[-1] > bottom[0]).all()  # and it does diffuse
    assert report["invariants"]["mass_drift_relative"] < 1e-13


def _energy_and_divergence(states: np.ndarray, n: int, length: float):
    """½·mean(u² + v²) and the MAC divergence (u_{i+1,j} − u_{i,j} + v_{i,j+1} − v_{i,j})/h per saved state."""
    h = length / n
    u, v = states[:, :, 0], states[:, :, 1]
    energy = 0.5 * (u**2 + v**2).mean(axis=(2, 3))
    div = (np.roll(u, -1, axis=2) - u + np.roll(v, -1, axis=3) - v) / h
    return energy, np.abs(div).max(axis=(2, 3))


def test_taylor_green_energy_decays_at_the_exact_rate_with_the_turbulence_solver(tmp_path):
    """ns-2d-turbulence's scheme (coupled saddle point, GMRES(8), rtol 1e-5, float32) on the Taylor–Green
    vortex: its energy decays as E(0)·exp(−4νk²t). Upwinding only adds dissipation, first order in h: the
    energy lies below the exact curve by an amount that halves with the grid (0.126 at 12², 0.070 at 24²)."""
    turbulence = get_simulation("ns-2d-turbulence").defaults
    over = ["physics.method=coupled", "dtype=float32", *(f"solver.{k}={turbulence['solver'][k]}"
                                                         for k in ("method", "restart", "rtol"))]
    excess = {}
    for n in (12, 24):
        report = simulate("taylor-green", steps=n // 2, out=tmp_path / f"n{n}", progress=False, animate=False,
                          overrides=over + [f"grid.n={n}", f"physics.dt={0.8 / n}"])
        nu, length = report["config"]["physics"]["nu"], report["config"]["grid"]["extent"]
        with h5py.File(tmp_path / f"n{n}" / "trajectory.h5", "r") as f:
            energy, _ = _energy_and_divergence(np.asarray(f["states"], dtype=np.float64), n, length)
            t = np.asarray(f["times"])
        k = 2 * math.pi / length
        assert energy[0, 0] == pytest.approx(0.25, rel=1e-6)  # ½·(U²/4 + U²/4), U = 1
        exact = 0.25 * np.exp(-4 * nu * k * k * t)
        gap = exact - energy[:, 0]
        assert (gap[1:] > 0).all()  # never above the exact energy
        excess[n] = gap[-1] / exact[-1]
    assert excess[24] < excess[12] / 1.6 and excess[24] < 0.1


def test_turbulence_invariants_are_what_the_trajectory_holds_and_the_tolerance_allows(tmp_path):
    """The reported energies and divergence recomputed from the stored states; the continuity rows of
    the coupled system are −Δt·D w, so a solve to ‖r‖ ≤ rtol‖(uⁿ, 0)‖ leaves |D w| ≤ rtol‖uⁿ‖₂/Δt."""
    n = 12
    report = simulate("ns-2d-turbulence", steps=3, overrides=[f"grid.n={n}", "save_every=1"], out=tmp_path,
                      progress=False, animate=False)
    cfg, inv = report["config"], report["invariants"]
    with h5py.File(tmp_path / "trajectory.h5", "r") as f:
        states = np.asarray(f["states"], dtype=np.float64)
    energy, divergence = _energy_and_divergence(states, n, cfg["grid"]["extent"])
    assert energy[0, 0] == pytest.approx(0.5 * cfg["init"]["rms_velocity"] ** 2, rel=1e-5)
    assert inv["kinetic_energy_initial"] == pytest.approx(energy[0, 0], rel=1e-5)
    assert inv["kinetic_energy_final"] == pytest.approx(energy[-1, 0], rel=1e-5)
    assert inv["max_abs_divergence_max"] == pytest.approx(divergence.max(), rel=1e-3)
    assert (np.diff(energy[:, 0]) < 0).all()
    norm = np.sqrt((states[:-1, 0] ** 2).sum(axis=(1, 2, 3)))  # ‖uⁿ‖₂ of the step's right-hand side
    assert (divergence[1:, 0] <= cfg["solver"]["rtol"] * norm / cfg["physics"]["dt"]).all()


def _taylor_green_error(tmp_path, n: int, dt: float, steps: int, nu: float) -> float:
    report = simulate("taylor-green", steps=steps, out=tmp_path / f"n{n}", progress=False, animate=False,
                      overrides=[f"grid.n={n}", f"physics.dt={dt}", f"physics.nu={nu}"])
    # recompute the error from the stored final state and the textbook vortex
    length = report["config"]["grid"]["extent"]
    with h5py.File(tmp_path / f"n{n}" / "trajectory.h5", "r") as f:
        u, v = np.asarray(f["states"])[-1, 0]
        t = float(np.asarray(f["times"])[-1])
    h, k = length / n, 2 * math.pi / length
    nodes, centres = np.arange(n) * h, (np.arange(n) + 0.5) * h
    decay = math.exp(-2 * nu * k * k * t)
    u_exact = np.sin(k * nodes)[:, None] * np.cos(k * centres)[None, :] * decay
    v_exact = -np.cos(k * centres)[:, None] * np.sin(k * nodes)[None, :] * decay
    err = math.sqrt(((u - u_exact) ** 2).sum() + ((v - v_exact) ** 2).sum())
    err /= math.sqrt((u_exact**2).sum() + (v_exact**2).sum())
    reported = report["invariants"]["velocity_error_rel_l2_final"]
    assert reported == pytest.approx(err, rel=1e-6)
    assert report["invariants"]["max_abs_divergence_max"] < 1e-9
    return reported


def test_taylor_green_error_is_small_and_falls_with_refinement(tmp_path):
    # Δt ∝ h and the same final time t = 0.4: the scheme is first order in both, so the error
    # should roughly halve
    errors = {n: _taylor_green_error(tmp_path, n, dt=0.8 / n, steps=n // 2, nu=0.1) for n in (16, 32)}
    print(f"Taylor–Green relative L2 errors {errors}, observed order {math.log2(errors[16] / errors[32]):.2f}")
    assert errors[32] < errors[16] / 1.6
    assert errors[32] < 0.05


def test_burgers_conserves_mass_and_navier_stokes_stays_divergence_free(tmp_path):
    burgers = simulate("burgers-1d", steps=3, overrides=TINY["burgers-1d"], out=tmp_path / "b", progress=False)
    inv = burgers["invariants"]
    assert inv["mass_initial"] == pytest.approx(0.5, rel=1e-12)  # the offset: the sine modes have zero mean
    assert inv["mass_drift_relative"] < 1e-12
    projection = simulate("ns-2d-projection", steps=3, overrides=TINY["ns-2d-projection"], out=tmp_path / "p",
                          progress=False, animate=False)["invariants"]
    # D(w − Gφ) is the pressure solve's residual: the projected field is as divergence-free as float32
    # holds the initial one (1.9e-6 for |u| ~ 3, h = 1/12), not merely below a loose bound
    assert projection["max_abs_divergence_max"] <= 2 * projection["max_abs_divergence_initial"] < 1e-5
    assert projection["kinetic_energy_final"] < projection["kinetic_energy_initial"]
    double = simulate("ns-2d-projection", steps=3, overrides=TINY["ns-2d-projection"] + ["dtype=float64"],
                      out=tmp_path / "p64", progress=False, animate=False)["invariants"]
    assert double["max_abs_divergence_max"] < 1e-12


def test_solves_that_do_not_converge_are_reported_per_step_and_can_stop_the_run(tmp_path):
    # `simulate heat-2d solver.max_iters=1` used to exit 0 with no word about the unconverged solves
    ok = simulate("heat-2d", steps=3, overrides=TINY["heat-2d"], out=tmp_path / "ok", progress=False, animate=False)
    assert ok["failures"]["ok"] and ok["failures"]["per_step"] == []
    with pytest.warns(UserWarning, match=r"heat-2d: linear solves did not converge in 3 step\(s\)"):
        report = simulate("heat-2d", steps=3, overrides=TINY["heat-2d"] + ["solver.max_iters=1"],
                          out=tmp_path / "bad", progress=False, animate=False)
    fail = json.loads((tmp_path / "bad" / "report.json").read_text())["failures"]
    assert fail == report["failures"] and not fail["ok"] and fail["steps_not_converged"] == 3
    assert [(f["step"], f["kind"]) for f in fail["per_step"]] == [(1, "not converged"), (2, "not converged"),
                                                                 (3, "not converged")]
    assert "cg: 1 solve(s) missed the tolerance" in fail["per_step"][0]["detail"]
    md = (tmp_path / "bad" / "report.md").read_text()
    assert "## Failures" in md and "linear solves did not converge in 3 step(s)" in md
    # run.stop_on_failure=true stops at the first failed step, after writing what it has
    with pytest.raises(FloatingPointError, match=r"stopped at step 1 \(run.stop_on_failure=true\)"):
        simulate("heat-2d", steps=3, overrides=TINY["heat-2d"] + ["solver.max_iters=1", "run.stop_on_failure=true"],
                 out=tmp_path / "stop", progress=False, animate=False)
    stopped = json.loads((tmp_path / "stop" / "report.json").read_text())
    assert stopped["steps"] == 1 and stopped["failures"]["stopped_at_step"] == 1
    with h5py.File(tmp_path / "stop" / "trajectory.h5", "r") as f:
        np.testing.assert_array_equal(np.asarray(f["steps"]), [0, 1])


def test_a_blown_up_burgers_run_is_reported_and_can_stop_the_run(tmp_path):
    # `simulate burgers-1d physics.nu=1e-9 physics.dt=10` used to exit 0 with max |u| 66x the initial
    over = ["physics.nu=1e-9", "physics.dt=10", "grid.n=64"]
    with pytest.warns(UserWarning, match=r"burgers-1d: the solution blew up \(max \|state\| > 10× the initial\)"):
        report = simulate("burgers-1d", steps=4, overrides=over, out=tmp_path / "a", progress=False, animate=False)
    fail = report["failures"]
    assert fail["steps_blown_up"] >= 1 and not fail["ok"] and fail["stopped_at_step"] is None
    first = next(f for f in fail["per_step"] if f["kind"] == "blow-up")
    assert report["invariants"]["max_abs_u_max"] > 10 * report["invariants"]["max_abs_u_initial"]
    assert "× the initial" in first["detail"]
    with pytest.raises(FloatingPointError, match=f"stopped at step {first['step']}"):
        simulate("burgers-1d", steps=4, overrides=over + ["run.stop_on_failure=true"], out=tmp_path / "b",
                 progress=False, animate=False)
    assert json.loads((tmp_path / "b" / "report.json").read_text())["steps"] == first["step"]
    # the threshold is a key: a generous one accepts the same run
    report = simulate("burgers-1d", steps=4, overrides=over + ["run.blowup_factor=1e6"], out=tmp_path / "c",
                      progress=False, animate=False)
    assert report["failures"]["ok"]


def test_the_terminal_gets_one_summary_line(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default")
    done = subprocess.run([sys.executable, "-m", "pdeaccel.cli", "simulate", "heat-2d", "--quiet", "--no-animation",
                           "--steps", "2", "--out", str(tmp_path / "r"), "grid.n=10", "solver.max_iters=1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: heat-2d: linear solves did not converge in 2 step(s)"), \
        done.stderr
    done = subprocess.run([sys.executable, "-m", "pdeaccel.cli", "simulate", "heat-2d", "--quiet", "--no-animation",
                           "--steps", "2", "--out", str(tmp_path / "s"), "grid.n=10", "solver.max_iters=1",
                           "run.stop_on_failure=true"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 3 and "numerical failure" in done.stderr and "stopped at step 1" in done.stderr
    assert (tmp_path / "s" / "report.md").exists()


@pytest.mark.parametrize("nan_at", [1, 2])
def test_a_non_finite_state_ends_the_run_with_a_report(nan_at, tmp_path, monkeypatch):
    import dataclasses

    sim = get_simulation("heat-1d")
    real_build = sim.build

    def build(cfg, monitor):
        setup = real_build(cfg, monitor)
        count = {"k": 0}

        def step(u):
            count["k"] += 1
            out = setup.step(u)
            return out * float("nan") if count["k"] == nan_at else out
        return dataclasses.replace(setup, step=step)

    monkeypatch.setattr(sim, "build", build)
    with pytest.raises(FloatingPointError, match=f"NaN/inf at step {nan_at}"):
        simulate("heat-1d", steps=4, overrides=TINY["heat-1d"], out=tmp_path / "r", progress=False)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["steps"] == nan_at - 1 and report["failures"]["non_finite_step"] == nan_at
    with h5py.File(tmp_path / "r" / "trajectory.h5", "r") as f:
        assert np.isfinite(np.asarray(f["states"])).all()
