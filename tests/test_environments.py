"""Flow environments: face classification and boundary data checked by hand on tiny grids, the
builders' profiles against closed-form sums, rasterised rigid motions, and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdeaccel import Grid
from pdeaccel.physics.flow import (FlowEnvironment, Obstacle, channel, channel_with_box,
                                           channel_with_cylinder, from_mask, lid_driven_cavity, pipe,
                                           rasterise)
from pdeaccel.stencils import mac_face_shape


def faces_zero(grid: Grid) -> tuple[torch.Tensor, ...]:
    return tuple(torch.zeros(mac_face_shape(grid, d), dtype=torch.float64) for d in range(grid.ndim))


def test_box_mask_face_classes_by_hand():
    # 4×4 cells, a 2×2 solid box in the middle, nothing around it (outside = wall at rest).
    # Arrays are indexed [x, y]; x-faces k sit between cells k−1 and k.
    mask = np.ones((4, 4))
    mask[1:3, 1:3] = 0
    env = from_mask(mask, frame="none")
    assert env.grid.shape == (4, 4)
    free_x = np.array([  # shape (5, 4): rows = face index k along x, columns = y
        [0, 0, 0, 0],
        [1, 0, 0, 1],
        [1, 0, 0, 1],
        [1, 0, 0, 1],
        [0, 0, 0, 0],
    ])
    free_y = free_x.T  # the mask is symmetric under x <-> y
    np.testing.assert_array_equal(env.face_free[0][0, 0].numpy(), free_x)
    np.testing.assert_array_equal(env.face_free[1][0, 0].numpy(), free_y)
    for d in range(2):  # no outflow: every face is either free or prescribed
        np.testing.assert_array_equal(env.face_mask[d].numpy(), 1 - env.face_free[d].numpy())
        assert not env.face_open[d].any()
    # the face inside the box (between its two cells) is an interior wall face, class 2
    assert int(env.face_class[0][0, 0, 2, 1]) == 2 and int(env.face_class[0][0, 0, 2, 2]) == 2
    # one closed fluid region (the ring around the box)
    assert int(env.closed_components.max()) == 1


def test_cavity_data_by_hand():
    env = lid_driven_cavity(2, reynolds=10.0, lid_speed=2.0, length=1.0)
    assert env.grid.shape == (4, 4) and env.spacing == (0.5, 0.5)
    np.testing.assert_array_equal(env.fluid[0, 0].numpy(), [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    # x-faces: only the face between the two fluid columns is free, in the two fluid rows
    expected_free = np.zeros((5, 4))
    expected_free[2, 1:3] = 1
    np.testing.assert_array_equal(env.face_free[0][0, 0].numpy(), expected_free)
    # the lid is the top row of wall cells: its x-faces carry the lid speed, nothing else moves
    expected_u = np.zeros((5, 4))
    expected_u[:, 3] = 2.0
    np.testing.assert_array_equal(env.face_velocity[0][0, 0].numpy(), expected_u)
    assert not env.face_velocity[1].any()
    assert float(env.mu) == pytest.approx(1.0 * 2.0 * 1.0 / 10.0)  # ρ·U·L/Re
    assert env.origin == (0.5, 0.5)
    x, y = env.cell_coordinates()
    assert float(x[1, 1]) == pytest.approx(0.25) and float(y[2, 2]) == pytest.approx(0.75)


def test_channel_inflow_flux_matches_midpoint_rule():
    # Σ h·6Ū y_j(H−y_j)/H² over cell centres y_j = (j+½)h equals Ū(H + h²/(2H)) exactly
    H, n, U = 0.41, 10, 1.3
    env = channel(1.0, H, n, inflow_speed=U)
    h = H / n
    u_in = env.face_velocity[0][0, 0, 1, 1:-1]
    flux = float(u_in.sum()) * h
    assert flux == pytest.approx(U * (H + h * h / (2 * H)), rel=1e-12)
    # outflow: the last column of cells, apart from the wall corners, is open
    np.testing.assert_array_equal(env.outflow[0, 0, -1].numpy(), [0] + [1] * n + [0])
    assert not env.outflow[0, 0, :-1].any()
    # the face between the last fluid column and the outflow is free, the outer one is open
    assert env.face_free[0][0, 0, -2, 1:-1].all() and env.face_open[0][0, 0, -1, 1:-1].all()
    assert float(env.net_prescribed_flux()) == pytest.approx(flux, rel=1e-12)


def test_uniform_and_3d_profiles():
    env = channel(1.0, 0.5, 5, inflow_speed=2.0, profile="uniform", outflow="prescribed")
    np.testing.assert_allclose(env.face_velocity[0][0, 0, 1, 1:-1].numpy(), 2.0)
    np.testing.assert_allclose(env.face_velocity[0][0, 0, -2, 1:-1].numpy(), 2.0)
    assert not env.outflow.any()
    assert abs(float(env.net_prescribed_flux())) < 1e-12  # in = out, so the closed channel is consistent
    e3 = channel(1.0, 1.0, 6, ndim=3, inflow_speed=1.0)
    h = 1.0 / 6
    flux = float(e3.face_velocity[0][0, 0, 1].sum()) * h * h
    assert flux == pytest.approx((1.0 + h * h / 2) ** 2, rel=1e-12)  # product of two midpoint sums
    p3 = pipe(2.0, 1.0, 8, ndim=3)
    assert p3.fluid[0, 0, 3].sum() < 64  # the circular section cuts the corners
    assert float(p3.face_velocity[0][0, 0, 1].max()) <= 2.0


def test_rotating_cylinder_faces_carry_rigid_velocity():
    omega = 3.0
    env = channel_with_cylinder(resolution=20, angular_velocity=omega)
    (ob,) = env.obstacles[0]
    for d in range(2):
        coords = env.face_coordinates(d)
        touching = (env.face_mask[d][0, 0] > 0) & (torch.hypot(coords[0] - 0.2, coords[1] - 0.2) < 0.08)
        r = [c[touching] - c0 for c, c0 in zip(coords, ob.center)]
        expected = -omega * r[1] if d == 0 else omega * r[0]
        torch.testing.assert_close(env.face_velocity[d][0, 0][touching], expected)
    # a rigid rotation has no net flux through the (closed) staircase surface: a spinning
    # cylinder in a closed cavity passes the flux-balance validation
    cav = lid_driven_cavity(16, lid_speed=0.0)
    spinning = Obstacle.cylinder((0.5, 0.5), 0.2, angular_velocity=omega)
    fluid, faces = rasterise(cav.grid, cav.fluid, cav.face_velocity, ((spinning,),), cav.origin)
    env2 = cav.replace(fluid=fluid, face_velocity=faces)
    assert abs(float(env2.net_prescribed_flux())) < 1e-12


def test_moving_box_shifts_by_one_cell():
    h = 1.0 / 16
    env = channel_with_box(3.0, 1.0, 16, box_center=(1.0 + h / 4, 0.5), box_size=(0.25, 0.25),
                           box_velocity=(1.0, 0.0), dt=h)
    assert env.has_moving_obstacles
    moved = env.shifted()
    assert moved.obstacles[0][0].center[0] == pytest.approx(1.0 + h / 4 + h)
    box = env.background[0] - env.fluid  # the obstacle's cells
    assert int(box.sum()) == 16
    np.testing.assert_array_equal((moved.background[0] - moved.fluid).numpy(), torch.roll(box, 1, dims=2).numpy())
    # away from the channel walls and the in/outflow columns, prescribed faces are the box's:
    # they move with it, u = 1 and v = 0
    box_u = moved.face_mask[0][0, 0, 2:-2, 1:-1] > 0
    box_v = moved.face_mask[1][0, 0, 1:-1, 2:-2] > 0
    assert int(box_u.sum()) == 5 * 4 and int(box_v.sum()) == 4 * 5  # 4×4 cells: 5 faces per row
    assert bool((moved.face_velocity[0][0, 0, 2:-2, 1:-1][box_u] == 1.0).all())
    assert not moved.face_velocity[1][0, 0, 1:-1, 2:-2][box_v].any()
    static = channel(3.0, 1.0, 8)
    assert static.shifted() is static


def test_from_png_orientation(tmp_path):
    import matplotlib.image as mpimg

    img = np.ones((6, 8))  # 6 rows (y, top first), 8 columns (x)
    img[0, 0] = 0.0        # top-left pixel dark
    img[4:6, 6:8] = 0.2    # bottom-right 2×2 block dark grey
    path = tmp_path / "mask.png"
    mpimg.imsave(path, img, cmap="gray", vmin=0, vmax=1)
    env = from_mask(path, frame="closed", cell_size=0.1)
    inner = env.fluid[0, 0, 1:-1, 1:-1]
    assert inner.shape == (8, 6)  # [x, y]
    assert float(inner[0, 5]) == 0.0  # top-left: x = 0, y = top
    assert not inner[6:8, 0:2].any()  # bottom-right block
    assert float(inner.sum()) == 8 * 6 - 1 - 4
    np.testing.assert_allclose(env.spacing, (0.1, 0.1))


def test_from_mask_channel_frame_and_closed_regions():
    mask = np.ones((6, 5))
    mask[2, :] = 0  # a wall across the channel: two separated regions
    env = from_mask(mask, frame="closed")
    assert int(env.closed_components.max()) == 2
    # in a channel frame the left region receives the inflow but has no way out
    with pytest.raises(ValueError, match="net volume flux"):
        from_mask(mask, frame="channel", inflow_speed=1.0)
    mask[2, 2] = 1  # open a gap: one region, connected to the outflow
    env = from_mask(mask.astype(bool), frame="channel", inflow_speed=1.0)
    assert int(env.closed_components.max()) == 0
    assert env.grid.shape == (8, 7) and bool(env.outflow[0, 0, -1, 1:-1].all())


def test_stack_is_batched():
    a = lid_driven_cavity(8, reynolds=100.0)
    b = lid_driven_cavity(8, reynolds=400.0)
    env = FlowEnvironment.stack([a, b])
    assert env.batch_size == 2
    torch.testing.assert_close(env.mu, torch.cat([a.mu, b.mu]))
    with pytest.raises(ValueError, match="share grid"):
        FlowEnvironment.stack([a, lid_driven_cavity(4)])


def test_validation_messages():
    grid = Grid((4, 4), 1.0, "neumann")
    faces = faces_zero(grid)
    ones = torch.ones(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="fluid must have shape"):
        FlowEnvironment(grid, torch.ones(3, 4), faces, mu=1.0, rho=1.0, dt=0.1)
    with pytest.raises(ValueError, match="0 .solid. or 1 .fluid."):
        FlowEnvironment(grid, 0.5 * ones, faces, mu=1.0, rho=1.0, dt=0.1)
    bad = (faces[0].clone(), faces[1].clone())
    bad[0][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        FlowEnvironment(grid, ones, bad, mu=1.0, rho=1.0, dt=0.1)
    with pytest.raises(ValueError, match="mu must be positive"):
        FlowEnvironment(grid, ones, faces, mu=-1.0, rho=1.0, dt=0.1)
    with pytest.raises(ValueError, match="dt must be"):
        FlowEnvironment(grid, ones, faces, mu=1.0, rho=1.0, dt=0.0)
    with pytest.raises(ValueError, match="face_velocity needs one array per axis"):
        FlowEnvironment(grid, ones, faces[:1], mu=1.0, rho=1.0, dt=0.1)
    out = torch.zeros(4, 4, dtype=torch.float64)
    out[1, 1] = 1
    fl = ones.clone()
    fl[1, 1] = 0
    with pytest.raises(ValueError, match="outer layer"):
        FlowEnvironment(grid, fl, faces, mu=1.0, rho=1.0, dt=0.1, outflow=out)
    out = torch.zeros(4, 4, dtype=torch.float64)
    out[-1, 1] = 1
    with pytest.raises(ValueError, match="non-fluid"):
        FlowEnvironment(grid, ones, faces, mu=1.0, rho=1.0, dt=0.1, outflow=out)
    inflow = (faces[0].clone(), faces[1].clone())
    inflow[0][0, :] = 1.0  # flow in through the left edge of a closed box
    with pytest.raises(ValueError, match="net volume flux"):
        FlowEnvironment(grid, ones, inflow, mu=1.0, rho=1.0, dt=0.1)
    with pytest.raises(ValueError, match="radius"):
        Obstacle.cylinder((0.5, 0.5), -1.0)
    with pytest.raises(ValueError, match="2 or 3 coordinates"):
        Obstacle.box((0.5,), (1.0,))
    with pytest.raises(ValueError, match="does not exist"):
        from_mask("/nonexistent/mask.png")
    with pytest.raises(ValueError, match="mask values"):
        from_mask(np.full((3, 3), 2.0))
    with pytest.raises(ValueError, match="flow environments are 2D or 3D"):
        FlowEnvironment(Grid(4), torch.ones(4), (torch.zeros(5),), mu=1.0, rho=1.0, dt=0.1)
    with pytest.raises(ValueError, match="profile"):
        channel(1.0, 1.0, 4, profile="cubic")
