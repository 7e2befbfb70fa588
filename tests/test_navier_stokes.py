"""NavierStokes2D (periodic MAC grid, coupled and projection schemes) against the Taylor–Green
vortex, exact discrete decay rates, scipy direct solves of independently assembled matrices,
dot-product adjoint tests and finite differences (gradcheck)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from pdeaccel import SolverConfig
from pdeaccel.physics.navier_stokes import (
    NavierStokes2D,
    decaying_turbulence,
    downsample_velocity,
    taylor_green,
)

TIGHT_GMRES = SolverConfig(method="gmres", restart=30, rtol=1e-12)
TIGHT_BICGSTAB = SolverConfig(method="bicgstab", rtol=1e-12)


def tight_solver(method: str) -> SolverConfig:
    return TIGHT_GMRES if method == "coupled" else TIGHT_BICGSTAB


def random_velocity(n: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 2, n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


# ------------------------------------------------------------------------------------------
# the MAC operators
# ------------------------------------------------------------------------------------------


def five_point_laplacian(p: np.ndarray, h: float) -> np.ndarray:
    return (np.roll(p, 1, 0) + np.roll(p, -1, 0) + np.roll(p, 1, 1) + np.roll(p, -1, 1) - 4 * p) / h**2


def test_divergence_of_gradient_is_the_five_point_laplacian():
    ns = NavierStokes2D(10, length=2.5)
    p = torch.randn(3, 1, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = ns.divergence(ns.gradient(p)).numpy()
    expected = np.stack([five_point_laplacian(q[0], 0.25) for q in p.numpy()])[:, None]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_divergence_and_gradient_are_negative_adjoints():
    ns = NavierStokes2D(12, length=0.7)
    w = random_velocity(12, batch=3, seed=2)
    p = torch.randn(3, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    lhs = (ns.divergence(w) * p).sum()
    rhs = -(w * ns.gradient(p)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * float(lhs.abs() + rhs.abs())


@pytest.mark.parametrize("which", ["momentum", "coupled"])
def test_explicit_transposes_pass_the_dot_product_test(which):
    ns = NavierStokes2D(9, length=1.3, nu=0.02, dt=0.07)
    op = ns.momentum_operator(random_velocity(9, seed=4)) if which == "momentum" \
        else ns.coupled_operator(random_velocity(9, seed=4))
    channels = 2 if which == "momentum" else 3
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, channels, 9, 9, dtype=torch.float64, generator=gen)
    y = torch.randn(2, channels, 9, 9, dtype=torch.float64, generator=gen)
    lhs = (op.matvec(x) * y).flatten(1).sum(1)
    rhs = (x * op.rmatvec(y)).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_momentum_diagonal_matches_the_operator():
    ns = NavierStokes2D(5, nu=0.1, dt=0.3)
    op = ns.momentum_operator(random_velocity(5, batch=1, seed=6))
    eye = torch.eye(50, dtype=torch.float64).reshape(50, 2, 5, 5)
    columns = torch.cat([op.matvec(e[None]) for e in eye]).reshape(50, 50)  # row k = A e_k
    torch.testing.assert_close(op.get_diagonal().reshape(-1), columns.diagonal(), rtol=1e-13, atol=1e-13)


def test_vorticity_converges_at_second_order_to_the_taylor_green_vorticity():
    errors = []
    for n in (8, 16, 32):
        ns = NavierStokes2D(n, length=2 * math.pi)
        velocity, _ = taylor_green(n, amplitude=1.5)
        x = torch.arange(n, dtype=torch.float64) * ns.h
        exact = 2 * 1.5 * torch.sin(x)[:, None] * torch.sin(x)[None, :]  # ω = 2Uk sin kx sin ky at corners
        errors.append(float((ns.vorticity(velocity)[0, 0] - exact).abs().max()))
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    print("vorticity errors", errors, "observed orders", orders)
    assert min(orders) > 1.9


# ------------------------------------------------------------------------------------------
# one step against scipy direct solves of independently assembled matrices
# ------------------------------------------------------------------------------------------


def assemble(u: np.ndarray, n: int, h: float, nu: float, dt: float):
    """Sparse momentum matrix M = I + Δt(A(u) − νL), gradient G and divergence D, entry by entry.

    Unknown order: u faces, v faces (row-major over (i, j)), then pressure cells."""
    m = n * n

    def idx(i, j):
        return (i % n) * n + (j % n)

    rows, cols, vals = [], [], []
    grad_rows, grad_cols, grad_vals = [], [], []
    for comp in (0, 1):
        for i in range(n):
            for j in range(n):
                r = comp * m + idx(i, j)
                if comp == 0:  # x-face (i h, (j+½)h)
                    ax = u[0, i, j]
                    ay = (u[1, (i - 1) % n, j] + u[1, i, j] + u[1, (i - 1) % n, (j + 1) % n] + u[1, i, (j + 1) % n]) / 4
                    grad_rows += [r, r]; grad_cols += [idx(i, j), idx(i - 1, j)]; grad_vals += [1 / h, -1 / h]
                else:  # y-face ((i+½)h, j h)
                    ax = (u[0, i, (j - 1) % n] + u[0, (i + 1) % n, (j - 1) % n] + u[0, i, j] + u[0, (i + 1) % n, j]) / 4
                    ay = u[1, i, j]
                    grad_rows += [r, r]; grad_cols += [idx(i, j), idx(i, j - 1)]; grad_vals += [1 / h, -1 / h]
                entries = {idx(i, j): 1.0 + dt * 4 * nu / h**2}
                for nb in (idx(i + 1, j), idx(i - 1, j), idx(i, j + 1), idx(i, j - 1)):
                    entries[nb] = entries.get(nb, 0.0) - dt * nu / h**2
                for a, up, down in ((ax, idx(i - 1, j), idx(i + 1, j)), (ay, idx(i, j - 1), idx(i, j + 1))):
                    if a > 0:  # backward difference a (w_k − w_{k−1})/h
                        entries[idx(i, j)] += dt * a / h
                        entries[up] = entries.get(up, 0.0) - dt * a / h
                    else:  # forward difference a (w_{k+1} − w_k)/h
                        entries[idx(i, j)] -= dt * a / h
                        entries[down] = entries.get(down, 0.0) + dt * a / h
                for c, v in entries.items():
                    rows.append(r); cols.append(comp * m + c); vals.append(v)
    M = sp.csr_matrix((vals, (rows, cols)), shape=(2 * m, 2 * m))
    G = sp.csr_matrix((grad_vals, (grad_rows, grad_cols)), shape=(2 * m, m))
    div_rows, div_cols, div_vals = [], [], []
    for i in range(n):
        for j in range(n):
            c = idx(i, j)
            div_rows += [c] * 4
            div_cols += [idx(i + 1, j), idx(i, j), m + idx(i, j + 1), m + idx(i, j)]
            div_vals += [1 / h, -1 / h, 1 / h, -1 / h]
    D = sp.csr_matrix((div_vals, (div_rows, div_cols)), shape=(m, 2 * m))
    return M, G, D


def solve_with_zero_mean(K: sp.spmatrix, rhs: np.ndarray, mean_rows: slice) -> np.ndarray:
    """Direct solve of a system whose only null mode is a constant over ``mean_rows``, bordered
    with the constraint "mean over those unknowns = 0" (a Lagrange multiplier)."""
    size = K.shape[0]
    e = np.zeros((size, 1))
    e[mean_rows] = 1.0
    bordered = sp.bmat([[K, sp.csr_matrix(e)], [sp.csr_matrix(e.T), None]], format="csc")
    return spla.spsolve(bordered, np.append(rhs, 0.0))[:size]


@pytest.mark.parametrize("method", ["coupled", "projection"])
def test_one_step_matches_a_scipy_direct_solve(method):
    n, length, nu, dt = 7, 1.4, 0.03, 0.2
    ns = NavierStokes2D(n, length=length, nu=nu, dt=dt, method=method)
    velocity = random_velocity(n, batch=2, seed=7)
    pressure = torch.randn(2, 1, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    pressure = pressure - pressure.mean(dim=(2, 3), keepdim=True)
    kwargs = {"pressure_solver": SolverConfig(method="cg", rtol=1e-13)} if method == "projection" else {}
    new_u, new_p = ns(velocity, tight_solver(method), pressure=pressure, **kwargs)
    m, h = n * n, length / n
    for b in range(2):
        u0 = velocity[b].numpy()
        M, G, D = assemble(u0, n, h, nu, dt)
        p0 = pressure[b, 0].numpy().reshape(-1)
        if method == "coupled":
            K = sp.bmat([[M, dt * G], [-dt * D, None]])
            x = solve_with_zero_mean(K, np.concatenate([u0.reshape(-1), np.zeros(m)]), slice(2 * m, 3 * m))
            ref_u, ref_p = x[: 2 * m], x[2 * m:]
        else:  # incremental pressure correction
            predicted = spla.spsolve(M.tocsc(), u0.reshape(-1) - dt * G @ p0)
            phi = solve_with_zero_mean((D @ G).tocsr(), D @ predicted, slice(0, m))
            ref_u, ref_p = predicted - G @ phi, p0 + phi / dt
        np.testing.assert_allclose(new_u[b].numpy().reshape(-1), ref_u, rtol=0, atol=1e-9 * np.abs(ref_u).max())
        np.testing.assert_allclose(new_p[b, 0].numpy().reshape(-1), ref_p, rtol=0, atol=1e-9 * np.abs(ref_p).max())


def test_converged_picard_iterations_reach_the_fully_implicit_step():
    """Picard iterations of the coupled step converge to the root, found by scipy, of the fully
    implicit system K(u^{n+1}) (u^{n+1}, p^{n+1}) = (u^n, 0) assembled independently above, and
    the stepper's nonlinear residual vanishes there."""
    n, length, nu, dt = 5, 1.0, 0.02, 0.2  # Courant number ≈ 1 with |u| ~ 1: a visible nonlinearity
    ns = NavierStokes2D(n, length=length, nu=nu, dt=dt)
    velocity = 0.5 * random_velocity(n, batch=1, seed=21)
    m, h = n * n, length / n
    u0 = velocity[0].numpy()
    rhs = np.concatenate([u0.reshape(-1), np.zeros(m)])
    mean = np.concatenate([np.zeros(2 * m), np.ones(m)])

    def bordered_residual(z):  # unknowns (u, v, p, λ); λ enforces the zero-mean pressure
        x, lam = z[:-1], z[-1]
        M, G, D = assemble(x[: 2 * m].reshape(2, n, n), n, h, nu, dt)
        K = sp.bmat([[M, dt * G], [-dt * D, None]]).tocsr()
        return np.append(K @ x + lam * mean - rhs, mean @ x)

    root = scipy.optimize.root(bordered_residual, np.append(rhs, 0.0), method="hybr", tol=1e-14)
    assert root.success and np.abs(bordered_residual(root.x)).max() < 1e-11
    exact_u = torch.from_numpy(root.x[: 2 * m].reshape(1, 2, n, n))
    exact_p = torch.from_numpy(root.x[2 * m: 3 * m].reshape(1, 1, n, n))
    assert float(ns.nonlinear_residual(exact_u, exact_p, velocity).abs().max()) < 1e-11

    residuals, errors = [], []
    for picard in range(1, 6):
        new_u, new_p = ns(velocity, TIGHT_GMRES, picard_iterations=picard)
        residuals.append(float(ns.nonlinear_residual(new_u, new_p, velocity).abs().max()))
        errors.append(float((new_u - exact_u).abs().max()))
    print(f"\ncoupled Picard 1..5: nonlinear residual {['%.2e' % r for r in residuals]}, "
          f"error to the scipy root {['%.2e' % e for e in errors]}")
    assert all(b < 0.5 * a for a, b in zip(residuals, residuals[1:]))
    assert all(b < 0.5 * a for a, b in zip(errors, errors[1:]))
    # the stepper's own default comes from its picard_iterations when the call passes none
    by_default, _ = NavierStokes2D(n, length=length, nu=nu, dt=dt, picard_iterations=5)(velocity, TIGHT_GMRES)
    torch.testing.assert_close(by_default, new_u, rtol=0, atol=1e-12)


