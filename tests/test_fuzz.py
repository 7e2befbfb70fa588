"""Property-based fuzzing of the public entry points with malformed configs and tensors.

Every call either succeeds or raises ValueError/TypeError (ConfigError is a ValueError) with a
message, raised by pdeaccel's own checks — never a traceback from inside torch, never a hang
(sizes stay small, budgets bounded, so a hang would show as a missed deadline). A call that
succeeds must return finite numbers (no NaN/inf in any tensor, array or pdeaccel object it hands
back) of the shape the test expects: returning NaN is not "accepted".
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pdeaccel
from pdeaccel.config import ConfigError, apply_overrides, flatten
from pdeaccel.experiments.registry import get_experiment, list_experiments, prdp_config, validate_common
from pdeaccel.experiments.runner import resolve_config
from pdeaccel.grid import BOUNDARY_KINDS, Grid
from pdeaccel.linalg import METHODS, LinearOperator, SolverConfig, SolveResult, solve
from pdeaccel.physics import BurgersStepper, HeatStepper, from_mask, lid_driven_cavity
from pdeaccel.physics.flow import channel
from pdeaccel.prdp import PRDPConfig, make_schedule

PACKAGE = str(Path(pdeaccel.__file__).parent)
# the trainer (and conftest) flush subnormals to zero, which hypothesis must know not to generate them
floats = functools.partial(st.floats, allow_subnormal=False)
# benchmarks/reliability.py raises the example count and collects the tallies of `outcome`
# the deadline is generous because the machine is shared (with 10 s, one benchmark run on a fully
# loaded CPU had a failure that four idle reruns did not reproduce); a hang still exceeds it
FUZZ = settings(max_examples=int(os.environ.get("PDEACCEL_FUZZ_EXAMPLES", "60")), deadline=60_000,
                suppress_health_check=[HealthCheck.too_slow])
TALLY: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _write_tally():
    yield
    path = os.environ.get("PDEACCEL_FUZZ_STATS")
    if path:
        Path(path).write_text(json.dumps({f"{test}|{kind}": n for (test, kind), n in sorted(TALLY.items())}))


def non_finite(value, where: str = "result", depth: int = 0) -> list[str]:
    """Where ``value`` holds NaN/inf: tensors and arrays anywhere in lists, tuples and dicts, and the
    numeric attributes (floats too) of pdeaccel objects, two levels deep."""
    if isinstance(value, torch.Tensor):
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            return [where]
        return []
    if isinstance(value, np.ndarray):
        return [where] if value.dtype.kind in "fc" and not np.isfinite(value).all() else []
    if depth > 2:
        return []
    if isinstance(value, (list, tuple)):
        return [w for i, v in enumerate(value) for w in non_finite(v, f"{where}[{i}]", depth + 1)]
    if isinstance(value, dict):
        return [w for k, v in value.items() for w in non_finite(v, f"{where}[{k!r}]", depth + 1)]
    if type(value).__module__.startswith("pdeaccel") and hasattr(value, "__dict__"):
        out = []
        for name, v in vars(value).items():
            if isinstance(v, float) and not math.isfinite(v):
                out.append(f"{where}.{name}")
            elif isinstance(v, (tuple, list)) and any(isinstance(x, float) and not math.isfinite(x) for x in v):
                out.append(f"{where}.{name}")
            else:
                out += non_finite(v, f"{where}.{name}", depth + 1)
        return out
    return []


def outcome(call):
    """Run ``call``; a failure must be a clear ValueError/TypeError raised by pdeaccel's own code, and a
    success must hand back finite numbers."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
    try:
        result = call()
    except (ValueError, TypeError) as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        assert frame.filename.startswith(PACKAGE), (
            f"{type(exc).__name__}({exc}) raised inside {frame.filename}:{frame.lineno}, not by a pdeaccel check")
        TALLY[test, "rejected with a clear error"] += 1
        return exc
    bad = non_finite(result)
    assert not bad, f"accepted, but returned NaN/inf in {', '.join(bad[:5])}"
    TALLY[test, "accepted"] += 1
    return result


junk = st.one_of(st.none(), st.booleans(), st.text(max_size=6), st.lists(st.integers(-2, 3), max_size=3),
                 st.just(object()), st.just(torch.ones(2)))
