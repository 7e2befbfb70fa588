"""HeatStepper against closed-form discrete eigenvalues, scipy direct solves, the continuous
solution (observed orders in time) and finite differences (gradcheck)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from pdeaccel import Grid, SolverConfig
from pdeaccel.physics import HeatStepper
from reference_matrices import laplacian_matrix

TIGHT = SolverConfig(method="cg", rtol=1e-13)


def eigenmode_1d(kind: str, n: int, k: int, length: float) -> tuple[np.ndarray, float]:
    """A discrete eigenvector of the 1D 3-point Laplacian and its eigenvalue (closed form)."""
    i = np.arange(n)
    if kind == "dirichlet":
        h = length / (n + 1)
        return np.sin(k * math.pi * (i + 1) / (n + 1)), -4 / h**2 * math.sin(math.pi * k / (2 * (n + 1))) ** 2
    if kind == "periodic":
        h = length / n
        return np.cos(2 * math.pi * k * i / n), -4 / h**2 * math.sin(math.pi * k / n) ** 2
    h = length / n  # neumann, cell centres
    return np.cos(k * math.pi * (i + 0.5) / n), -4 / h**2 * math.sin(math.pi * k / (2 * n)) ** 2


def eigenmode(grid: Grid, ks: tuple[int, ...]) -> tuple[torch.Tensor, float]:
    field, lam = np.ones(()), 0.0
    for n, length, kind, k in zip(grid.shape, grid.extent, grid.boundary, ks):
        v, l1 = eigenmode_1d(kind, n, k, length)
        field = np.multiply.outer(field, v)
        lam += l1
    return torch.from_numpy(field)[None, None], lam


MODE_CASES = [
    (Grid(12, boundary="dirichlet"), (3,)),
    (Grid(16, extent=2.0, boundary="periodic"), (2,)),
    (Grid(10, boundary="neumann"), (4,)),
    (Grid((8, 6), extent=(1.0, 0.5), boundary=("dirichlet", "periodic")), (2, 1)),
    (Grid((6, 5, 4), boundary=("dirichlet", "neumann", "periodic")), (1, 2, 1)),
]


@pytest.mark.parametrize("scheme", ["implicit_euler", "crank_nicolson"])
@pytest.mark.parametrize("grid,ks", MODE_CASES)
def test_eigenmode_decays_by_exact_discrete_factor(grid, ks, scheme):
    nu, dt = 0.7, 0.01
    u0, lam = eigenmode(grid, ks)
    expected = 1 / (1 - nu * dt * lam) if scheme == "implicit_euler" else (1 + nu * dt * lam / 2) / (1 - nu * dt * lam / 2)
    assert abs(expected - 1) > 0.05  # the step really changes the mode
    stepper = HeatStepper(grid, nu, dt, scheme)
    assert stepper.amplification(lam) == pytest.approx(expected, rel=1e-14)
    u = u0
    for _ in range(3):
        u = stepper(u, TIGHT)
    torch.testing.assert_close(u, expected**3 * u0, rtol=0, atol=1e-10)


@pytest.mark.parametrize("scheme", ["implicit_euler", "crank_nicolson"])
@pytest.mark.parametrize("method", ["cg", "jacobi", "bicgstab", "gmres"])
def test_step_matches_scipy_direct_solve(scheme, method):
    grid = Grid((7, 9), extent=(1.0, 2.0), boundary=("dirichlet", "periodic"))
    nu, dt = torch.tensor(0.3, dtype=torch.float64), 0.02
    gen = torch.Generator().manual_seed(0)
    u0 = torch.randn(3, 2, *grid.shape, generator=gen, dtype=torch.float64)
    stepper = HeatStepper(grid, nu, dt, scheme)
    u1 = stepper(u0, SolverConfig(method=method, rtol=1e-12))

    theta = 1.0 if scheme == "implicit_euler" else 0.5
    L = laplacian_matrix(grid)
    eye = sp.identity(grid.numel, format="csr")
    c = 0.3 * dt
    system = (eye - theta * c * L).tocsc()
    explicit = eye + (1 - theta) * c * L
    flat = u0.reshape(6, -1).numpy()
    ref = np.stack([spla.spsolve(system, explicit @ row) for row in flat]).reshape(u0.shape)
    np.testing.assert_allclose(u1.numpy(), ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("scheme,order", [("implicit_euler", 1.0), ("crank_nicolson", 2.0)])
def test_time_convergence_order_against_continuous_solution(scheme, order):
    # fine grid so the O(h²) space error (~1e-6 relative) stays far below the time error
    grid = Grid(1023, boundary="dirichlet")
    nu, t_end = 1.0, 0.1
    x = grid.axis_coordinates(0)
    u0 = (torch.sin(math.pi * x) + 0.3 * torch.sin(2 * math.pi * x))[None, None]
    exact = (math.exp(-nu * math.pi**2 * t_end) * torch.sin(math.pi * x)
             + 0.3 * math.exp(-nu * 4 * math.pi**2 * t_end) * torch.sin(2 * math.pi * x))[None, None]
    errors = []
    steps_list = [4, 8, 16, 32]
    for steps in steps_list:
        stepper = HeatStepper(grid, nu, t_end / steps, scheme)
        u = u0
        for _ in range(steps):
            u = stepper(u, TIGHT)
        errors.append(float((u - exact).abs().max()))
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    print(f"\nheat {scheme}: max errors {['%.3e' % e for e in errors]}, observed orders {['%.3f' % o for o in orders]}")
    assert all(abs(o - order) < 0.1 for o in orders[1:]), orders


@pytest.mark.parametrize("scheme", ["implicit_euler", "crank_nicolson"])
@pytest.mark.parametrize(
    "solver",
    [
        SolverConfig(method="cg", rtol=1e-13, grad="implicit"),
        SolverConfig(method="cg", max_iters=3, rtol=0.0, grad="unrolled"),
        SolverConfig(method="jacobi", max_iters=15, rtol=0.0, grad="unrolled", omega=0.8),
    ],
    ids=["cg-implicit", "cg-unrolled-K3", "jacobi-unrolled-K15"],
)
def test_gradcheck_one_step_in_state_and_nu(scheme, solver):
    grid = Grid((4, 3), boundary=("dirichlet", "periodic"))
    gen = torch.Generator().manual_seed(1)
    u0 = torch.randn(2, 1, *grid.shape, generator=gen, dtype=torch.float64, requires_grad=True)
    nu = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)

    def step(u, nu):
        return HeatStepper(grid, nu, 0.05, scheme)(u, solver)

    assert torch.autograd.gradcheck(step, (u0, nu), atol=1e-7, rtol=1e-6)


def test_one_warm_started_jacobi_sweep_flips_the_sign_of_high_modes():
    """Why heat-1d cannot train at K = 1 with implicit gradients (benchmarks/prdp_guard.py): the
    K-sweep Jacobi step x_K(u) from x0 = u multiplies eigenmode k by 1/a + g^K (1 − 1/a) (a the
    eigenvalue of A = I − νΔt·L, g = 1 − a/(1 + 2r) that of the Jacobi iteration matrix), which
    is negative for the upper modes at K = 1 while the converged step's factor 1/a is positive."""
    n, nu_dt = 30, 0.001
    grid = Grid(n, boundary="dirichlet")
    stepper = HeatStepper(grid, nu=nu_dt, dt=1.0)
    r = nu_dt * (n + 1) ** 2
    for K, negative in ((1, 10), (2, 0)):
        factors = []
        for k in range(1, n + 1):
            mode, lam = eigenmode_1d("dirichlet", n, k, 1.0)
            a = 1 - nu_dt * lam
            expected = 1 / a + (1 - a / (1 + 2 * r)) ** K * (1 - 1 / a)
            u = torch.from_numpy(mode)[None, None]
            out = stepper(u, SolverConfig(method="jacobi", max_iters=K, rtol=0.0))
            np.testing.assert_allclose(out[0, 0].numpy(), expected * mode, rtol=0, atol=1e-12)
            factors.append(expected)
        assert sum(f < 0 for f in factors) == negative