@pytest.mark.parametrize("grad", ["implicit", "unrolled"])
def test_gradcheck_through_picard_iterations(grad):
    """Gradients reach the input through every re-linearisation (the advecting winds of iterate k
    depend on the solution of iterate k−1), not only through the right-hand side."""
    ns = NavierStokes2D(4, nu=0.01, dt=0.2)
    velocity = (0.5 * random_velocity(4, batch=1, seed=22)).requires_grad_(True)
    solver = SolverConfig(method="gmres", restart=30, rtol=1e-13, grad="implicit") \
        if grad == "implicit" else SolverConfig(method="gmres", restart=4, max_iters=2, rtol=0.0, grad="unrolled")
    # fast mode (one random projection of the Jacobian), as in test_gradcheck_through_one_step
    assert torch.autograd.gradcheck(lambda v: ns(v, solver, picard_iterations=3), (velocity,), eps=1e-6, atol=1e-6,
                                    rtol=1e-5, fast_mode=True)


def test_each_picard_iteration_is_one_monitored_solve_and_projection_takes_one():
    calls = []
    solver = SolverConfig(method="gmres", restart=4, max_iters=2, rtol=0.0, monitor=lambda d, m, it: calls.append(d))
    NavierStokes2D(6)(random_velocity(6), solver, picard_iterations=3)
    assert calls == ["forward"] * 3
    with pytest.raises(ValueError, match="takes exactly one Picard step"):
        NavierStokes2D(6, method="projection")(random_velocity(6), TIGHT_BICGSTAB, picard_iterations=2)
    # the count is the step's argument (the 'picard' budget), no longer a solver setting
    with pytest.raises(TypeError, match="nonlinear_iters"):  # the Picard count is a budget of the step, not a solver setting
        solver.replace(nonlinear_iters=3)
    for bad in (0, 10**12):
        with pytest.raises(ValueError, match="picard_iterations"):
            NavierStokes2D(6, picard_iterations=bad)


