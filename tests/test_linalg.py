"""Budgeted differentiable solvers against scipy (direct and truncated iterative solves),
torch.autograd.gradcheck, dot-product adjoint tests, and the budget / batch / memory contracts."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pdeaccel.grid import Grid
from pdeaccel.linalg import LinearOperator, SolverConfig, solve
from pdeaccel.stencils import laplacian, laplacian_diagonal, upwind_advection

DT = torch.float64
KRYLOV = ("cg", "bicgstab", "gmres")
METHODS = ("jacobi",) + KRYLOV


# --------------------------------------------------------------------------------------------
# Test operators (all act on [batch, 1, *grid.shape])
# --------------------------------------------------------------------------------------------


def shifted_poisson(grid: Grid, shift=0.0) -> LinearOperator:
    """A u = shift·u − Δu (shift: a number or a grid.shape tensor); SPD for shift ≥ 0 except a
    singular pure-Neumann/periodic −Δ."""
    diag = shift - laplacian_diagonal(grid)
    return LinearOperator(lambda u: shift * u - laplacian(u, grid), diagonal=diag, symmetric=True)


def advection_diffusion(grid: Grid, velocity: torch.Tensor, nu: float = 0.05, shift: float = 1.0) -> LinearOperator:
    """A u = shift·u − νΔu + (v·∇)u with upwind differences: non-symmetric."""

    def matvec(u):
        return shift * u - nu * laplacian(u, grid) + upwind_advection(u, velocity.expand(u.shape[0], -1, *grid.shape), grid)

    op = LinearOperator(matvec)
    op.diagonal = torch.from_numpy(assemble(op, grid.shape).diagonal().copy()).reshape((1, 1) + grid.shape)
    return op


def diffusion_1d(kappa: torch.Tensor, shift: float, h: float) -> LinearOperator:
    """A u = shift·u − d/dx(κ du/dx) on n Dirichlet nodes with κ on the n+1 faces (SPD for κ > 0)."""

    def matvec(u):
        padded = torch.nn.functional.pad(u, (1, 1))
        flux = kappa * (padded[..., 1:] - padded[..., :-1]) / h
        return shift * u - (flux[..., 1:] - flux[..., :-1]) / h

    def diagonal():
        return shift + (kappa[..., 1:] + kappa[..., :-1]) / h**2

    return LinearOperator(matvec, diagonal=diagonal, symmetric=True)


def advection_1d(velocity: torch.Tensor, shift: float, h: float) -> LinearOperator:
    """A u = shift·u + v ∂u/∂x − ∂²u/∂x² (central differences, Dirichlet): non-symmetric, linear in v."""

    def matvec(u):
        padded = torch.nn.functional.pad(u, (1, 1))
        du = (padded[..., 2:] - padded[..., :-2]) / (2 * h)
        d2u = (padded[..., 2:] - 2 * u + padded[..., :-2]) / h**2
        return shift * u + velocity * du - d2u

    return LinearOperator(matvec, diagonal=lambda: torch.full((1,), shift + 2 / h**2, dtype=DT))


def assemble(op: LinearOperator, shape) -> np.ndarray:
    """Dense matrix of ``op`` on [*, 1, *shape] fields (C-order flattening), column by column."""
    n = math.prod(shape)
    with torch.no_grad():
        cols = op.matvec(torch.eye(n, dtype=DT).reshape((n, 1) + tuple(shape)))
    return cols.reshape(n, n).T.numpy()


def random_field(shape, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 1) + tuple(shape), dtype=DT, generator=gen)


def smooth_coefficient(grid: Grid, low=1.0, high=50.0):
    x = grid.coordinates()[0] / grid.extent[0]
    return low + (high - low) * x**2


SPD_PROBLEMS = {
    "1D dirichlet -Δ": lambda: (Grid(24, boundary="dirichlet"), 0.0),
    "2D neumann c(x)-Δ": lambda: ((g := Grid((6, 5), extent=(1.0, 2.0), boundary="neumann")), smooth_coefficient(g)),
    "3D periodic 20-Δ": lambda: (Grid((4, 3, 5), boundary="periodic"), 20.0),
}


def reference_solution(op, b, shape):
    A = sp.csr_matrix(assemble(op, shape))
    return np.stack([spla.spsolve(A, bi.flatten().numpy()) for bi in b]).reshape(b.shape)


def assert_close_to(x, ref, rel):
    err = np.abs(x.detach().numpy() - ref).max() / np.abs(ref).max()
    assert err < rel, f"relative error {err:.2e} >= {rel:.0e}"


# --------------------------------------------------------------------------------------------
# Converged solves against scipy.sparse.linalg.spsolve
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", SPD_PROBLEMS)
@pytest.mark.parametrize("method, preconditioner", [(m, None) for m in METHODS] + [(m, "jacobi") for m in KRYLOV])
def test_spd_solves_match_spsolve(problem, method, preconditioner):
    grid, shift = SPD_PROBLEMS[problem]()
    op = shifted_poisson(grid, shift)
    b = random_field(grid.shape, batch=2)
    budget = {"jacobi": 6000, "cg": 500, "bicgstab": 500, "gmres": 100}[method]
    res = solve(op, b, method=method, preconditioner=preconditioner, max_iters=budget, rtol=1e-12, restart=10)
    assert bool(res.converged.all()), (res.iterations, res.residual_norm)
    assert_close_to(res.solution, reference_solution(op, b, grid.shape), 1e-9)
    # converged means the *true* residual meets the tolerance (CG/BiCGStab track a recursive one)
    true_res = torch.linalg.vector_norm((b - op.matvec(res.solution)).flatten(1), dim=1)
    assert bool((true_res <= 2e-12 * torch.linalg.vector_norm(b.flatten(1), dim=1)).all())


@pytest.mark.parametrize("method, preconditioner", [(m, p) for m in ("bicgstab", "gmres") for p in (None, "jacobi")])
def test_non_symmetric_advection_diffusion_matches_spsolve(method, preconditioner):
    grid = Grid((7, 6), extent=(1.0, 1.5), boundary=("dirichlet", "periodic"))
    x, y = grid.coordinates()
    velocity = torch.stack([torch.sin(2 * math.pi * y / 1.5), 2.0 * torch.cos(math.pi * x)])[None]
    op = advection_diffusion(grid, velocity)
    A = assemble(op, grid.shape)
    assert np.abs(A - A.T).max() > 1.0  # really non-symmetric
    b = random_field(grid.shape, batch=3, seed=1)
    res = solve(op, b, method=method, preconditioner=preconditioner, max_iters=300, rtol=1e-12, restart=15)
    assert bool(res.converged.all())
    assert_close_to(res.solution, reference_solution(op, b, grid.shape), 1e-9)


# --------------------------------------------------------------------------------------------
# Truncated solves: exactly K iterations of the textbook method
# --------------------------------------------------------------------------------------------


def _truncated_scipy(method, A, b, K, restart):
    kwargs = dict(rtol=0.0, atol=0.0, maxiter=K, x0=np.zeros_like(b))
    if method == "cg":
        return spla.cg(A, b, **kwargs)[0]
    if method == "bicgstab":
        return spla.bicgstab(A, b, **kwargs)[0]
    return spla.gmres(A, b, restart=restart, **kwargs)[0]


@pytest.mark.parametrize("method", KRYLOV)
def test_truncated_krylov_iterates_equal_scipys(method):
    grid = Grid((9, 8), boundary="dirichlet")
    x, _ = grid.coordinates()
    op = shifted_poisson(grid, 1.0 + 30.0 * x**2) if method == "cg" else advection_diffusion(grid, torch.ones(1, 2, 9, 8))
    A = sp.csr_matrix(assemble(op, grid.shape))
    b = random_field(grid.shape, batch=1, seed=2)
    for K in (1, 3, 7):
        ours = solve(op, b, method=method, max_iters=K, rtol=0.0, restart=4)
        assert ours.iterations.tolist() == [K]
        ref = _truncated_scipy(method, A, b.flatten().numpy(), K, restart=4)
        assert_close_to(ours.solution.flatten(), ref, 1e-10)


def test_truncated_jacobi_equals_the_textbook_recursion():
    grid = Grid(10, boundary="dirichlet")
    op = shifted_poisson(grid, 5.0)
    A = assemble(op, grid.shape)
    b = random_field(grid.shape, batch=1, seed=3)[0, 0].numpy()
    for omega in (1.0, 2.0 / 3.0):
        xk = np.zeros_like(b)
        for K in range(1, 6):
            xk = xk + omega * (b - A @ xk) / np.diag(A)
            ours = solve(op, torch.from_numpy(b)[None, None], method="jacobi", max_iters=K, rtol=0.0, omega=omega)
            np.testing.assert_allclose(ours.solution.flatten().numpy(), xk, rtol=1e-12, atol=1e-14)


class CountingOperator(LinearOperator):
    """Counts matvecs, the unit of work a reported iteration count stands for."""

    def __init__(self, op: LinearOperator):
        self.calls = 0

        def matvec(x):
            self.calls += 1
            return op.matvec(x)

        super().__init__(matvec, op.rmatvec, op.diagonal, op.symmetric)


@pytest.mark.parametrize("method", METHODS)
def test_max_iters_is_a_hard_budget_that_can_change_between_calls(method):
    grid = Grid((6, 6), boundary="dirichlet")
    op = CountingOperator(shifted_poisson(grid, 1.0))
    b = random_field(grid.shape, batch=3, seed=4)
    restart = 5
    matvecs_per_iteration = {"jacobi": 1, "cg": 1, "bicgstab": 2, "gmres": restart + 1}[method]
    for K in (3, 0, 11, 5):  # K changes from call to call
        op.calls = 0
        res = solve(op, b, method=method, max_iters=K, rtol=0.0, atol=0.0, restart=restart)
        assert res.iterations.tolist() == [K] * 3
        expected = 1 + K * matvecs_per_iteration  # plus one for the initial residual
        assert op.calls == expected, (K, op.calls, expected)
        if K == 0:
            assert torch.equal(res.solution, torch.zeros_like(b))
        assert not bool(res.converged.any())  # rtol=0 cannot be met by a non-zero residual


@pytest.mark.parametrize("method", METHODS)
def test_too_small_a_budget_is_reported_not_raised(method):
    grid = Grid(30, boundary="dirichlet")
    b = random_field(grid.shape, batch=2, seed=5)
    res = solve(shifted_poisson(grid), b, method=method, max_iters=2, rtol=1e-10, restart=3)
    assert res.iterations.tolist() == [2, 2]
    assert res.converged.tolist() == [False, False]
    assert bool((res.residual_norm > 1e-10 * torch.linalg.vector_norm(b.flatten(1), dim=1)).all())
    assert bool(torch.isfinite(res.solution).all())


@pytest.mark.parametrize("method", METHODS)
def test_a_zero_right_hand_side_stops_at_once_under_a_tolerance(method):
    """With b = 0 the threshold rtol·‖b‖ is 0; the solve must still stop (x = 0 is exact), not run
    out its budget — an implicit adjoint solve gets such a zero cotangent for an unused output."""
    grid = Grid((6, 6), boundary="dirichlet")
    op = CountingOperator(shifted_poisson(grid, 1.0))
    b = random_field(grid.shape, batch=2, seed=4)
    b[1] = 0.0
    solve(op, b[:1], method=method, max_iters=500, rtol=1e-8, restart=5)
    calls_alone = op.calls
    op.calls = 0
    res = solve(op, b, method=method, max_iters=500, rtol=1e-8, restart=5)
    assert res.iterations[1] == 0 and bool(res.converged.all())
    assert torch.equal(res.solution[1], torch.zeros_like(b[1]))
    assert op.calls == calls_alone < 500  # the zero sample costs nothing; sample 0 stops before the budget
    op.calls = 0
    zero = solve(op, torch.zeros_like(b), method=method, max_iters=500, rtol=1e-8, restart=5)
    assert zero.iterations.tolist() == [0, 0] and op.calls == 1  # only the initial residual


def test_running_far_past_convergence_stays_finite_and_accurate():
    grid = Grid(12, boundary="dirichlet")
    op = shifted_poisson(grid)
    b = random_field(grid.shape, batch=1, seed=6)
    ref = reference_solution(op, b, grid.shape)
    for method in KRYLOV:
        res = solve(op, b, method=method, max_iters=200, rtol=0.0, restart=5)
        assert bool(torch.isfinite(res.solution).all())
        assert_close_to(res.solution, ref, 1e-9)


# --------------------------------------------------------------------------------------------
# Every sample is its own system
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("grad", ["implicit", "unrolled"])
def test_batch_equals_samples_solved_one_by_one(method, grad):
    grid = Grid((8, 7), boundary="dirichlet")
    op = shifted_poisson(grid, 4.0)
    x, y = grid.coordinates()
    mode = torch.sin(math.pi * x) * torch.sin(math.pi * y)  # an eigenvector of A
    b = torch.cat([random_field(grid.shape, 1, seed=7), (3.0 * mode)[None, None], random_field(grid.shape, 1, seed=8) + mode])
    b.requires_grad_(True)
    kwargs = dict(method=method, max_iters=400, rtol=1e-9, restart=6, grad=grad)
    batch = solve(op, b, **kwargs)
    weights = random_field(grid.shape, batch=3, seed=9)
    (g_batch,) = torch.autograd.grad((batch.solution * weights).sum(), b)
    assert len(set(batch.iterations.tolist())) > 1, "samples should stop at different iterations"
    for i in range(3):
        bi = b[i : i + 1].detach().requires_grad_(True)
        one = solve(op, bi, **kwargs)
        assert one.iterations.tolist() == batch.iterations[i : i + 1].tolist()
        assert torch.allclose(one.solution, batch.solution[i : i + 1], rtol=1e-11, atol=1e-13)
        (g_one,) = torch.autograd.grad((one.solution * weights[i : i + 1]).sum(), bi)
        assert torch.allclose(g_one, g_batch[i : i + 1], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------

# Budgets: implicit gradients are exact only for a converged forward and adjoint solve; unrolled
# gradients are exact for whatever runs, so a short truncated solve is the sharper check.
GRADCHECK_BUDGET = {
    "implicit": {"jacobi": 400, "cg": 60, "bicgstab": 60, "gmres": 20},
    "unrolled": {"jacobi": 6, "cg": 3, "bicgstab": 3, "gmres": 2},
}


@pytest.mark.parametrize("grad", ["implicit", "unrolled"])
@pytest.mark.parametrize("method, preconditioner", [(m, None) for m in METHODS] + [("cg", "jacobi"), ("gmres", "jacobi")])
def test_gradcheck_wrt_rhs_and_diffusivity(method, preconditioner, grad):
    n, h = 6, 1.0 / 7
    gen = torch.Generator().manual_seed(10)
    kappa = (1.0 + torch.rand(1, 1, n + 1, dtype=DT, generator=gen)).requires_grad_(True)
    b = torch.randn(2, 1, n, dtype=DT, generator=gen).requires_grad_(True)
    shift = 60.0 if method == "jacobi" else 1.0  # Jacobi converges fast on a diagonally dominant A
    rtol = 1e-13 if grad == "implicit" else 0.0

    def f(b, kappa):
        op = diffusion_1d(kappa, shift, h)
        return solve(op, b, method=method, preconditioner=preconditioner, grad=grad, rtol=rtol, restart=3,
                     max_iters=GRADCHECK_BUDGET[grad][method]).solution

    assert torch.autograd.gradcheck(f, (b, kappa))


@pytest.mark.parametrize("grad", ["implicit", "unrolled"])
@pytest.mark.parametrize("method", ["bicgstab", "gmres"])
def test_gradcheck_non_symmetric_wrt_velocity(method, grad):
    # implicit mode takes Aᵀ from autograd (no rmatvec given)
    n, h = 6, 1.0 / 7
    gen = torch.Generator().manual_seed(11)
    velocity = torch.randn(1, 1, n, dtype=DT, generator=gen).mul(5.0).requires_grad_(True)
    b = torch.randn(2, 1, n, dtype=DT, generator=gen).requires_grad_(True)
    rtol = 1e-13 if grad == "implicit" else 0.0

    def f(b, velocity):
        return solve(advection_1d(velocity, 1.0, h), b, method=method, grad=grad, rtol=rtol, restart=3,
                     max_iters=GRADCHECK_BUDGET[grad][method]).solution

    assert torch.autograd.gradcheck(f, (b, velocity))


def _exact_kappa_gradient(kappa, b, w, shift, h):
    """d/dκ ⟨w, A(κ)⁻¹ b⟩ with a dense direct solve (torch.linalg.solve)."""
    kappa = kappa.detach().requires_grad_(True)
    op = diffusion_1d(kappa, shift, h)
    n = b.shape[-1]
    A = op.matvec(torch.eye(n, dtype=DT).reshape(n, 1, n)).reshape(n, n).T
    x = torch.linalg.solve(A, b.reshape(-1, n).T).T
    (g,) = torch.autograd.grad((x * w.reshape(-1, n)).sum(), kappa)
    return g


def test_unrolled_is_exact_for_the_truncated_solver_and_implicit_converges_to_the_true_gradient():
    n, h, shift = 40, 1.0 / 41, 0.0
    gen = torch.Generator().manual_seed(12)
    kappa0 = 1.0 + torch.rand(1, 1, n + 1, dtype=DT, generator=gen)
    b = torch.randn(1, 1, n, dtype=DT, generator=gen)
    w = torch.randn(1, 1, n, dtype=DT, generator=gen)
    exact = _exact_kappa_gradient(kappa0, b, w, shift, h)

    def grad_of(K, grad, rtol=0.0):
        kappa = kappa0.clone().requires_grad_(True)
        x = solve(diffusion_1d(kappa, shift, h), b, method="cg", max_iters=K, rtol=rtol, grad=grad).solution
        return torch.autograd.grad((x * w).sum(), kappa)[0]

    # unrolled at small K: the derivative of what ran (central differences of the K-step solver)...
    K, eps = 4, 1e-6
    unrolled = grad_of(K, "unrolled")
    for j in (0, 17, n):
        e = torch.zeros_like(kappa0)
        e[..., j] = eps
        fd = [(solve(diffusion_1d(kappa0 + s * e, shift, h), b, method="cg", max_iters=K, rtol=0.0).solution * w).sum()
              for s in (1, -1)]
        assert abs((fd[0] - fd[1]).item() / (2 * eps) - unrolled[..., j].item()) < 1e-6 * exact.abs().max().item()
    # ...which is far from the true gradient of the converged solve
    assert (unrolled - exact).abs().max() > 0.1 * exact.abs().max()

    errors = [((grad_of(K, "implicit") - exact).abs().max() / exact.abs().max()).item() for K in (5, 20, 40, 200)]
    print("implicit gradient relative error for K = 5, 20, 40, 200:", ["%.1e" % e for e in errors])
    assert errors[0] > errors[1] > errors[2] and errors[-1] < 1e-9
    converged_unrolled = grad_of(200, "unrolled", rtol=1e-13)
    assert ((converged_unrolled - exact).abs().max() / exact.abs().max()).item() < 1e-8


def test_unrolled_mode_differentiates_the_initial_guess_and_implicit_does_not():
    grid = Grid(8, boundary="dirichlet")
    op = shifted_poisson(grid, 2.0)
    b = random_field(grid.shape, batch=2, seed=13)
    x0 = random_field(grid.shape, batch=2, seed=14).requires_grad_(True)
    for method in METHODS:
        K = 5 if method == "jacobi" else 2

        def f(x0):
            return solve(op, b, x0=x0, method=method, max_iters=K, rtol=0.0, grad="unrolled", restart=3).solution

        assert torch.autograd.gradcheck(f, (x0,))
    sol = solve(op, b.clone().requires_grad_(True), x0=x0, method="cg", max_iters=3, grad="implicit").solution
    assert torch.autograd.grad(sol.sum(), x0, allow_unused=True)[0] is None


def test_autograd_transpose_matches_an_explicit_rmatvec():
    gen = torch.Generator().manual_seed(15)
    M = torch.randn(12, 12, dtype=DT, generator=gen)

    def matvec(x):
        return (x.flatten(1) @ M.T).reshape(x.shape)

    def rmatvec(y):
        return (y.flatten(1) @ M).reshape(y.shape)

    x = torch.randn(3, 1, 12, dtype=DT, generator=gen)
    y = torch.randn(3, 1, 12, dtype=DT, generator=gen)
    by_autograd = LinearOperator(matvec).transpose()
    explicit = LinearOperator(matvec, rmatvec=rmatvec).transpose()
    assert torch.allclose(by_autograd.matvec(y), rmatvec(y), rtol=1e-13, atol=1e-13)
    assert explicit.matvec is rmatvec and explicit.rmatvec is matvec
    # dot-product test on a matrix-free non-symmetric operator
    grid = Grid((6, 5), boundary=("dirichlet", "periodic"))
    op = advection_diffusion(grid, torch.randn(1, 2, 6, 5, dtype=DT, generator=gen))
    u, v = random_field(grid.shape, 2, seed=16), random_field(grid.shape, 2, seed=17)
    lhs = (op.matvec(u) * v).sum()
    rhs = (u * op.transpose().matvec(v)).sum()
    assert abs((lhs - rhs).item()) < 1e-12 * (op.matvec(u).abs() * v.abs()).sum().item()
    symmetric = shifted_poisson(grid)
    assert symmetric.transpose() is symmetric


def test_implicit_backward_uses_the_explicit_rmatvec_when_given():
    gen = torch.Generator().manual_seed(18)
    M = torch.eye(10, dtype=DT) * 4 + 0.5 * torch.randn(10, 10, dtype=DT, generator=gen)
    calls = {"rmatvec": 0}

    def rmatvec(y):
        calls["rmatvec"] += 1
        return (y.flatten(1) @ M).reshape(y.shape)

    op = LinearOperator(lambda x: (x.flatten(1) @ M.T).reshape(x.shape), rmatvec=rmatvec)
    b = torch.randn(2, 1, 10, dtype=DT, generator=gen, requires_grad=True)
    w = torch.randn(2, 1, 10, dtype=DT, generator=gen)
    x = solve(op, b, method="gmres", max_iters=20, rtol=1e-13, restart=10).solution
    (g,) = torch.autograd.grad((x * w).sum(), b)
    assert calls["rmatvec"] > 0
    expected = torch.linalg.solve(M.T, w.reshape(2, 10).T).T.reshape(2, 1, 10)
    assert torch.allclose(g, expected, rtol=1e-9, atol=1e-11)


def test_monitor_sees_forward_and_backward_iterations():
    grid = Grid(16, boundary="dirichlet")
    op = shifted_poisson(grid)
    events = []
    b = random_field(grid.shape, batch=2, seed=19).requires_grad_(True)
    res = solve(op, b, method="cg", max_iters=50, rtol=1e-8, adjoint_max_iters=7,
                monitor=lambda direction, method, its: events.append((direction, method, its.tolist())))
    assert events == [("forward", "cg", res.iterations.tolist())]
    assert res.backward_iterations is None  # nothing has run backward yet
    res.solution.square().sum().backward()
    assert events[1] == ("backward", "cg", [7, 7])  # the adjoint budget caps the adjoint solve
    assert res.backward_iterations.tolist() == [7, 7]
    # unrolled: the backward pass is autograd through the K iterations, no adjoint solve
    events.clear()
    res = solve(op, b, method="cg", max_iters=5, grad="unrolled", monitor=lambda *e: events.append(e[0]))
    res.solution.sum().backward()
    assert events == ["forward"] and res.backward_iterations is None


def _saved_tensor_bytes(fn) -> int:
    """Bytes of distinct storages the autograd graph saves for backward while ``fn`` runs."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


