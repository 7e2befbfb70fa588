"""Stencils against manufactured solutions (observed orders printed), assembled scipy matrices,
and discrete identities (adjointness, div∘curl = 0, div∘grad = Laplacian on the MAC grid)."""

import math

import numpy as np
import pytest
import torch

from reference_matrices import laplacian_matrix

from pdeaccel.grid import Grid
from pdeaccel.stencils import (
    dirichlet_lift,
    divergence,
    gradient,
    laplacian,
    laplacian_diagonal,
    mac_curl,
    mac_divergence,
    mac_face_shape,
    mac_gradient,
    mac_potential_shape,
    upwind_advection,
    upwind_derivative,
)

PI = math.pi
EXTENTS = (1.0, 2.0, 0.5)  # distinct per axis, so a mixed-up spacing shows


# --------------------------------------------------------------------------------------------
# Manufactured 1D factors (value, first and second derivative), one family per boundary kind.
# t = x / L lies in [0, 1].
# --------------------------------------------------------------------------------------------


def periodic_factor(x, L):
    t = x / L
    f = torch.sin(2 * PI * t) + 0.5 * torch.cos(4 * PI * t + 0.3)
    df = (2 * PI * torch.cos(2 * PI * t) - 2 * PI * torch.sin(4 * PI * t + 0.3)) / L
    d2f = (-(2 * PI) ** 2 * torch.sin(2 * PI * t) - 0.5 * (4 * PI) ** 2 * torch.cos(4 * PI * t + 0.3)) / L**2
    return f, df, d2f


def zero_value_factor(x, L):
    """Vanishes at both ends, not symmetric about the midpoint: e^t sin(πt)."""
    t = x / L
    e, s, c = torch.exp(t), torch.sin(PI * t), torch.cos(PI * t)
    return e * s, e * (s + PI * c) / L, e * ((1 - PI**2) * s + 2 * PI * c) / L**2


def zero_slope_factor(x, L):
    """Zero derivative at both ends: cos(πt) + ½cos(2πt)."""
    t = x / L
    f = torch.cos(PI * t) + 0.5 * torch.cos(2 * PI * t)
    df = (-PI * torch.sin(PI * t) - PI * torch.sin(2 * PI * t)) / L
    d2f = (-PI**2 * torch.cos(PI * t) - 2 * PI**2 * torch.cos(2 * PI * t)) / L**2
    return f, df, d2f


def odd_wall_factor(x, L):
    """Zero value and zero curvature at both walls (the normal component of a zero-flux field
    that is the gradient of a zero-slope scalar): sin(πt) + ½ sin(2πt)."""
    t = x / L
    f = torch.sin(PI * t) + 0.5 * torch.sin(2 * PI * t)
    df = (PI * torch.cos(PI * t) + PI * torch.cos(2 * PI * t)) / L
    d2f = (-PI**2 * torch.sin(PI * t) - 2 * PI**2 * torch.sin(2 * PI * t)) / L**2
    return f, df, d2f


SCALAR_FACTOR = {"periodic": periodic_factor, "dirichlet": zero_value_factor, "neumann": zero_slope_factor}
# the component normal to a wall: zero there (dirichlet: no-slip node on the wall; neumann: zero flux)
NORMAL_FACTOR = {"periodic": periodic_factor, "dirichlet": zero_value_factor, "neumann": odd_wall_factor}


def product_field(grid, factor_of_axis):
    """u = Π_d f_d(x_d) with f_d chosen per axis; returns u, ∂_d u and ∂²_d u on the grid."""
    coords = grid.coordinates()
    parts = [factor_of_axis(d)(coords[d], grid.extent[d]) for d in range(grid.ndim)]
    value = torch.ones(grid.shape, dtype=torch.float64)
    for f, _, _ in parts:
        value = value * f
    first, second = [], []
    for d in range(grid.ndim):
        a = torch.ones(grid.shape, dtype=torch.float64)
        b = torch.ones(grid.shape, dtype=torch.float64)
        for e, (f, df, d2f) in enumerate(parts):
            a = a * (df if e == d else f)
            b = b * (d2f if e == d else f)
        first.append(a)
        second.append(b)
    return value, first, second


def observed_orders(errors, spacings):
    return [math.log(errors[i] / errors[i + 1]) / math.log(spacings[i] / spacings[i + 1]) for i in range(len(errors) - 1)]