# ------------------------------------------------------------------------------------------
# Taylor–Green vortex
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["coupled", "projection"])
def test_stokes_limit_decays_at_the_exact_discrete_rate(method):
    """At vanishing amplitude advection is negligible and the Taylor–Green field is an eigenvector
    of the face Laplacian with eigenvalue λ = −(8/h²) sin²(kh/2); implicit Euler multiplies it by
    exactly 1/(1 − νΔtλ) per step, and its pressure stays zero."""
    n, nu, dt, steps = 16, 0.1, 0.3, 4
    ns = NavierStokes2D(n, length=2 * math.pi, nu=nu, dt=dt, method=method)
    amplitude = 1e-8
    velocity, _ = taylor_green(n, amplitude=amplitude)
    start = velocity.clone()
    for _ in range(steps):
        velocity, _ = ns(velocity, tight_solver(method))
    lam = -8 / ns.h**2 * math.sin(ns.h / 2) ** 2
    factor = (1 / (1 - nu * dt * lam)) ** steps
    # advection changes the answer by O(amplitude²)
    torch.testing.assert_close(velocity, factor * start, rtol=0, atol=1e-6 * amplitude)


def run_taylor_green(method: str, n: int, nu: float, t_end: float, steps: int):
    ns = NavierStokes2D(n, length=2 * math.pi, nu=nu, dt=t_end / steps, method=method)
    velocity, pressure = taylor_green(n)
    energy0 = ns.kinetic_energy(velocity)
    p = None
    solver = SolverConfig(method="gmres", restart=30, rtol=1e-9) if method == "coupled" \
        else SolverConfig(method="bicgstab", rtol=1e-9)
    for _ in range(steps):
        velocity, p = ns(velocity, solver, pressure=p)
    exact_u, exact_p = taylor_green(n, t=t_end, nu=nu)
    error_u = rms(velocity - exact_u) / rms(exact_u)
    error_p = rms(p - exact_p) / rms(exact_p)
    rate = float(torch.log(energy0 / ns.kinetic_energy(velocity))) / t_end
    return error_u, error_p, rate