@pytest.mark.parametrize("method", METHODS)
def test_implicit_mode_memory_does_not_grow_with_the_budget(method):
    grid = Grid((16, 16), boundary="dirichlet")
    b = random_field(grid.shape, batch=2, seed=20)
    kappa = torch.tensor(1.5, dtype=DT, requires_grad=True)
    op = LinearOperator(lambda u: kappa * (2.0 * u - laplacian(u, grid)), diagonal=lambda: kappa * (2.0 - laplacian_diagonal(grid)),
                        symmetric=True)
    sizes = {}
    for grad in ("implicit", "unrolled"):
        for K in (10, 40):
            sizes[grad, K], out = _saved_tensor_bytes(
                lambda: solve(op, b, method=method, max_iters=K, rtol=0.0, grad=grad, restart=4).solution)
            out.sum().backward()
    print({k: v // 1024 for k, v in sizes.items()}, "KiB")
    field = b.numel() * b.element_size()
    assert sizes["implicit", 10] == sizes["implicit", 40] <= 4 * field
    assert sizes["unrolled", 40] > 3 * sizes["unrolled", 10]  # the measurement does see K


# --------------------------------------------------------------------------------------------
# SolverConfig
# --------------------------------------------------------------------------------------------


def test_solver_config_solves_like_solve_and_changes_budget():
    grid = Grid(20, boundary="dirichlet")
    op = shifted_poisson(grid)
    b = random_field(grid.shape, batch=2, seed=21)
    cfg = SolverConfig(method="bicgstab", max_iters=4, rtol=0.0)
    direct = solve(op, b, method="bicgstab", max_iters=4, rtol=0.0)
    assert torch.equal(cfg.solve(op, b).solution, direct.solution)
    longer = cfg.with_budget(9)
    assert longer.max_iters == 9 and cfg.max_iters == 4
    assert longer.solve(op, b).iterations.tolist() == [9, 9]
    assert cfg.replace(method="cg").method == "cg"


# --------------------------------------------------------------------------------------------
# Bad input: clear errors naming the problem
# --------------------------------------------------------------------------------------------

_GRID = Grid(5, boundary="dirichlet")
_OP = shifted_poisson(_GRID, 1.0)
_B = torch.ones(2, 1, 5, dtype=DT)


@pytest.mark.parametrize(
    "call, error, fragments",
    [
        (lambda: solve(_OP, _B, x0=torch.zeros(2, 1, 4, dtype=DT)), ValueError, ["x0", "[2, 1, 5]", "[2, 1, 4]"]),
        (lambda: solve(_OP, torch.ones(5, dtype=DT)), ValueError, ["batch", "[5]"]),
        (lambda: solve(_OP, _B * float("nan")), ValueError, ["right-hand side", "NaN or inf"]),
        (lambda: solve(_OP, _B, x0=_B * float("inf")), ValueError, ["x0", "NaN or inf"]),
        (lambda: solve(_OP, _B, method="lu"), ValueError, ["method", "'lu'", "jacobi", "cg", "bicgstab", "gmres"]),
        (lambda: solve(_OP, _B, grad="adjoint"), ValueError, ["grad mode", "'adjoint'", "implicit", "unrolled"]),
        (lambda: solve(_OP, _B, max_iters=-1), ValueError, ["max_iters", "-1", ">= 0 or None"]),
        (lambda: solve(_OP, _B, max_iters=2.5), ValueError, ["max_iters", "2.5"]),
        (lambda: solve(_OP, _B, adjoint_max_iters=-3), ValueError, ["adjoint_max_iters", "-3"]),
        (lambda: solve(_OP, _B, rtol=-1e-3), ValueError, ["rtol", "-0.001"]),
        (lambda: solve(_OP, _B, preconditioner="ilu"), ValueError, ["preconditioner", "'ilu'"]),
        (lambda: solve(_OP, _B, method="gmres", restart=0), ValueError, ["restart", "0"]),
        (lambda: solve(_OP, _B, method="jacobi", omega=2.5), ValueError, ["omega", "2.5", "(0, 2)"]),
        (lambda: solve(lambda x: x[..., :-1], _B), ValueError, ["not square", "[2, 1, 5]", "[2, 1, 4]"]),
        (lambda: solve(lambda x: x, _B, method="jacobi"), ValueError, ["Jacobi iteration", "diagonal"]),
        (lambda: solve(lambda x: x, _B, preconditioner="jacobi"), ValueError, ["Jacobi preconditioning", "diagonal"]),
        (lambda: solve(LinearOperator(lambda x: x, diagonal=torch.zeros(5, dtype=DT)), _B, method="jacobi"),
         ValueError, ["diagonal", "zero"]),
        (lambda: solve(LinearOperator(lambda x: x, diagonal=torch.ones(3, dtype=DT)), _B, method="jacobi"),
         ValueError, ["diagonal", "[3]", "[2, 1, 5]"]),
        (lambda: solve(_OP, [[1.0]]), TypeError, ["b must be a torch.Tensor", "list"]),
        (lambda: solve(_OP, torch.ones(2, 1, 5, dtype=torch.int64)), TypeError, ["floating-point", "int64"]),
        (lambda: solve(np.eye(5), _B), TypeError, ["LinearOperator", "ndarray"]),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, fragments):
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


# --------------------------------------------------------------------------------------------
# Property test
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 7),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
    method=st.sampled_from(METHODS),
    K=st.integers(0, 25),
    rtol=st.sampled_from([0.0, 1e-3, 1e-10]),
    grad=st.sampled_from(["implicit", "unrolled"]),
)
def test_random_diagonally_dominant_systems_never_crash(n, batch, seed, method, K, rtol, grad):
    gen = torch.Generator().manual_seed(seed)
    R = torch.randn(batch, n, n, dtype=DT, generator=gen)
    M = R @ R.transpose(1, 2) + torch.diag_embed(R.abs().sum(2) ** 2 + 0.1)  # SPD, diagonally dominant
    op = LinearOperator(lambda x: (M @ x.reshape(batch, n, 1)).reshape(x.shape),
                        diagonal=torch.diagonal(M, dim1=1, dim2=2).reshape(batch, 1, n), symmetric=True)
    b = torch.randn(batch, 1, n, dtype=DT, generator=gen, requires_grad=True)
    res = solve(op, b, method=method, max_iters=K, rtol=rtol, grad=grad, restart=3)
    assert res.iterations.shape == (batch,) and bool((res.iterations <= K).all())
    assert bool(torch.isfinite(res.solution).all())
    true_res = torch.linalg.vector_norm((b - op.matvec(res.solution)).detach().flatten(1), dim=1)
    bn = torch.linalg.vector_norm(b.detach().flatten(1), dim=1)
    assert torch.allclose(res.residual_norm, true_res, rtol=1e-6, atol=1e-9 * bn.max().item())
    assert res.converged.tolist() == (res.residual_norm <= rtol * bn).tolist()
    if res.solution.requires_grad:  # an unrolled solve with K = 0 returns x0, which has no graph
        res.solution.sum().backward()
        assert bool(torch.isfinite(b.grad).all())


def test_float32_solves_and_a_tolerance_below_round_off_stops_at_round_off():
    grid = Grid((12, 12), boundary="dirichlet")
    op = shifted_poisson(grid, 1.0)
    b64 = random_field(grid.shape, batch=2, seed=22)
    ref = reference_solution(op, b64, grid.shape)
    for method in METHODS:
        res = solve(op, b64.float(), method=method, max_iters=3000, rtol=1e-5, restart=10)
        assert res.solution.dtype == torch.float32 and bool(res.converged.all())
        assert_close_to(res.solution.double(), ref, 1e-4)
    # rtol far below ε: the solve ends at round-off, early, and says it did not converge
    res = solve(op, b64, method="cg", max_iters=5000, rtol=1e-30)
    assert bool((res.iterations < 5000).all()) and not bool(res.converged.any())
    assert_close_to(res.solution, ref, 1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 7), (3, 1, 5, 4), (1, 1, 130, 130), (3, 1, 130, 130)])