numbers = st.one_of(floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**12),
                    st.sampled_from([0.0, -0.0, 1e-320, 1e308, -1e308]))
values = st.one_of(numbers, junk)


def mostly(valid, bad=values, weight: int = 4):
    """``valid`` about ``weight`` times in ``weight + 1`` draws, else ``bad``: with several arguments
    drawn this way, whole calls are often valid and reach the code behind the argument checks."""
    return st.sampled_from([False] * weight + [True]).flatmap(lambda use_bad: bad if use_bad else valid)


@st.composite
def tensors(draw, shape=None):
    """Small tensors, sometimes of a wrong dtype, with NaN/inf/huge entries now and then."""
    if shape is None:
        shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=4))
    dtype = draw(st.sampled_from([torch.float64, torch.float64, torch.float32, torch.int64, torch.bool,
                                  torch.complex64]))
    n = int(np.prod(shape)) if shape else 1
    entries = draw(st.lists(floats(allow_nan=True, allow_infinity=True, width=32), min_size=n, max_size=n))
    t = torch.tensor(entries, dtype=torch.float64).reshape(shape)
    return t.to(dtype) if dtype != torch.bool else t > 0


@st.composite
def fields(draw, shape):
    """Finite float64 fields of ``shape`` (batch first), values up to 1e3."""
    n = int(np.prod(shape))
    return torch.tensor(draw(st.lists(floats(-1e3, 1e3), min_size=n, max_size=n)), dtype=torch.float64).reshape(shape)


bad_tensors = st.one_of(tensors(), junk)


# ------------------------------------------------------------------------------ linear solve
def _operator(kind: str, diag: torch.Tensor):
    if kind == "diagonal":
        return LinearOperator(lambda x: diag * x, symmetric=True, diagonal=diag)
    if kind == "callable":
        return lambda x: 2.0 * x
    if kind == "wrong shape":
        return lambda x: x[..., :1]
    return 3  # not an operator at all


@FUZZ
@given(b=mostly(fields((2, 3)), bad_tensors), op=mostly(st.just("diagonal"), st.sampled_from(["callable", "wrong shape",
                                                                                               "junk"])),
       diag=st.lists(mostly(floats(0.5, 3), floats(-3, 3)), min_size=3, max_size=3),
       method=mostly(st.sampled_from(METHODS), junk), max_iters=mostly(st.none() | st.integers(0, 60)),
       rtol=mostly(floats(1e-8, 1e-3), values | st.just(0.0)), restart=mostly(st.integers(1, 5)), omega=mostly(floats(0.1, 1.9)),
       grad=mostly(st.sampled_from(["implicit", "unrolled"]), junk),
       preconditioner=mostly(st.sampled_from([None, "jacobi"]), junk), x0=mostly(st.none(), bad_tensors))
def test_solve(b, op, diag, method, max_iters, rtol, restart, omega, grad, preconditioner, x0):
    # "until the tolerance" on an indefinite or near-singular matrix legitimately runs the
    # 20000-iteration safety cap: seconds, not a hang, but too slow for a fuzz example
    assume(max_iters is not None or all(d >= 0.5 for d in diag))
    A = _operator(op, torch.tensor(diag, dtype=torch.float64))
    result = outcome(lambda: solve(A, b, method=method, max_iters=max_iters, rtol=rtol, restart=restart,
                                   omega=omega, grad=grad, preconditioner=preconditioner, x0=x0))
    if isinstance(result, SolveResult):
        assert result.solution.shape == b.shape and result.iterations.shape == (b.shape[0],)


@FUZZ
@given(kwargs=st.fixed_dictionaries({}, optional={
    "method": mostly(st.sampled_from(METHODS), junk), "max_iters": mostly(st.integers(0, 50)),
    "rtol": mostly(floats(0, 1)), "atol": mostly(floats(0, 1)), "grad": mostly(st.just("unrolled"), junk),
    "restart": mostly(st.integers(1, 9)), "omega": mostly(floats(0.1, 1.9)), "preconditioner": junk,
    "adjoint_max_iters": mostly(st.integers(0, 9)), "monitor": junk}))
