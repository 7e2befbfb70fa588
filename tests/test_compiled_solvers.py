"""The compiled solver path (``compile=True``): same results as eager, no recompilation when only
the budget K changes, eager fallback when compilation fails, the "auto" rule.

Compilation is slow (seconds per graph), so every test here uses tiny 1D problems, and the tests
share compiled graphs through the process-wide cache (same operator code, shapes and settings).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from pdeaccel import Grid, LinearOperator, SolverConfig, solve
from pdeaccel.linalg import _compiled
from pdeaccel.physics import HeatStepper

GRID = Grid(12, extent=1.0, boundary="dirichlet")
BATCH = 2


def _nu() -> torch.Tensor:
    # a learnable diffusivity: a graph input of the compiled loop (one graph whatever its value)
    return torch.tensor(0.5, dtype=torch.float64, requires_grad=True)


def _operator(nu: torch.Tensor | None = None) -> LinearOperator:
    """I − ν Δ on GRID (the implicit heat step's matrix): symmetric positive definite, diagonally
    dominant; a new closure at every call, as the stepper builds it at every step. The tests
    share its compiled loops (same code, captured tensor, shapes)."""
    return HeatStepper(GRID, nu=_nu() if nu is None else nu, dt=1.0).operator(torch.float64)


def _rhs(seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    return torch.randn((batch, 1) + GRID.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


CASES = [
    dict(method="cg", max_iters=21),  # 16 + 4 + 1: every chunk size, and a stop inside a chunk
    dict(method="jacobi", max_iters=21),
    dict(method="bicgstab", max_iters=5),
    dict(method="gmres", max_iters=2, restart=2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["method"])
def test_compiled_matches_eager_forward_and_implicit_gradient(case):
    b, w = _rhs(0), _rhs(1)
    for rtol in (0.0, 1e-3):  # exactly K, and the convergence test (early stop per sample, checked between chunks)
        kw = dict(case, rtol=rtol)
        ops = _operator(), _operator()  # built with grad enabled, as a training step does
        with torch.no_grad():
            eager = solve(ops[0], b, compile=False, **kw)
            compiled = solve(ops[1], b, compile=True, **kw)
        torch.testing.assert_close(compiled.solution, eager.solution, rtol=1e-12, atol=1e-12)
        assert torch.equal(compiled.iterations, eager.iterations)
        torch.testing.assert_close(compiled.residual_norm, eager.residual_norm, rtol=1e-10, atol=1e-12)

    # implicit gradients reach b and a tensor the operator closes over; the adjoint solve is compiled too
    grads = {}
    for flag in (False, True):
        nu = _nu()
        bb = b.clone().requires_grad_(True)
        result = solve(_operator(nu), bb, compile=flag, grad="implicit", rtol=0.0, **case)
        grads[flag] = torch.autograd.grad((result.solution * w).sum(), (bb, nu))
        assert result.backward_iterations is not None
    for g_compiled, g_eager in zip(grads[True], grads[False]):
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-10, atol=1e-12)


def test_changing_the_budget_never_recompiles_a_new_shape_compiles_once():
    heat = HeatStepper(GRID, nu=_nu(), dt=1.0)
    start = _compiled.compile_stats()
    u = _rhs(2)
    solver = SolverConfig(method="cg", max_iters=1, grad="implicit", rtol=0.0, compile=True)
    # compiles (or reuses) this shape's loops: a training step's (the operator closes over ν, which
    # requires grad) and a validation step's under no_grad (ν seen without grad: a variant of its own)
    x = u.clone().requires_grad_(True)
    torch.autograd.grad(heat(x, solver.with_budget(3)).sum(), x)
    with torch.no_grad():
        heat(u, solver.with_budget(3))
    before = _compiled.compile_stats()
    for K in (1, 7, 50, 2, 20):  # PRDP changes K every few epochs; the stepper builds a new closure each step
        x = u.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(heat(x, solver.with_budget(K)).sum(), x)
        with torch.no_grad():
            heat(u, solver.with_budget(K))
    after = _compiled.compile_stats()
    assert after.compiles == before.compiles, "a budget change recompiled"
    assert after.compiled_solves - before.compiled_solves == 15  # forward, adjoint, no-grad forward per K
    # the result is the budget's: K = 20 against eager
    eager = heat(u, SolverConfig(method="cg", max_iters=20, rtol=0.0, compile=False))
    with torch.no_grad():
        torch.testing.assert_close(heat(u, solver.with_budget(20)), eager, rtol=1e-12, atol=1e-12)
    # a new batch size is a new shape: one compilation, then reused
    with torch.no_grad():
        heat(_rhs(3, batch=3), solver.with_budget(5))
        heat(_rhs(4, batch=3), solver.with_budget(9))
    # (one graph per chunk size: every size compiles with the shape's first solve)
    assert _compiled.compile_stats().compiles == after.compiles + len(_compiled.CHUNKS)
    assert before.compiles - start.compiles <= 2 * len(_compiled.CHUNKS)


def test_any_budget_is_a_greedy_sum_of_the_compiled_chunk_sizes():
    assert _compiled.chunk_plan(25) == [16, 4, 4, 1]
    assert _compiled.chunk_plan(0) == []
    for K in range(0, 200):
        plan = _compiled.chunk_plan(K)
        assert sum(plan) == K and plan == sorted(plan, reverse=True) and len(plan) <= K // 16 + 6
    assert _compiled.chunk_plan(5, _compiled.chunk_sizes("gmres")) == [1] * 5


def test_failed_compilation_warns_once_and_solves_eagerly(monkeypatch):
    def broken_compile(fn):
        def run(*args, **kw):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(_compiled, "_compile", broken_compile)
    monkeypatch.setattr(_compiled, "_CACHE", {})
    b = _rhs(5)
    with torch.no_grad():
        expected = solve(_operator(), b, method="cg", max_iters=5, rtol=0.0, compile=False).solution
        with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
            first = solve(_operator(), b, method="cg", max_iters=5, rtol=0.0, compile=True).solution
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # only the first failure of a key warns
            second = solve(_operator(), b, method="cg", max_iters=5, rtol=0.0, compile=True).solution
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_auto_solves_eagerly_until_the_compile_time_would_be_repaid(monkeypatch):
    monkeypatch.setattr(_compiled, "_CACHE", {})
    calls = []

    def counting_compile(fn):
        calls.append(fn)
        return fn  # the chunks run uncompiled: only the decision is tested

    monkeypatch.setattr(_compiled, "_compile", counting_compile)
    monkeypatch.setitem(_compiled.COMPILE_SECONDS, "cg", 0.0045)  # a few solves' worth, not thousands
    cost = _compiled.compile_cost_estimate("cg")
    per_solve = _compiled.saving_estimate("cg", 10)
    needed = int(-(-cost // per_solve))  # eager solves until the estimated savings reach the cost
    assert needed == 7
    b = _rhs(6)
    with torch.no_grad():
        for _ in range(needed):
            solve(_operator(), b, method="cg", max_iters=10, rtol=0.0, compile="auto")
        assert calls == []
        x = solve(_operator(), b, method="cg", max_iters=10, rtol=0.0, compile="auto").solution
    assert len(calls) == len(_compiled.chunk_sizes("cg"))  # the key's chunks, built once
    torch.testing.assert_close(x, solve(_operator(), b, method="cg", max_iters=10, rtol=0.0, compile=False).solution)


def test_compile_setting_is_checked():
    with pytest.raises(ValueError, match="compile must be"):
        SolverConfig(compile="yes")
    with pytest.raises(ValueError, match="compile must be"):
        solve(_operator(), _rhs(), max_iters=2, compile=1)
    assert SolverConfig().compile is False  # eager by default (see the README's rule)
    assert SolverConfig(compile=False).solve(_operator(), _rhs(), None).solution.shape == (BATCH, 1, 12)