def test_batched_dot_paths_agree_and_differentiate(shape):
    # small samples use one multiply-and-sum, a single or large sample BLAS dots: same values and gradients
    from pdeaccel.linalg._batched import bdot

    gen = torch.Generator().manual_seed(23)
    a = torch.randn(shape, dtype=DT, generator=gen, requires_grad=True)
    b = torch.randn(shape, dtype=DT, generator=gen)
    d = bdot(a, b)
    assert d.shape == (shape[0],)
    assert torch.allclose(d, (a * b).flatten(1).sum(1), rtol=1e-12)
    weights = torch.arange(1.0, shape[0] + 1, dtype=DT)
    (g,) = torch.autograd.grad((d * weights).sum(), a)
    assert torch.allclose(g, b * weights.reshape(-1, *([1] * (len(shape) - 1))), rtol=1e-14)


def test_a_right_hand_side_of_another_grid_is_refused():
    """An operator built on 16² used to solve an 8² right-hand side without complaint."""
    from pdeaccel.physics import HeatStepper
    from pdeaccel.physics.poisson import poisson_operator

    grid = Grid((16, 16), boundary="dirichlet")
    small = torch.ones(2, 1, 8, 8, dtype=DT)
    # an operator that knows its shape (the steppers' laplacian-based operators pass it)
    for op in (poisson_operator(grid, DT), HeatStepper(grid, nu=0.01, dt=0.1).operator(DT)):
        assert op.shape == (16, 16) and op.transpose().shape == (16, 16)
        with pytest.raises(ValueError, match=r"operator acts on \[batch, \.\.\., 16, 16\]"):
            solve(op, small, method="cg", max_iters=5)
    # a shape given to any matvec
    with pytest.raises(ValueError, match="b \\(the right-hand side\\) has shape \\[2, 1, 8, 8\\]"):
        solve(LinearOperator(lambda x: 2 * x, symmetric=True, shape=(16, 16)), small, max_iters=5)
    # a plain laplacian matvec: the stencil itself refuses the field
    with pytest.raises(ValueError, match="laplacian: u has space shape"):
        solve(lambda u: -laplacian(u, grid), small, method="cg", max_iters=5)
    # and x0 must match b
    with pytest.raises(ValueError, match="x0 must have the shape of b"):
        solve(poisson_operator(grid, DT), torch.ones(2, 1, 16, 16, dtype=DT), x0=small, max_iters=5)
    # the right shape still solves
    assert bool(solve(poisson_operator(grid, DT), torch.ones(2, 1, 16, 16, dtype=DT), rtol=1e-8).converged.all())