def test_solver_config(kwargs):
    cfg = outcome(lambda: SolverConfig(**kwargs))
    if isinstance(cfg, SolverConfig):  # what was accepted must also be accepted by solve itself
        b = torch.ones(1, 3, dtype=torch.float64)
        A = LinearOperator(lambda x: 2 * x, symmetric=True, diagonal=torch.full((3,), 2.0, dtype=torch.float64))
        result = cfg.replace(max_iters=min(cfg.max_iters or 5, 5), monitor=None).solve(A, b)
        assert result.solution.shape == b.shape


# ------------------------------------------------------------------------------ grid and steppers
@FUZZ
@given(shape=mostly(st.integers(1, 10**12) | st.lists(st.integers(1, 10**6), min_size=1, max_size=3),
                    st.integers(-3, 0) | st.lists(st.integers(-2, 10**6), max_size=5) | numbers | junk),
       extent=mostly(floats(1e-6, 1e6) | st.lists(floats(1e-6, 1e6), min_size=1, max_size=3),
                     numbers | st.lists(numbers, max_size=4) | junk),
       boundary=mostly(st.sampled_from(BOUNDARY_KINDS), st.lists(st.sampled_from(BOUNDARY_KINDS + ("wall",)),
                                                                 max_size=4) | junk))
def test_grid(shape, extent, boundary):
    grid = outcome(lambda: Grid(shape, extent=extent, boundary=boundary))
    if isinstance(grid, Grid):
        assert 1 <= grid.ndim <= 3 and all(h > 0 for h in grid.spacing)


def small_grids(boundaries=BOUNDARY_KINDS):
    return st.builds(lambda n, ndim, b: Grid((n,) * ndim, boundary=b), st.integers(1, 6), st.integers(1, 2),
                     st.sampled_from(boundaries))


def states(grid_strategy):
    """(grid, u): u mostly a valid field on the grid, else a malformed tensor or junk."""
    return grid_strategy.flatmap(lambda g: st.tuples(st.just(g), mostly(
        st.integers(1, 2).flatmap(lambda b: fields((b, 1) + g.shape)), bad_tensors)))


@FUZZ
@given(grid_u=states(small_grids()), nu=mostly(floats(1e-4, 1.0)), dt=mostly(floats(1e-3, 1.0)),
       scheme=mostly(st.sampled_from(["implicit_euler", "crank_nicolson"]), junk), k=st.integers(0, 30))
def test_heat_stepper(grid_u, nu, dt, scheme, k):
    grid, u = grid_u
    stepper = outcome(lambda: HeatStepper(grid, nu=nu, dt=dt, scheme=scheme))
    if isinstance(stepper, HeatStepper):
        out = outcome(lambda: stepper(u, SolverConfig(method="cg", max_iters=k)))
        if isinstance(out, torch.Tensor):
            assert out.shape == u.shape


@FUZZ
@given(grid_u=states(mostly(small_grids(("periodic",)), small_grids())), nu=mostly(floats(1e-3, 1.0)),
       dt=mostly(floats(1e-3, 0.1)), picard=mostly(st.integers(1, 3)),
       solver=mostly(st.just(SolverConfig(method="gmres", max_iters=3, restart=2)), junk))
def test_burgers_stepper(grid_u, nu, dt, picard, solver):
    grid, u = grid_u
    stepper = outcome(lambda: BurgersStepper(grid, nu=nu, dt=dt, picard_iterations=picard))
    if isinstance(stepper, BurgersStepper):
        out = outcome(lambda: stepper(u, solver))
        if isinstance(out, torch.Tensor):
            assert out.shape == u.shape


@FUZZ
@given(grid=small_grids(), batch=st.integers(1, 2), scale=st.sampled_from([1.0, 1e3, math.nan, math.inf]))
def test_stepper_with_non_finite_state_says_so(grid, batch, scale):
    """A diverged state reaching a stepper is reported as such (the trainer's guard relies on it)."""
    stepper = HeatStepper(grid, nu=0.01, dt=1.0)
    u = torch.full((batch, 1) + grid.shape, scale, dtype=torch.float64)
    out = outcome(lambda: stepper(u, SolverConfig(method="cg", max_iters=5)))
    assert isinstance(out, pdeaccel.linalg.NonFiniteError) == (not math.isfinite(scale))
    if not isinstance(out, Exception):
        assert out.shape == u.shape


