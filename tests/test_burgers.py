"""BurgersStepper against hand-assembled matrices, scipy direct and ODE/nonlinear solvers, the
Godunov flux, conservation and the maximum principle, and finite differences (gradcheck)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.integrate import solve_ivp
import torch

from pdeaccel import Grid, SolverConfig
from pdeaccel.physics import BurgersStepper

TIGHT = SolverConfig(method="gmres", rtol=1e-13, restart=30)


def riemann_state(left: float, right: float) -> float:
    """Value at x/t = 0 of the exact solution of the Burgers Riemann problem (left, right)."""
    if left > right:  # shock with speed (left + right)/2
        return left if left + right > 0 else right
    if left > 0:
        return left
    if right < 0:
        return right
    return 0.0  # sonic point inside a rarefaction fan


def hand_assembled(w: np.ndarray, nu: float, dt: float, grid: Grid) -> np.ndarray:
    """Dense A(w) entry by entry: identity, upwind flux differences, periodic diffusion."""
    n = w.size
    A = np.eye(n)
    index = np.arange(n).reshape(grid.shape)
    for cell in np.ndindex(*grid.shape):
        row = index[cell]
        for axis, h in enumerate(grid.spacing):
            def shifted(offset):
                c = list(cell)
                c[axis] = (c[axis] + offset) % grid.shape[axis]
                return tuple(c)
            for offset in (-1, 1):  # diffusion
                A[row, index[shifted(offset)]] -= nu * dt / h**2
            A[row, row] += 2 * nu * dt / h**2
            # flux through the right face (+) and the left face (−) of the cell
            for sign, lo, hi in ((+1.0, cell, shifted(1)), (-1.0, shifted(-1), cell)):
                a = riemann_state(w[lo], w[hi])
                upwind = lo if a > 0 else hi
                A[row, index[upwind]] += sign * dt / h * 0.5 * a
    return A


def godunov_divergence(v: np.ndarray, grid: Grid) -> np.ndarray:
    """Σ_d (G_{i+½} − G_{i−½})/h_d with the textbook Godunov flux of f(u) = u²/2 for convex f:
    G(l, r) = max(f(max(l, 0)), f(min(r, 0)))."""
    out = np.zeros_like(v)
    for axis, h in enumerate(grid.spacing):
        right = np.roll(v, -1, axis=axis)
        flux = np.maximum(0.5 * np.maximum(v, 0) ** 2, 0.5 * np.minimum(right, 0) ** 2)
        out += (flux - np.roll(flux, 1, axis=axis)) / h
    return out


def periodic_laplacian(v: np.ndarray, grid: Grid) -> np.ndarray:
    return sum((np.roll(v, 1, axis=a) - 2 * v + np.roll(v, -1, axis=a)) / h**2 for a, h in enumerate(grid.spacing))


def dense(apply, n: int, shape) -> torch.Tensor:
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape)
    return apply(eye).reshape(n, n).T  # column j = A e_j


def mixed_state(grid: Grid, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 1, *grid.shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("grid", [Grid(9, extent=2.0), Grid((5, 4), extent=(1.0, 0.6))], ids=["1d", "2d"])
def test_operator_matches_hand_assembled_matrix(grid):
    w = mixed_state(grid, 0)  # both wind signs, shocks and rarefactions
    assert bool((w > 0).any()) and bool((w < 0).any())
    nu, dt = 0.03, 0.07
    op = BurgersStepper(grid, nu, dt).operator(w)
    A = hand_assembled(w[0, 0].numpy(), nu, dt, grid)
    np.testing.assert_allclose(dense(op.matvec, grid.numel, grid.shape).numpy(), A, atol=1e-13)
    np.testing.assert_allclose(dense(op.rmatvec, grid.numel, grid.shape).numpy(), A.T, atol=1e-13)
    np.testing.assert_allclose(op.get_diagonal().flatten().numpy(), np.diag(A), atol=1e-13)
    np.testing.assert_allclose(A.sum(axis=0), 1.0, atol=1e-13)  # conservative: columns sum to 1
    assert not op.symmetric


@pytest.mark.parametrize("wind", [1.5, -1.5])
def test_upwinding_for_each_wind_sign(wind):
    # uniform wind c: the advective flux ½c·u comes from the left neighbour if c > 0, else the right
    grid = Grid(6, extent=1.2)
    h, nu, dt = grid.spacing[0], 0.01, 0.05
    op = BurgersStepper(grid, nu, dt).operator(torch.full((1, 1, 6), wind, dtype=torch.float64))
    A = dense(op.matvec, 6, grid.shape).numpy()
    adv, diff = dt / h * 0.5 * abs(wind), nu * dt / h**2
    upstream, downstream = (-1, 1) if wind > 0 else (1, -1)
    for i in range(6):
        assert A[i, i] == pytest.approx(1 + adv + 2 * diff)
        assert A[i, (i + upstream) % 6] == pytest.approx(-adv - diff)
        assert A[i, (i + downstream) % 6] == pytest.approx(-diff)


@pytest.mark.parametrize("grid", [Grid(16), Grid((6, 7), extent=(1.0, 2.0))], ids=["1d", "2d"])
def test_fully_implicit_operator_is_the_godunov_flux(grid):
    # A(w) w − w = Δt div G(w) − νΔt L w with the textbook Godunov flux G (a different formula)
    w = 0.8 * mixed_state(grid, 1)
    nu, dt = 0.02, 0.1
    stepper = BurgersStepper(grid, nu, dt)
    got = stepper.nonlinear_residual(w, w)[0, 0].numpy()
    v = w[0, 0].numpy()
    expected = dt * godunov_divergence(v, grid) - nu * dt * periodic_laplacian(v, grid)
    np.testing.assert_allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("method", ["bicgstab", "gmres", "jacobi"])
@pytest.mark.parametrize("grid", [Grid(12), Grid((6, 5), extent=(1.0, 0.8))], ids=["1d", "2d"])
def test_one_step_matches_scipy_direct_solve(grid, method):
    u0 = torch.cat([mixed_state(grid, 2), mixed_state(grid, 3)])
    nu, dt = 0.02, 0.05
    u1 = BurgersStepper(grid, nu, dt)(u0, SolverConfig(method=method, rtol=1e-12, max_iters=5000))
    for b in range(2):
        v = u0[b, 0].numpy()
        A = sp.csc_matrix(hand_assembled(v, nu, dt, grid))
        ref = spla.spsolve(A, v.ravel()).reshape(grid.shape)
        np.testing.assert_allclose(u1[b, 0].numpy(), ref, atol=1e-9)


@pytest.mark.parametrize(
    "solver",
    [SolverConfig(method="bicgstab", max_iters=2, rtol=0.0), SolverConfig(method="gmres", max_iters=1, restart=4, rtol=0.0),
     SolverConfig(method="bicgstab", rtol=1e-10)],
    ids=["bicgstab-K2", "gmres-1cycle", "bicgstab-converged"],
)
def test_mass_conserved_to_round_off(solver):
    grid = Grid((16, 12), extent=(1.0, 0.75))
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(3, 2, *grid.shape, generator=gen, dtype=torch.float64) + 0.3
    mass0 = u.sum(dim=(2, 3))
    stepper = BurgersStepper(grid, 0.005, 0.02, picard_iterations=2)
    for _ in range(5):
        u = stepper(u, solver)
    scale = float(u.abs().sum(dim=(2, 3)).max())
    drift = float((u.sum(dim=(2, 3)) - mass0).abs().max())
    print(f"\nburgers mass drift after 5 steps ({solver.method}, K={solver.max_iters}): {drift:.2e} (Σ|u| = {scale:.1f})")
    assert drift < 1e-13 * scale


@pytest.mark.parametrize("shape,steps", [((64,), 60), ((32, 32), 25)], ids=["1d", "2d"])
def test_smooth_data_steepens_and_max_does_not_grow(shape, steps):
    grid = Grid(shape)
    coords = grid.coordinates()
    u = (torch.sin(2 * math.pi * coords[0]) + 0.4 * torch.cos(2 * math.pi * coords[-1]))[None, None]
    h = grid.spacing[0]
    nu = float(u.abs().max()) * h / 8  # cell Reynolds number 8: the viscous shock is under-resolved
    stepper = BurgersStepper(grid, nu, 0.01)

    def steepest(v):
        return max(float((torch.roll(v, -1, dims=d + 2) - v).abs().max()) / h for d in range(grid.ndim))

    slope0, maxima = steepest(u), [float(u.abs().max())]
    for _ in range(steps):
        u = stepper(u, TIGHT)
        maxima.append(float(u.abs().max()))
    growth = max(b - a for a, b in zip(maxima, maxima[1:]))
    print(f"\nburgers {len(shape)}D: steepest slope {slope0:.2f} -> {steepest(u):.2f}, max|u| {maxima[0]:.3f} -> {maxima[-1]:.3f}, worst per-step growth {growth:.1e}")
    assert growth <= 1e-12
    assert steepest(u) > 3 * slope0


def test_first_order_in_time_against_scipy_ode_solution():
    # the semi-discrete Godunov system integrated by scipy's DOP853 is the dt → 0 limit
    grid = Grid(64)
    nu, t_end = 0.02, 0.2
    x = grid.axis_coordinates(0)
    u0 = 1.0 + 0.5 * torch.sin(2 * math.pi * x)

    def rhs(_, v):
        return -godunov_divergence(v, grid) + nu * periodic_laplacian(v, grid)

    ref = solve_ivp(rhs, (0, t_end), u0.numpy(), method="DOP853", rtol=1e-11, atol=1e-12).y[:, -1]
    errors = []
    for steps in (10, 20, 40, 80):
        stepper = BurgersStepper(grid, nu, t_end / steps)
        u = u0[None, None]
        for _ in range(steps):
            u = stepper(u, TIGHT)
        errors.append(float(np.abs(u[0, 0].numpy() - ref).max()))
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    print(f"\nburgers implicit Euler (1 Picard): max errors {['%.3e' % e for e in errors]}, observed orders {['%.3f' % o for o in orders]}")
    assert all(abs(o - 1.0) < 0.15 for o in orders[1:]), orders


@pytest.mark.parametrize(
    "solver,picard",
    [(SolverConfig(method="gmres", rtol=1e-13, grad="implicit"), 1),
     (SolverConfig(method="gmres", rtol=1e-13, grad="implicit"), 2),
     (SolverConfig(method="bicgstab", max_iters=2, rtol=0.0, grad="unrolled"), 1),
     (SolverConfig(method="jacobi", max_iters=8, rtol=0.0, grad="unrolled"), 2)],
    ids=["gmres-implicit", "gmres-implicit-picard2", "bicgstab-unrolled-K2", "jacobi-unrolled-K8-picard2"],
)
@pytest.mark.parametrize("shape", [(7,), (4, 3)], ids=["1d", "2d"])
def test_gradcheck_one_step_in_state_and_nu(solver, picard, shape):
    grid = Grid(shape)
    u0 = mixed_state(grid, 5).repeat(2, 1, *([1] * len(shape)))
    u0[1] = u0[1].flip(-1) + 0.2
    u0.requires_grad_(True)
    nu = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)

    def step(u, nu):
        return BurgersStepper(grid, nu, 0.05, picard_iterations=picard)(u, solver)

    assert torch.autograd.gradcheck(step, (u0, nu), atol=1e-7, rtol=1e-6)


def test_more_picard_iterations_approach_the_fully_implicit_solution():
    grid = Grid(32)
    nu, dt = 0.01, 0.05  # Courant number ≈ 2.4: the linearisation error is visible
    x = grid.axis_coordinates(0)
    u0 = (0.5 + torch.sin(2 * math.pi * x))[None, None]
    v0 = u0[0, 0].numpy()

    def residual(v):
        return v + dt * godunov_divergence(v, grid) - nu * dt * periodic_laplacian(v, grid) - v0

    root = scipy.optimize.root(residual, v0, method="hybr", tol=1e-14)
    assert root.success and np.abs(residual(root.x)).max() < 1e-12
    exact = torch.from_numpy(root.x)[None, None]

    stepper = BurgersStepper(grid, nu, dt)
    residuals, errors = [], []
    for picard in (1, 2, 3, 4):
        u1 = stepper(u0, TIGHT, picard_iterations=picard)
        residuals.append(float(stepper.nonlinear_residual(u1, u0).abs().max()))
        errors.append(float((u1 - exact).abs().max()))
    print(f"\nburgers Picard 1..4: nonlinear residual {['%.2e' % r for r in residuals]}, error to scipy root {['%.2e' % e for e in errors]}")
    assert all(b < 0.5 * a for a, b in zip(residuals, residuals[1:]))
    assert all(b < 0.5 * a for a, b in zip(errors, errors[1:]))
    assert float(stepper.nonlinear_residual(exact, u0).abs().max()) < 1e-12


def test_each_picard_iteration_is_one_monitored_solve():
    calls = []
    solver = SolverConfig(method="bicgstab", max_iters=4, rtol=0.0, monitor=lambda d, m, it: calls.append(d))
    grid = Grid(8)
    BurgersStepper(grid, 0.1, 0.1, picard_iterations=3)(torch.randn(2, 1, 8), solver)
    assert calls == ["forward"] * 3


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="periodic"):
        BurgersStepper(Grid(8, boundary="dirichlet"), 0.1, 0.1)
    with pytest.raises(ValueError, match="at least 2 points"):
        BurgersStepper(Grid((8, 1)), 0.1, 0.1)
    with pytest.raises(ValueError, match="picard_iterations"):
        BurgersStepper(Grid(8), 0.1, 0.1, picard_iterations=0)
    with pytest.raises(ValueError, match="nu"):
        BurgersStepper(Grid(8), 0.0, 0.1)
    with pytest.raises(ValueError, match="dt"):
        BurgersStepper(Grid(8), 0.1, -0.1)
    stepper = BurgersStepper(Grid(8), 0.1, 0.1)
    with pytest.raises(ValueError, match="non-symmetric"):
        stepper(torch.zeros(1, 1, 8), SolverConfig(method="cg"))
    with pytest.raises(ValueError, match=r"u must have shape \[batch, channel, 8\]"):
        stepper(torch.zeros(1, 8), TIGHT)
    with pytest.raises(ValueError, match="picard_iterations"):
        stepper(torch.zeros(1, 1, 8), TIGHT, picard_iterations=1.5)
    with pytest.raises(ValueError, match="u_lin"):
        stepper.operator(torch.zeros(1, 1, 9))
