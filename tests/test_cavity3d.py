"""The 3D lid-driven cubic cavity on a tiny grid: boundary data, mass conservation, the mirror
symmetry about the mid-span plane, the direction of the flow on the centre-lines and the
equivalence of the axes (a lid moving along z gives the transposed flow of a lid moving along x).
The validation against Albensoeder & Kuhlmann (2005) is `benchmarks/flow_reference.py --cavity3d`."""

from __future__ import annotations

import pytest
import torch

from pdeaccel.physics.flow import lid_driven_cavity
from pdeaccel.physics.incompressible import FlowState, MACFlowSolver

N = 8
STEPS = 48  # t = 3 at dt = h/2: the primary vortex and the return flow have formed


def relative_divergence(solver: MACFlowSolver, state: FlowState) -> float:
    speed = max(float(u.abs().max()) for u in state.velocity)
    return float(solver.divergence(state).abs().max()) * min(solver.h) / speed


@pytest.fixture(scope="module")
def cavity():
    env = lid_driven_cavity(N, ndim=3, reynolds=100.0, dt=0.5 / N)
    solver = MACFlowSolver(env, advection="upwind3")
    state = solver.initial_state()
    divergences = []
    for _ in range(STEPS):
        state = solver.step(state)
        divergences.append(relative_divergence(solver, state))
    return env, solver, state, divergences


def test_boundary_values_and_mass_conservation(cavity):
    env, solver, state, divergences = cavity
    assert max(divergences) < 1e-6
    lid = env.face_velocity[0] != 0
    assert int(lid.sum()) == (N + 3) * (N + 2)  # x-faces of the top wall layer, corners included
    for d in range(3):
        mask = env.face_mask[d] > 0
        assert torch.equal(state.velocity[d][mask], env.face_velocity[d][mask])
    assert bool((state.velocity[0][lid] == 1.0).all())
    assert float(state.velocity[1][0, 0, :, -2].abs().max()) == 0.0  # no flux through the lid


def test_mirror_symmetry_about_mid_span(cavity):
    _, _, state, _ = cavity
    u, v, w = (c[0, 0] for c in state.velocity)
    scale = float(u.abs().max())
    assert float((u - u.flip(-1)).abs().max()) < 1e-9 * scale
    assert float((v - v.flip(-1)).abs().max()) < 1e-9 * scale
    assert float((w + w.flip(-1)).abs().max()) < 1e-9 * scale
    # genuinely three-dimensional: the end walls drive a spanwise secondary flow
    assert float(w.abs().max()) > 1e-3


def test_centre_line_directions(cavity):
    _, _, state, _ = cavity
    k = slice(N // 2, N // 2 + 2)  # the cells either side of z = 0.5
    u = state.velocity[0][0, 0, N // 2 + 1, 1:-1, k].mean(-1)  # u(y) on x = z = 0.5
    v = state.velocity[1][0, 0, 1:-1, N // 2 + 1, k].mean(-1)  # v(x) on y = z = 0.5
    assert float(u[-1]) > 0.2  # dragged along under the lid
    assert float(u[:N // 2].max()) < 0  # return flow in the lower half
    assert float(u.min()) < -0.05
    assert float(v[: N // 3].min()) > 0  # rising at the upstream wall
    assert float(v[-N // 3:].max()) < 0  # falling at the downstream wall
    assert float(v.min()) < -0.05


def test_lid_along_z_gives_the_transposed_flow(cavity):
    env, _, state, _ = cavity
    # the same cube with the lid (top y layer) moving along +z instead of +x
    faces = (torch.zeros_like(env.face_velocity[0]), env.face_velocity[1].clone(), torch.zeros_like(env.face_velocity[2]))
    faces[2][:, :, :, -1, :] = 1.0
    env_z = env.replace(face_velocity=faces)
    solver = MACFlowSolver(env_z, advection="upwind3")
    state_z = solver.run(solver.initial_state(), STEPS)
    ux, vx, wx = state.velocity
    uz, vz, wz = state_z.velocity
    scale = float(ux.abs().max())
    assert float((wz - ux.transpose(2, 4)).abs().max()) < 1e-8 * scale
    assert float((uz - wx.transpose(2, 4)).abs().max()) < 1e-8 * scale
    assert float((vz - vx.transpose(2, 4)).abs().max()) < 1e-8 * scale