def test_monitor_sees_forward_and_adjoint_solves_and_warm_start():
    grid = Grid(10, boundary="dirichlet")
    calls = []
    solver = SolverConfig(method="jacobi", max_iters=7, rtol=0.0, monitor=lambda d, m, it: calls.append((d, m, it.tolist())))
    u0 = torch.randn(3, 1, 10, dtype=torch.float64, requires_grad=True)
    u1 = HeatStepper(grid, 1.0, 1e-3)(u0, solver)
    u1.sum().backward()
    assert calls == [("forward", "jacobi", [7, 7, 7]), ("backward", "jacobi", [7, 7, 7])]
    # with no iterations the step returns its initial guess, which defaults to u^n
    same = HeatStepper(grid, 1.0, 1e-3)(u0.detach(), solver.with_budget(0))
    torch.testing.assert_close(same, u0.detach())


def test_nu_as_float_and_tensor_agree_and_float32_stays_float32():
    grid = Grid((6, 6), boundary="periodic")
    u0 = torch.randn(2, 1, 6, 6)
    a = HeatStepper(grid, 0.2, 0.1)(u0, SolverConfig(method="jacobi", max_iters=20))
    b = HeatStepper(grid, torch.tensor(0.2, dtype=torch.float64), 0.1)(u0, SolverConfig(method="jacobi", max_iters=20))
    assert a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(a, b)


def test_bad_inputs_raise_clear_errors():
    grid = Grid(8, boundary="dirichlet")
    with pytest.raises(ValueError, match="scheme"):
        HeatStepper(grid, 1.0, 0.1, scheme="rk4")
    with pytest.raises(ValueError, match="nu"):
        HeatStepper(grid, -1.0, 0.1)
    with pytest.raises(ValueError, match="nu"):
        HeatStepper(grid, torch.tensor([1.0, 2.0]), 0.1)
    with pytest.raises(ValueError, match="dt"):
        HeatStepper(grid, 1.0, 0.0)
    with pytest.raises(ValueError, match="dt"):
        HeatStepper(grid, 1.0, float("nan"))
    with pytest.raises(TypeError, match="grid"):
        HeatStepper((8,), 1.0, 0.1)
    stepper = HeatStepper(grid, 1.0, 0.1)
    with pytest.raises(ValueError, match=r"u must have shape \[batch, channel, 8\]"):
        stepper(torch.zeros(2, 9), TIGHT)
    with pytest.raises(TypeError, match="SolverConfig"):
        stepper(torch.zeros(2, 1, 8), "cg")
    with pytest.raises(ValueError, match="x0"):
        stepper(torch.zeros(2, 1, 8), TIGHT, x0=torch.zeros(3, 1, 8))