RESOLUTIONS = {1: (16, 32, 64, 128), 2: (12, 24, 48), 3: (12, 24, 48)}
BOUNDARY_CASES = [(d, (k,) * d) for d in (1, 2, 3) for k in ("periodic", "dirichlet", "neumann")] + [
    (2, ("periodic", "dirichlet")),
    (3, ("neumann", "periodic", "dirichlet")),
]


def _convergence(ndim, boundary, stencil_error, label):
    errors, spacings = [], []
    for n in RESOLUTIONS[ndim]:
        grid = Grid((n,) * ndim, extent=EXTENTS[:ndim], boundary=boundary)
        errors.append(stencil_error(grid))
        spacings.append(max(grid.spacing))
    orders = observed_orders(errors, spacings)
    print(f"{label} {ndim}D {boundary}: max errors {['%.2e' % e for e in errors]}, orders {['%.2f' % o for o in orders]}")
    return orders


@pytest.mark.parametrize("ndim, boundary", BOUNDARY_CASES)
def test_laplacian_is_second_order(ndim, boundary):
    def error(grid):
        u, _, second = product_field(grid, lambda d: SCALAR_FACTOR[grid.boundary[d]])
        exact = sum(second)
        return (laplacian(u[None, None], grid)[0, 0] - exact).abs().max().item()

    orders = _convergence(ndim, boundary, error, "laplacian")
    assert orders[-1] >= 1.9


@pytest.mark.parametrize("ndim, boundary", BOUNDARY_CASES)
def test_gradient_is_second_order(ndim, boundary):
    def error(grid):
        u, first, _ = product_field(grid, lambda d: SCALAR_FACTOR[grid.boundary[d]])
        g = gradient(u[None, None].repeat(1, 2, *([1] * ndim)), grid)  # two channels: channel-major
        assert g.shape == (1, 2 * ndim) + grid.shape
        exact = torch.stack(first * 2)
        return (g[0] - exact).abs().max().item()

    orders = _convergence(ndim, boundary, error, "gradient")
    assert orders[-1] >= 1.9


@pytest.mark.parametrize("ndim, boundary", BOUNDARY_CASES)
def test_divergence_is_second_order(ndim, boundary):
    def error(grid):
        components, exact = [], torch.zeros(grid.shape, dtype=torch.float64)
        for d in range(ndim):
            # v_d: normal family along its own axis, scalar family along the others
            def factor(e, d=d):
                return NORMAL_FACTOR[grid.boundary[e]] if e == d else SCALAR_FACTOR[grid.boundary[e]]

            v, first, _ = product_field(grid, factor)
            components.append(v)
            exact = exact + first[d]
        div = divergence(torch.stack(components)[None], grid)
        assert div.shape == (1, 1) + grid.shape
        return (div[0, 0] - exact).abs().max().item()

    orders = _convergence(ndim, boundary, error, "divergence")
    assert orders[-1] >= 1.9


@pytest.mark.parametrize("boundary", ["periodic", "dirichlet", "neumann"])
def test_upwind_is_first_order_and_picks_the_upwind_side(boundary):
    def error(grid):
        u, first, _ = product_field(grid, lambda d: SCALAR_FACTOR[grid.boundary[d]])
        x, y = grid.coordinates()
        # velocity changes sign inside the domain, so both one-sided differences are exercised
        vel = torch.stack([torch.cos(2 * PI * y / grid.extent[1] + 0.4), torch.sin(2 * PI * x / grid.extent[0] + 0.1)])
        exact = vel[0] * first[0] + vel[1] * first[1]
        return (upwind_advection(u[None, None], vel[None], grid)[0, 0] - exact).abs().max().item()

    orders = _convergence(2, (boundary,) * 2, error, "upwind")
    assert 0.9 <= orders[-1] <= 1.3  # first order, and not accidentally a central difference


def test_upwind_derivative_hand_example():
    grid = Grid(4, extent=4.0, boundary="periodic")  # h = 1
    u = torch.tensor([[[0.0, 1.0, 4.0, 9.0]]], dtype=torch.float64)
    v = torch.tensor([[[1.0, -1.0, 1.0, -1.0]]], dtype=torch.float64)
    # v>0: u[i]-u[i-1] (periodic: u[-1] = 9); v<0: u[i+1]-u[i]
    expected = [0.0 - 9.0, 4.0 - 1.0, 4.0 - 1.0, 0.0 - 9.0]
    assert upwind_derivative(u, v, 0, grid)[0, 0].tolist() == expected