@pytest.mark.parametrize("method", ["coupled", "projection"])
def test_taylor_green_converges_at_first_order_and_decays_at_the_exact_rate(method):
    """Refining h and Δt together (Δt ∝ h) the velocity and pressure errors and the error of the
    energy decay rate (exact: 4νk², k = 1) fall at first order: upwind advection and implicit
    Euler are both first order; the upwind numerical viscosity ≈ |u|h/2 is what slows the decay
    rate's convergence from above."""
    nu, t_end = 0.2, 0.5
    exact_rate = 4 * nu
    results = [run_taylor_green(method, n, nu, t_end, steps) for n, steps in ((8, 2), (16, 4), (32, 8))]
    eu, ep, rates = zip(*results)
    rate_errors = [abs(r - exact_rate) / exact_rate for r in rates]
    order = lambda e: [math.log2(a / b) for a, b in zip(e, e[1:])]
    print(f"\n{method}: velocity errors {eu}, orders {order(eu)}")
    print(f"{method}: pressure errors {ep}, orders {order(ep)}")
    print(f"{method}: energy decay rates {rates} (exact {exact_rate}), relative errors {rate_errors}, "
          f"orders {order(rate_errors)}")
    # observed (N = 8 → 16 → 32): orders 0.74–0.99 per refinement, ≈0.8–0.9 over both; ≈0.95 on to 64
    for errors in (eu, ep, rate_errors):
        assert min(order(errors)) > 0.7 and math.log2(errors[0] / errors[-1]) / 2 > 0.78
    assert all(r > exact_rate for r in rates)  # upwinding only adds dissipation
    assert eu[-1] < 0.04 and ep[-1] < 0.05 and rate_errors[-1] < 0.2