@pytest.mark.xfail(strict=True, reason="library bug: CG's inner products overflow at |u| ~ 1e300; the step "
                                       "returns NaN (n = 1) or the unchanged state reported converged with an "
                                       "infinite residual (n = 3) instead of an error or a finite step")
@pytest.mark.parametrize("n", [1, 3])
def test_stepper_with_a_finite_but_huge_state_fails_clearly_or_steps(n):
    grid = Grid(n, boundary="dirichlet")
    u = torch.full((1, 1, n), 1e300, dtype=torch.float64)
    out = outcome(lambda: HeatStepper(grid, nu=0.01, dt=1.0)(u, SolverConfig(method="cg", max_iters=5)))
    if not isinstance(out, Exception):
        # Dirichlet walls pull the edge values down: the state cannot come back unchanged
        assert float(out[0, 0, 0]) < 1e300


# ------------------------------------------------------------------------------ PRDP and schedules
prdp_fields = st.fixed_dictionaries({}, optional={
    "k0": mostly(st.integers(1, 5)), "delta_k": mostly(st.integers(1, 5)), "k_max": mostly(st.integers(5, 100)),
    "tau_step": mostly(floats(0.01, 1.0)), "tau_stop": mostly(floats(0.01, 1.0)),
    "ema_window": mostly(st.none() | st.integers(1, 9)), "lookback": mostly(st.integers(2, 5)),
    "initial_checkpoint": mostly(st.none() | floats(1e-3, 1e3)),
    "metric": mostly(st.sampled_from(["validation", "train_loss"]), junk)})


@FUZZ
@given(kwargs=prdp_fields)
def test_prdp_config(kwargs):
    cfg = outcome(lambda: PRDPConfig(**kwargs))
    if isinstance(cfg, PRDPConfig):
        assert 1 <= cfg.k0 <= cfg.k_max and 0 < cfg.tau_step <= 1


@FUZZ
@given(spec=mostly(st.sampled_from(["prdp", "converged", "fixed:3", "linear:1:9", "converged:4", " Fixed:2 "]),
                   st.text(alphabet="prdfixelnacovg:0123456789- ", max_size=16)
                   | st.sampled_from(["fixed:-1", "fixed:0", "linear:5:2", "converged:0", "fixed:1e3", "fixed:",
                                      "linear::", "linear:1:99999999999"]) | junk),
       k_converged=mostly(st.none() | st.integers(1, 50)), epochs=mostly(st.integers(1, 50)))
def test_make_schedule(spec, k_converged, epochs):
    sched = outcome(lambda: make_schedule(spec, prdp=PRDPConfig(), k_converged=k_converged, epochs=epochs))
    if not isinstance(sched, Exception):
        assert sched.budget is None or (isinstance(sched.budget, int) and sched.budget >= 1)


# ------------------------------------------------------------------------------ configs
BASE = {"train": {"epochs": 10, "lr": 1e-3, "progress": True}, "solver": {"method": "cg"}, "net": {"sizes": [1, 2]},
        "opt": {"maybe": None}}
keys = mostly(st.sampled_from(sorted(flatten(BASE))),
              st.sampled_from(["train", "train.", ".epochs", "", "train.epochs.x", "trian.epochs"]) | st.text(max_size=10))
texts = st.one_of(st.text(max_size=12), st.integers().map(str), floats().map(str),
                  st.sampled_from(["nan", "inf", "-inf", "1e999", "[1,", "{a: [}", "'", "99999999999999999999999",
                                   "[1, 2, 3]", "null", "0x10", "true", "off"]))


@FUZZ
@given(items=st.lists(mostly(st.builds(lambda k, v: f"{k}={v}", keys, texts), st.text(max_size=10)), max_size=4))
def test_apply_overrides(items):
    out = outcome(lambda: apply_overrides(BASE, items))
    if isinstance(out, dict):
        assert set(flatten(out)) == set(flatten(BASE))


EXPERIMENTS = [e.name for e in list_experiments()]