# --------------------------------------------------------------------------------------------
# Against an independently assembled matrix (scipy.sparse Kronecker sums)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim, boundary", BOUNDARY_CASES)
def test_laplacian_matches_assembled_matrix_and_is_self_adjoint(ndim, boundary):
    grid = Grid((5, 4, 3)[:ndim], extent=EXTENTS[:ndim], boundary=boundary)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn((3, 2) + grid.shape, dtype=torch.float64, generator=gen)
    v = torch.randn((3, 2) + grid.shape, dtype=torch.float64, generator=gen)
    A = laplacian_matrix(grid)
    Lu = laplacian(u, grid)
    expected = (A @ u.reshape(6, -1).numpy().T).T.reshape(u.shape)
    np.testing.assert_allclose(Lu.numpy(), expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    lhs, rhs = (Lu * v).sum().item(), (u * laplacian(v, grid)).sum().item()
    assert abs(lhs - rhs) <= 1e-12 * (Lu.abs() * v.abs()).sum().item()
    np.testing.assert_allclose(laplacian_diagonal(grid).flatten().numpy(), A.diagonal(), rtol=1e-14)


@pytest.mark.parametrize("ndim, boundary", [c for c in BOUNDARY_CASES if c[0] > 1])
def test_divergence_is_minus_the_adjoint_of_gradient(ndim, boundary):
    grid = Grid((6, 5, 4)[:ndim], extent=EXTENTS[:ndim], boundary=boundary)
    gen = torch.Generator().manual_seed(1)
    p = torch.randn((2, 1) + grid.shape, dtype=torch.float64, generator=gen)
    v = torch.randn((2, ndim) + grid.shape, dtype=torch.float64, generator=gen)
    lhs = (divergence(v, grid) * p).sum().item()
    rhs = -(v * gradient(p, grid)).sum().item()
    print(f"<div v, p> = {lhs:.15e}, -<v, grad p> = {rhs:.15e}")
    assert abs(lhs - rhs) <= 1e-12 * (v.abs() * gradient(p, grid).abs()).sum().item()


def test_dirichlet_lift_makes_linear_functions_harmonic():
    # u = a + (b - a) x / L on each axis: its Laplacian is exactly zero, ghost values included
    grid = Grid((7, 5), extent=(1.0, 2.0), boundary=("dirichlet", "periodic"))
    x, _ = grid.coordinates()
    u = (2.0 - 3.0 * x)[None, None]
    lift = dirichlet_lift(grid, [(2.0, -1.0), (0.0, 0.0)])
    assert lift.shape == (1, 1, 7, 5)
    total = laplacian(u, grid) + lift
    assert total.abs().max().item() < 1e-10
    with pytest.raises(ValueError, match="axis 1 is periodic"):
        dirichlet_lift(grid, [(0.0, 0.0), (1.0, 0.0)])


# --------------------------------------------------------------------------------------------
# MAC (staggered) layout
# --------------------------------------------------------------------------------------------


def test_mac_shapes_hand_examples():
    g2 = Grid((3, 4), boundary=("dirichlet", "periodic"))
    assert mac_face_shape(g2, 0) == (4, 4)  # bounded: N+1 faces, both walls included
    assert mac_face_shape(g2, 1) == (3, 4)  # periodic: N faces
    assert mac_potential_shape(g2) == (4, 4)  # corners
    g3 = Grid((3, 4, 5), boundary=("neumann", "periodic", "dirichlet"))
    assert [mac_face_shape(g3, a) for a in range(3)] == [(4, 4, 5), (3, 4, 5), (3, 4, 6)]
    # edges along axis c: cell-length along c, node-length (N+1 if bounded) across
    assert [mac_potential_shape(g3, c) for c in range(3)] == [(3, 4, 6), (4, 4, 6), (4, 4, 5)]
    with pytest.raises(ValueError, match="component=0,1,2"):
        mac_potential_shape(g3)


MAC_CASES = [
    (2, ("periodic", "periodic")),
    (2, ("dirichlet", "neumann")),
    (2, ("periodic", "dirichlet")),
    (3, ("periodic",) * 3),
    (3, ("dirichlet",) * 3),
    (3, ("neumann", "periodic", "dirichlet")),
]


@pytest.mark.parametrize("ndim, boundary", MAC_CASES)
def test_mac_divergence_of_curl_vanishes_to_round_off(ndim, boundary):
    grid = Grid((7, 6, 5)[:ndim], extent=EXTENTS[:ndim], boundary=boundary)
    gen = torch.Generator().manual_seed(2)
    if ndim == 2:
        potential = torch.randn((2, 1) + mac_potential_shape(grid), dtype=torch.float64, generator=gen)
    else:
        potential = [torch.randn((2, 1) + mac_potential_shape(grid, c), dtype=torch.float64, generator=gen) for c in range(3)]
    faces = mac_curl(potential, grid)
    for axis, f in enumerate(faces):
        assert f.shape[2:] == mac_face_shape(grid, axis)
    div = mac_divergence(faces, grid)
    assert div.shape == (2, 1) + grid.shape
    scale = max(f.abs().max().item() for f in faces) / min(grid.spacing)
    print(f"max |div curl| / (max|u|/h) = {div.abs().max().item() / scale:.2e}")
    assert div.abs().max().item() < 1e-12 * scale


@pytest.mark.parametrize("ndim", [2, 3])
def test_mac_divergence_of_gradient_is_the_laplacian(ndim):
    # periodic: the (2d+1)-point periodic Laplacian; bounded: the zero-flux (neumann) one
    gen = torch.Generator().manual_seed(3)
    for kind in ("periodic", "neumann"):
        grid = Grid((6, 5, 4)[:ndim], extent=EXTENTS[:ndim], boundary=kind)
        p = torch.randn((2, 1) + grid.shape, dtype=torch.float64, generator=gen)
        lhs = mac_divergence(mac_gradient(p, grid), grid)
        rhs = laplacian(p, grid)
        assert (lhs - rhs).abs().max().item() <= 1e-12 * rhs.abs().max().item()


@pytest.mark.parametrize("ndim, boundary", MAC_CASES)
def test_mac_divergence_is_minus_the_adjoint_of_mac_gradient(ndim, boundary):
    # on a bounded axis the identity holds for face fields with zero flux through the walls
    grid = Grid((6, 5, 4)[:ndim], extent=EXTENTS[:ndim], boundary=boundary)
    gen = torch.Generator().manual_seed(4)
    p = torch.randn((2, 1) + grid.shape, dtype=torch.float64, generator=gen)
    faces = []
    for axis in range(ndim):
        f = torch.randn((2, 1) + mac_face_shape(grid, axis), dtype=torch.float64, generator=gen)
        if boundary[axis] != "periodic":
            f.narrow(axis + 2, 0, 1).zero_()
            f.narrow(axis + 2, f.shape[axis + 2] - 1, 1).zero_()
        faces.append(f)
    grads = mac_gradient(p, grid)
    lhs = (mac_divergence(faces, grid) * p).sum().item()
    rhs = -sum((f * g).sum().item() for f, g in zip(faces, grads))
    assert abs(lhs - rhs) <= 1e-12 * sum((f * g).abs().sum().item() for f, g in zip(faces, grads))


@pytest.mark.parametrize("boundary", [("periodic", "periodic"), ("dirichlet", "periodic")])
def test_mac_gradient_and_divergence_are_second_order(boundary):
    """Pressure at cell centres (i+½)h, face-normal component d at x_d = k·h."""

    def centre(n, L):
        return (torch.arange(n, dtype=torch.float64) + 0.5) * L / n

    def face(n, L, kind):
        return torch.arange(n + (kind != "periodic"), dtype=torch.float64) * L / n

    f_x = {"periodic": periodic_factor, "dirichlet": zero_slope_factor}  # p: zero slope at walls
    errors_g, errors_d, spacings = [], [], []
    for n in (16, 32, 64):
        grid = Grid((n, n), extent=EXTENTS[:2], boundary=boundary)
        (Lx, Ly), kx = grid.extent, boundary[0]
        fx, dfx, _ = f_x[kx](centre(n, Lx), Lx)
        fy, dfy, _ = periodic_factor(centre(n, Ly), Ly)
        p = (fx[:, None] * fy[None, :])[None, None]
        gx, gy = mac_gradient(p, grid)
        fxf, dfxf, _ = f_x[kx](face(n, Lx, kx), Lx)
        fyf, dfyf, _ = periodic_factor(face(n, Ly, "periodic"), Ly)
        exact_gx, exact_gy = dfxf[:, None] * fy[None, :], fx[:, None] * dfyf[None, :]
        inner = slice(1, -1) if kx != "periodic" else slice(None)  # wall faces are set to zero
        errors_g.append(max((gx[0, 0, inner] - exact_gx[inner]).abs().max().item(), (gy[0, 0] - exact_gy).abs().max().item()))
        # divergence of exact face velocities u = (∂p/∂x, ∂p/∂y) against the exact Laplacian
        _, _, d2fx = f_x[kx](centre(n, Lx), Lx)
        _, _, d2fy = periodic_factor(centre(n, Ly), Ly)
        div = mac_divergence((exact_gx[None, None], exact_gy[None, None]), grid)[0, 0]
        errors_d.append((div - (d2fx[:, None] * fy[None, :] + fx[:, None] * d2fy[None, :])).abs().max().item())
        spacings.append(Lx / n)
    og, od = observed_orders(errors_g, spacings), observed_orders(errors_d, spacings)
    print(f"MAC {boundary}: gradient orders {['%.2f' % o for o in og]}, divergence orders {['%.2f' % o for o in od]}")
    assert og[-1] >= 1.9 and od[-1] >= 1.9


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_stencils_reject_wrongly_shaped_input():
    g2 = Grid((4, 4))
    with pytest.raises(ValueError, match=r"2 space axes.*\[4, 4\]"):
        laplacian(torch.zeros(4, 4), g2)
    with pytest.raises(ValueError, match="needs 2 channels.*got 3"):
        divergence(torch.zeros(1, 3, 4, 4), g2)
    with pytest.raises(ValueError, match="velocity needs 2 channels"):
        upwind_advection(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), g2)
    with pytest.raises(ValueError, match="need 2 face components, got 1"):
        mac_divergence([torch.zeros(1, 1, 4, 4)], g2)
    with pytest.raises(ValueError, match=r"face component 1 must have space shape \(4, 4\)"):
        mac_divergence([torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5)], g2)
    with pytest.raises(ValueError, match=r"2D vector potential must have space shape \(4, 4\)"):
        mac_curl(torch.zeros(1, 1, 5, 5), g2)
    with pytest.raises(ValueError, match="2D and 3D"):
        mac_curl(torch.zeros(1, 1, 4), Grid(4))
    with pytest.raises(ValueError, match="pressure must have shape"):
        mac_gradient(torch.zeros(1, 1, 3, 4), g2)