# ------------------------------------------------------------------------------------------
# incompressibility
# ------------------------------------------------------------------------------------------


def test_projection_leaves_divergence_below_1e_10():
    n = 24
    ns = NavierStokes2D(n, nu=1e-3, dt=0.05, method="projection")
    velocity = decaying_turbulence(n, batch=2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    p = None
    for _ in range(2):
        velocity, p = ns(velocity, pressure=p)  # default solvers
        assert float(ns.divergence(velocity).abs().max()) < 1e-10
    noise = random_velocity(n, seed=10)
    assert float(ns.divergence(noise).abs().max()) > 1.0
    projected, phi = ns.project(noise)
    assert float(ns.divergence(projected).abs().max()) < 1e-10
    torch.testing.assert_close(projected + ns.gradient(phi), noise, rtol=0, atol=1e-12)


def test_projection_is_idempotent_and_orthogonal():
    ns = NavierStokes2D(12, length=3.0)
    noise = random_velocity(12, seed=11)
    once, phi = ns.project(noise)
    twice, _ = ns.project(once)
    torch.testing.assert_close(twice, once, rtol=0, atol=1e-10)
    # Leray: the divergence-free part is orthogonal to every gradient (G = −Dᵀ)
    assert abs(float((once * ns.gradient(phi)).sum())) < 1e-9 * float(noise.pow(2).sum())


def test_coupled_divergence_is_at_the_solver_tolerance():
    """The continuity rows are −Δt·D w, so ‖D w‖ ≤ ‖residual‖/Δt ≤ rtol·‖u^n‖/Δt."""
    n, dt = 16, 0.1
    ns = NavierStokes2D(n, dt=dt, nu=1e-3)
    velocity = decaying_turbulence(n, batch=2, generator=torch.Generator().manual_seed(12),
                                   rms_velocity=0.2, dtype=torch.float64)
    norms = []
    for rtol in (1e-3, 1e-6, 1e-9):
        new, _ = ns(velocity, SolverConfig(method="gmres", restart=20, rtol=rtol))
        div = ns.divergence(new).flatten(1).norm(dim=1)
        bound = rtol * velocity.flatten(1).norm(dim=1) / dt
        assert bool((div <= bound * (1 + 1e-6)).all())
        norms.append(float(div.max()))
    print("coupled divergence norms at rtol 1e-3, 1e-6, 1e-9:", norms)
    assert norms[0] > norms[1] > norms[2]


# ------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["coupled", "projection"])
@pytest.mark.parametrize("grad", ["implicit", "unrolled"])
def test_gradcheck_through_one_step(method, grad):
    n = 6
    ns = NavierStokes2D(n, length=1.0, nu=0.01, dt=0.05, method=method)
    velocity = random_velocity(n, batch=1, seed=13).requires_grad_(True)
    if grad == "implicit":  # the implicit gradient is that of the exact solve: converge tightly
        solver = SolverConfig(method="gmres", restart=30, rtol=1e-13, grad="implicit") if method == "coupled" \
            else SolverConfig(method="bicgstab", rtol=1e-13, grad="implicit")
        pressure_solver = SolverConfig(method="cg", rtol=1e-13, grad="implicit")
    else:  # a truncated solve with a fixed budget is a smooth function of its inputs
        solver = SolverConfig(method="gmres", restart=5, max_iters=2, rtol=0.0, grad="unrolled") \
            if method == "coupled" else SolverConfig(method="bicgstab", max_iters=3, rtol=0.0, grad="unrolled")
        pressure_solver = SolverConfig(method="cg", max_iters=4, rtol=0.0, grad="unrolled")
    kwargs = {"pressure_solver": pressure_solver} if method == "projection" else {}

    def step(v):
        new_u, new_p = ns(v, solver, **kwargs)
        return new_u, new_p

    # fast mode compares one random projection vᵀJu of the Jacobian with a directional finite
    # difference (2 forward solves and 1 backward instead of one per entry of the 72×108 Jacobian)
    assert torch.autograd.gradcheck(step, (velocity,), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    # and the full Jacobian column for one input entry
    direction = torch.zeros_like(velocity)
    direction[0, 1, 2, 3] = 1.0
    numerical = [(a - b) / 2e-6 for a, b in zip(step(velocity.detach() + 1e-6 * direction),
                                              step(velocity.detach() - 1e-6 * direction))]
    outputs = step(velocity)
    analytical = torch.autograd.grad(outputs, velocity, grad_outputs=numerical)[0]  # Jᵀ(J e)
    exact = sum((n * n).sum() for n in numerical)  # ‖J e‖² equals e·Jᵀ(J e)
    torch.testing.assert_close(analytical[0, 1, 2, 3], exact, rtol=1e-6, atol=1e-8)


def test_monitor_sees_every_solve():
    calls = []
    monitor = lambda direction, method, iterations: calls.append((direction, method, iterations.tolist()))
    velocity = random_velocity(8, seed=14).requires_grad_(True)
    coupled = NavierStokes2D(8, nu=0.01, dt=0.05)
    new, p = coupled(velocity, SolverConfig(method="gmres", restart=10, rtol=1e-8, monitor=monitor))
    (new.sum() + p.pow(2).sum()).backward()
    assert [c[:2] for c in calls] == [("forward", "gmres"), ("backward", "gmres")]
    calls.clear()
    projection = NavierStokes2D(8, nu=0.01, dt=0.05, method="projection")
    projection(velocity.detach(), SolverConfig(method="bicgstab", monitor=monitor),
               pressure_solver=SolverConfig(method="cg", rtol=1e-10, monitor=monitor))
    assert [c[:2] for c in calls] == [("forward", "bicgstab"), ("forward", "cg")]
    assert all(min(c[2]) > 0 for c in calls)


# ------------------------------------------------------------------------------------------
# initial conditions and coarsening
# ------------------------------------------------------------------------------------------


def test_taylor_green_samples_are_divergence_free_with_zero_mean_pressure():
    velocity, pressure = taylor_green(10, length=3.0, t=0.4, nu=0.1, batch=2)
    ns = NavierStokes2D(10, length=3.0)
    assert velocity.shape == (2, 2, 10, 10) and pressure.shape == (2, 1, 10, 10)
    assert float(ns.divergence(velocity).abs().max()) < 1e-13
    assert abs(float(pressure.mean())) < 1e-14


def test_decaying_turbulence_is_divergence_free_reproducible_and_normalised():
    ns = NavierStokes2D(32)
    make = lambda seed, dtype=torch.float64: decaying_turbulence(
        32, batch=4, generator=torch.Generator().manual_seed(seed), peak_wavenumber=4.0, dtype=dtype)
    a, b, c = make(0), make(0), make(1)
    assert a.shape == (4, 2, 32, 32) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # samples of a batch differ
    assert float(ns.divergence(a).abs().max()) < 1e-12 * float(a.abs().max()) * 32
    torch.testing.assert_close(a.pow(2).sum(1).mean(dim=(1, 2)), torch.ones(4, dtype=torch.float64))
    assert float(a.mean(dim=(2, 3)).abs().max()) < 1e-12  # no mean flow
    single = make(0, torch.float32)
    assert single.dtype == torch.float32 and torch.allclose(single.double(), a, atol=1e-6)
    # the energy spectrum (shell-summed over integer wavenumbers) peaks near the requested one
    spectrum = torch.fft.fft2(a).abs().pow(2).sum(dim=(0, 1))
    k = torch.fft.fftfreq(32, d=1 / 32)
    shell = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2).round().long()
    energy = torch.zeros(int(shell.max()) + 1, dtype=torch.float64).index_add_(0, shell.flatten(), spectrum.flatten())
    assert abs(int(energy.argmax()) - 4) <= 1


def test_downsample_keeps_divergence_zero_and_approximates_the_coarse_field():
    fine = decaying_turbulence(32, batch=2, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    for factor in (2, 4):
        coarse = downsample_velocity(fine, factor)
        assert coarse.shape == (2, 2, 32 // factor, 32 // factor)
        ns = NavierStokes2D(32 // factor)
        assert float(ns.divergence(coarse).abs().max()) < 1e-12
    # face averages of a smooth field differ from its face-centre samples by O(h²)
    errors = []
    for n in (8, 16, 32):
        coarse = downsample_velocity(taylor_green(2 * n)[0], 2)
        errors.append(float((coarse - taylor_green(n)[0]).abs().max()))
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    print("downsampling errors", errors, "orders", orders)
    assert min(orders) > 1.9


# ------------------------------------------------------------------------------------------
# input validation
# ------------------------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="n \\(cells per axis\\)"):
        NavierStokes2D(2)
    with pytest.raises(ValueError, match="dt must be a positive finite number"):
        NavierStokes2D(8, dt=0.0)
    with pytest.raises(ValueError, match="nu must be a finite number >= 0"):
        NavierStokes2D(8, nu=-1.0)
    with pytest.raises(ValueError, match="Unknown Navier–Stokes method 'explicit'"):
        NavierStokes2D(8, method="explicit")
    ns = NavierStokes2D(8)
    good = torch.zeros(1, 2, 8, 8)
    with pytest.raises(ValueError, match="velocity must have shape \\[batch, 2, 8, 8\\]"):
        ns(torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError, match="velocity must be a torch.Tensor"):
        ns.divergence(np.zeros((1, 2, 8, 8)))
    with pytest.raises(TypeError, match="solver must be a pdeaccel SolverConfig"):
        ns(good, "gmres")
    with pytest.raises(ValueError, match="solver.method='cg' cannot solve"):
        ns(good, SolverConfig(method="cg"))
    with pytest.raises(ValueError, match="takes no preconditioner"):
        ns(good, SolverConfig(method="gmres", preconditioner="jacobi"))
    with pytest.raises(ValueError, match="pressure_solver is only used by method='projection'"):
        ns(good, pressure_solver=SolverConfig())
    with pytest.raises(ValueError, match="pressure must have shape \\[batch, 1, 8, 8\\]"):
        ns(good, pressure=torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="pressure must match the velocity's batch size"):
        ns(good, pressure=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="factor 3 must divide the grid size N=8"):
        downsample_velocity(good, 3)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        decaying_turbulence(8, generator=0)
    with pytest.raises(ValueError, match="peak_wavenumber must be a positive finite number"):
        decaying_turbulence(8, peak_wavenumber=0.0)


def test_projection_method_accepts_jacobi_solves_and_preconditioning():
    ns = NavierStokes2D(8, nu=0.01, dt=0.05, method="projection")
    velocity = decaying_turbulence(8, batch=1, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    jacobi, _ = ns(velocity, SolverConfig(method="jacobi", rtol=1e-12))
    reference, _ = ns(velocity, TIGHT_BICGSTAB)
    torch.testing.assert_close(jacobi, reference, rtol=0, atol=1e-10)
    preconditioned, _ = ns(velocity, TIGHT_BICGSTAB,
                           pressure_solver=SolverConfig(method="cg", preconditioner="jacobi", rtol=1e-13))
    torch.testing.assert_close(preconditioned, reference, rtol=0, atol=1e-10)