@FUZZ
@given(name=st.sampled_from(EXPERIMENTS), data=st.data())
def test_experiment_config_validation(name, data):
    """train_run's start-up checks (overrides, every key's type and range, PRDP keys) on random values."""
    known = sorted(flatten(get_experiment(name).config()))
    overrides = data.draw(st.lists(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(known), texts | numbers.map(str)),
                                   min_size=1, max_size=3))
    cfg = outcome(lambda: resolve_config(name, overrides=overrides))
    if isinstance(cfg, Exception):
        assert isinstance(cfg, ConfigError)
        return
    if "prdp" in cfg:
        outcome(lambda: validate_common(cfg))
        outcome(lambda: prdp_config(cfg))
        outcome(lambda: make_schedule(data.draw(st.sampled_from(["prdp", "fixed:3", "linear:1:4"])),
                                      prdp=PRDPConfig(), epochs=cfg["train"]["epochs"]))


# ------------------------------------------------------------------------------ flow environments
@FUZZ
@given(n=mostly(st.integers(2, 5), st.integers(-2, 1) | st.lists(st.integers(-1, 5), max_size=4) | junk),
       ndim=mostly(st.just(2), st.integers(0, 4) | junk), length=mostly(floats(0.1, 10)),
       lid_speed=mostly(floats(-2, 2)), reynolds=mostly(floats(1, 1e4)), dt=mostly(st.none() | floats(1e-3, 1)))
def test_lid_driven_cavity(n, ndim, length, lid_speed, reynolds, dt):
    env = outcome(lambda: lid_driven_cavity(n, ndim=ndim, length=length, lid_speed=lid_speed, reynolds=reynolds, dt=dt))
    if not isinstance(env, Exception):
        assert env.grid.ndim == ndim


@FUZZ
@given(length=mostly(floats(0.5, 3)), height=mostly(floats(0.5, 1)), resolution=mostly(st.integers(2, 6),
                                                                                        st.integers(-2, 1) | junk),
       ndim=mostly(st.just(2), st.integers(1, 4) | junk), inflow_speed=mostly(floats(-2, 2)),
       profile=mostly(st.sampled_from(["parabolic", "uniform"]), junk),
       outflow=mostly(st.sampled_from(["open", "prescribed"]), junk), mu=mostly(floats(1e-3, 1)))
def test_channel(length, height, resolution, ndim, inflow_speed, profile, outflow, mu):
    # a fine resolution of a long channel is a legitimate, large grid: keep to the ones that fit in a test
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (length, height)) \
            and isinstance(resolution, int) and not isinstance(resolution, bool) \
            and math.isfinite(length / height) and length / height * max(resolution, 1) > 64:
        return
    outcome(lambda: channel(length, height, resolution, ndim=ndim, inflow_speed=inflow_speed, profile=profile,
                            outflow=outflow, mu=mu))


masks = st.builds(lambda nx, ny, seed: (np.random.default_rng(seed).random((nx, ny)) < 0.7).astype(np.float64),
                  st.integers(2, 6), st.integers(2, 6), st.integers(0, 99))


@FUZZ
@given(mask=mostly(masks, st.builds(lambda nx, ny, seed: np.random.default_rng(seed).integers(-1, 3, (nx, ny)),
                                    st.integers(0, 5), st.integers(0, 5), st.integers(0, 9)) | tensors() | junk),
       frame=mostly(st.sampled_from(["channel", "closed", "none"]), junk), cell_size=mostly(floats(0.01, 1)))
def test_from_mask(mask, frame, cell_size):
    outcome(lambda: from_mask(mask, frame=frame, cell_size=cell_size))


def test_outcome_rejects_an_error_from_inside_torch():
    """The property above must be able to fail: a ValueError raised by torch itself does not pass."""
    with pytest.raises(AssertionError, match="not by a pdeaccel check"):
        outcome(lambda: torch.nn.Conv2d(1, 1, 3, padding_mode="bad"))  # (Normal(0, -1) stops raising once torch.compile ran)


def test_outcome_rejects_a_nan_result():
    """Nor does a call that returns NaN/inf, in a tensor of a pdeaccel object or of a tuple."""
    x = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(AssertionError, match=r"NaN/inf in result\.solution"):
        outcome(lambda: SolveResult(x * math.nan, torch.zeros(2, dtype=torch.int64), torch.zeros(2),
                                    torch.ones(2, dtype=torch.bool), "cg"))
    with pytest.raises(AssertionError, match=r"NaN/inf in result\[1\]"):
        outcome(lambda: (x, x / 0))
    assert outcome(lambda: solve(lambda v: 2 * v, x, method="cg")).solution.shape == x.shape