@pytest.mark.parametrize("boundary", [("periodic", "dirichlet"), ("neumann", "periodic"), ("dirichlet", "neumann")])
def test_stencils_are_differentiable(boundary):
    # the Laplacian writes into shifted views of its output; autograd must see through that
    grid = Grid((4, 3), extent=(1.0, 2.0), boundary=boundary)
    gen = torch.Generator().manual_seed(5)
    u = torch.randn((2, 1, 4, 3), dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn((2, 2, 4, 3), dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: laplacian(u, grid), (u,))
    assert torch.autograd.gradcheck(lambda u: gradient(u, grid), (u,))
    assert torch.autograd.gradcheck(lambda v: divergence(v, grid), (v,))
    assert torch.autograd.gradcheck(lambda u, v: upwind_advection(u, v, grid), (u, v))


def test_laplacian_scale_is_folded_into_the_stencil():
    grid = Grid((5, 4), extent=(1.0, 2.0), boundary=("neumann", "periodic"))
    u = torch.randn((2, 1, 5, 4), dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    for scale in (-1.0, 0.25, 3.0):
        assert torch.allclose(laplacian(u, grid, scale=scale), scale * laplacian(u, grid), rtol=1e-14, atol=1e-12)


@pytest.mark.parametrize("fn, args", [
    (laplacian, lambda u, g: (u, g)),
    (gradient, lambda u, g: (u, g)),
    (divergence, lambda u, g: (u.repeat(1, 2, 1, 1), g)),
    (upwind_derivative, lambda u, g: (u, torch.ones(1, 1, 16, 16, dtype=u.dtype), 0, g)),
    (upwind_advection, lambda u, g: (u, torch.ones(1, 2, 16, 16, dtype=u.dtype), g)),
])
def test_a_field_of_another_grid_is_refused(fn, args):
    """An 8² field handed to a 16² grid's stencil used to be differenced with the 16² spacing."""
    grid = Grid((16, 16), boundary="dirichlet")
    small = torch.ones(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"space shape \(8, 8\), but the grid has shape \(16, 16\)"):
        fn(*args(small, grid))
    if fn is upwind_advection:  # the velocity is checked too
        with pytest.raises(ValueError, match="velocity has space shape"):
            fn(torch.ones(1, 1, 16, 16, dtype=torch.float64), torch.ones(1, 2, 8, 8, dtype=torch.float64), grid)
