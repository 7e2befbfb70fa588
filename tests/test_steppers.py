"""The one stepper contract (pdeaccel.physics.stepper): every time stepper is called as
``stepper(state, solver, **budgets) -> next state``, with the solver settings per call."""

import math

import pytest
import torch

from pdeaccel import SolverConfig
from pdeaccel.grid import Grid
from pdeaccel.physics import (BurgersStepper, FlowState, HeatStepper, MACFlowSolver, NavierStokes2D, Stepper,
                              lid_driven_cavity, taylor_green)


def _smooth(grid: Grid) -> torch.Tensor:
    x = torch.linspace(0, 1, grid.shape[0], dtype=torch.float64)
    return (torch.sin(2 * math.pi * x) + 0.3)[None, None]


def _cases():
    g = Grid(16, boundary="periodic")
    heat = HeatStepper(Grid(12, boundary="dirichlet"), 0.1, 0.01)
    burgers = BurgersStepper(g, 0.02, 0.05)
    ns = NavierStokes2D(8)
    ns_state = (taylor_green(8, batch=1), None)
    env = lid_driven_cavity(8, reynolds=100.0, dt=0.5 / 8)
    mac = MACFlowSolver(env)
    return [
        ("heat", heat, _smooth(Grid(12, boundary="dirichlet")), SolverConfig(method="cg", rtol=1e-10)),
        ("burgers", burgers, _smooth(g), SolverConfig(method="gmres", rtol=1e-10, max_iters=50)),
        ("navier-stokes", ns, ns_state, None),
        ("mac", mac, mac.initial_state(), SolverConfig(method="cg", rtol=1e-8)),
    ]


@pytest.mark.parametrize("case", range(4), ids=["heat", "burgers", "navier-stokes", "mac"])
def test_every_stepper_keeps_the_contract_state_in_state_out(case):
    name, stepper, state, solver = _cases()[case]
    assert isinstance(stepper, Stepper)
    if name == "navier-stokes":
        velocity, _ = state
        first = stepper(velocity, solver)  # a bare velocity starts from zero pressure
        again = stepper(first, solver)      # the returned pair is the state
        assert isinstance(again, tuple) and len(again) == 2
        u, p = stepper(first[0], solver, pressure=first[1])
        assert torch.equal(u, again[0]) and torch.equal(p, again[1])
        with pytest.raises(ValueError, match="pair"):
            stepper(first, solver, pressure=first[1])
        return
    new = stepper(state, solver)
    assert type(new) is type(state)
    if isinstance(state, torch.Tensor):
        assert new.shape == state.shape and not torch.equal(new, state)
    else:  # the MAC solver: one call is one step
        assert new.time == pytest.approx(state.time + stepper.env.dt)


def test_the_mac_solver_takes_its_pressure_budget_per_call():
    env = lid_driven_cavity(12, reynolds=100.0, dt=0.5 / 12)
    solver = MACFlowSolver(env, deflation_block=None)
    state = solver.initial_state()
    for _ in range(3):
        state = solver(state)
    counts = []
    for k in (2, 5, 3):
        budget = SolverConfig(method="cg", rtol=0.0, max_iters=k)
        state = solver(state, budget)
        counts.append(int(solver.last_pressure_solve.iterations.max()))
    assert counts == [2, 5, 3]
    # the constructor's settings again without an argument; a mapping sets the solves by name
    solver(state)
    assert int(solver.last_pressure_solve.iterations.max()) > 5
    solver(state, {"pressure": SolverConfig(method="cg", rtol=0.0, max_iters=4)})
    assert int(solver.last_pressure_solve.iterations.max()) == 4
    with pytest.raises(TypeError, match="pressure"):
        solver(state, {"momentum": SolverConfig()})


def test_a_call_with_the_constructors_settings_is_step():
    env = lid_driven_cavity(8, reynolds=100.0, dt=0.5 / 8)
    a, b = MACFlowSolver(env), MACFlowSolver(env)
    sa, sb = a.initial_state(), b.initial_state()
    for _ in range(3):
        sa, sb = a(sa), b.step(sb)
    assert all(torch.equal(x, y) for x, y in zip(sa.velocity, sb.velocity)) and torch.equal(sa.pressure, sb.pressure)
    assert isinstance(sa, FlowState)
