"""NeuralStagger: the decomposition is exactly invertible, (s, T) = (1, 1) is the vanilla solver bit
for bit, sub-solvers are independent (gradients and stand-alone rollouts), the staggered model
trains through the real trainer and pool, and a SIGKILLed staggered run resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pdeaccel.decompose import as_stride, assemble, decompose, offsets, staggered_shapes
from pdeaccel.experiments import runner
from pdeaccel.experiments.flow import build_environment, held_out_environment, sample_spec
from pdeaccel.neural_flow import NeuralFlowSolver
from pdeaccel.stagger import StaggeredFlowSolver
from pdeaccel.testing import faults

PHYSICS = {"ndim": 2, "length": 16, "height": 8, "mu": 0.1, "rho": 4.0, "dt": 1.0, "inflow_min": 0.2,
           "inflow_max": 1.0, "obstacles": ["box", "cylinder"], "magnus_max": 1.0, "move_max": 0.3,
           "mu_range": [0.1, 0.1], "rho_range": [4.0, 4.0]}
SCALES = dict(velocity_scale=1.0, potential_scale=2.0, pressure_scale=4.0, potential_bound=80.0, pressure_bound=200.0)
TINY = ["physics.length=16", "physics.height=8", "pool.size=4", "net.hidden=4", "net.levels=1",
        "data.validation=2", "data.validation_steps=2", "train.steps_per_epoch=3", "train.batch_size=2"]


# ------------------------------------------------------------------------------ decomposition
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_assemble_inverts_decompose_for_every_dimension_stride_and_odd_size(data):
    ndim = data.draw(st.integers(1, 3))
    stride = tuple(data.draw(st.integers(1, 4)) for _ in range(ndim))
    shape = tuple(data.draw(st.integers(1, 9)) for _ in range(ndim))
    x = torch.randn((2, 3) + shape, dtype=torch.float64)
    parts = decompose(x, stride)
    assert parts.shape[:3] == (2, math.prod(stride), 3)
    assert torch.equal(assemble(parts, stride, shape), x)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_each_sub_field_is_the_strided_slice_at_its_offset(ndim):
    stride = (2, 3, 2)[:ndim]
    shape = (6, 9, 4)[:ndim]
    x = torch.randn((1, 2) + shape)
    parts = decompose(x, stride)
    for j, o in enumerate(offsets(stride)):  # D_o(u)[n] = u[s·n + o]
        expected = x[(slice(None), slice(None)) + tuple(slice(oi, None, si) for oi, si in zip(o, stride))]
        assert torch.equal(parts[:, j], expected)


def test_node_and_cell_sub_fields_keep_the_mac_layout_and_bad_strides_are_refused():
    cells, nodes = staggered_shapes((66, 34), (4, 4), (False, False))
    assert cells == (68, 36) and nodes == (72, 40)  # 17×9 sub-cells, 18×10 sub-nodes: one node more per axis
    with pytest.raises(ValueError, match="periodic axis of 30 cells cannot be staggered with stride 4"):
        staggered_shapes((30,), (4,), (True,))
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        as_stride((2, 0), 2)
    with pytest.raises(ValueError, match="multiple of the stride"):
        decompose(torch.zeros(1, 1, 5), (2,), padded=(5,))


# ------------------------------------------------------------------------------ the solver
def _pair(stride, window, shared=False, ndim=2, seed=0):
    torch.manual_seed(seed)
    return StaggeredFlowSolver(ndim, stride=stride, window=window, hidden=4, levels=1, shared_weights=shared, **SCALES)


def _env(ndim=2, batch=2):
    physics = dict(PHYSICS)
    if ndim == 3:
        physics.update({"ndim": 3, "length": 12, "height": 6, "obstacles": ["sphere"], "mu_range": [0.1, 0.2],
                        "rho_range": [1.0, 4.0]})
    gen = torch.Generator().manual_seed(3)
    from pdeaccel.physics.flow import FlowEnvironment
    return FlowEnvironment.stack([build_environment(physics, sample_spec(physics, gen)) for _ in range(batch)])


def _randomised(model):
    with torch.no_grad():  # a trained-looking network: the default init's last layer is small
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("ndim", [2, 3])
def test_stride_one_window_one_is_the_vanilla_solver_bit_for_bit(ndim):
    env = _env(ndim)
    torch.manual_seed(1)
    vanilla = _randomised(NeuralFlowSolver(ndim, hidden=4, levels=1, **SCALES))
    staggered = StaggeredFlowSolver(ndim, stride=1, window=1, hidden=4, levels=1, **SCALES)
    staggered.nets[0].load_state_dict(vanilla.net.state_dict())
    s, w = vanilla.initial_state(env), staggered.initial_state(env)
    with torch.no_grad():
        for _ in range(3):
            s, w = vanilla(s, env), staggered(w, env)
            assert torch.equal(s.potential, w.potential[:, 0]) and torch.equal(s.pressure, w.pressure[:, 0])
    assert float(s.potential.abs().max()) > 0.1  # the states moved: the comparison is not of zeros


@pytest.mark.parametrize("shared", [False, True])
def test_each_sub_solver_reads_only_its_own_sub_field(shared):
    env = _env()
    model = _randomised(_pair((2, 2), 2, shared))
    state = model.initial_state(env)
    with torch.no_grad():  # a state with structure everywhere
        state = model(model(state, env), env)
    pot = state.potential.clone().requires_grad_(True)
    pres = state.pressure.clone().requires_grad_(True)
    from pdeaccel.stagger import WindowState
    new = model(WindowState(pot, pres), env)
    target = model.decompose_state(new, env)
    j = 5  # offset (0, 1) of time slot 1
    gp, gq = torch.autograd.grad((target.potential[j] ** 2).sum() + (target.pressure[j] ** 2).sum(), (pot, pres))
    grads = model.decompose_state(WindowState(gp, gq), env)
    for i in range(model.sub_solvers):
        size = float(grads.potential[i].abs().sum() + grads.pressure[i].abs().sum())
        assert (size > 0) == (i == j), f"sub-solver {j}'s output depends on sub-field {i}: {size}"


@pytest.mark.parametrize("shared", [False, True])
def test_a_sub_solver_run_alone_reproduces_its_part_of_the_full_rollout(shared):
    env = _env()
    model = _randomised(_pair(2, 2, shared))
    views = model.sub_views(env)
    full = model.initial_state(env)
    alone = model.decompose_state(full, env, indices=[3, 6])  # one sub-solver of each time slot
    with torch.no_grad():
        for _ in range(4):
            full = model(full, env)
            alone = model.step_subset(alone, views)
    part = model.decompose_state(full, env, indices=[3, 6])
    for a, b in zip(alone.potential + alone.pressure, part.potential + part.pressure):
        if shared:  # one batched call over all sub-solvers or over two: the same maths, summed in another order
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(a, b)
    assert float(part.potential[0].abs().max()) > 0.01


def test_staggered_window_advances_t_fine_steps_and_the_loss_judges_every_pair():
    env = _env()
    model = _pair(2, 3)
    state = model.initial_state(env)
    new = model(state, env)
    traj = model.trajectory(state, new)
    assert len(traj) == 4 and model.steps_per_call == 3
    assert traj[0].potential.data_ptr() == state.potential[:, 2].data_ptr() or torch.equal(traj[0].potential,
                                                                                          state.potential[:, 2])
    with pytest.raises(ValueError, match="a window of 3"):
        model(model.unpack({"potential": state.potential[:, :1], "pressure": state.pressure[:, :1]}), env)


def test_3d_staggered_solver_runs_and_keeps_divergence_at_round_off():
    from pdeaccel.neural_flow import velocity_from_potential
    from pdeaccel.stencils import mac_divergence

    env = _env(3, batch=1)
    model = _randomised(_pair(2, 1, ndim=3))
    with torch.no_grad():
        w = model(model.initial_state(env), env)
    u = velocity_from_potential(w.potential[:, 0].double(), env.grid)
    assert float(mac_divergence(u, env.grid).abs().max()) < 1e-10 * max(float(c.abs().max()) for c in u)


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("name", ["flow-2d-s2t2", "flow-2d-s2t1"])
def test_staggered_training_through_the_real_trainer_lowers_the_validation_loss(name, tmp_path):
    # environments reset every step, so the pool stays near the start-up the validation rollout judges
    over = ["physics.length=16", "physics.height=8", "pool.size=2", "pool.reset_every=1", "net.hidden=8",
            "net.levels=1", "data.validation=2", "data.validation_steps=1", "train.steps_per_epoch=8",
            "train.batch_size=2", "train.lr=3e-3", "train.epochs=8"]
    runner.train_run(name, overrides=over, out=tmp_path / "r", progress=False)
    import csv
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    first, last = float(rows[0]["val_metric"]), float(rows[-1]["val_metric"])
    # measured (walls gauge): 0.885 -> 0.70 (s2t2), 0.888 -> 0.717 (s2t1); untrained it stays at 0.89
    assert last < 0.9 * first, (first, last)


def test_sigkilled_staggered_pool_training_resumes_to_the_uninterrupted_result(tmp_path):
    args = ["flow-2d-s2t2"] + TINY + ["train.epochs=6"]
    runner.train_run(args[0], overrides=args[1:], out=tmp_path / "reference", progress=False)
    # killed as soon as a checkpoint write is under way (60 s is only the bound on a loaded machine)
    kills = faults.run_with_kills(args, tmp_path / "killed", [("mid-write", 60.0)], slow_writes=0.03)
    assert any(w.endswith(".ckpt") for k in kills for w in k.interrupted_writes), kills
    reference, killed = (faults.comparable_run(tmp_path / d) for d in ("reference", "killed"))
    pool = reference["checkpoint"]["task"]["pool"]
    assert pool["steps"] == 6 * 3 and pool["potential"].shape[1] == 2  # windows of T = 2 states are compared
    assert faults.differences(reference, killed) == [], kills


def test_held_out_rollout_of_a_staggered_model_records_every_fine_step():
    from pdeaccel.experiments.flow_eval import neural_rollout

    env = held_out_environment(PHYSICS, "cylinder")
    roll = neural_rollout(_pair(2, 3), env, 7)
    assert len(roll.times) == 7 and roll.times[-1] == pytest.approx(7.0)
    assert max(roll.diagnostics["divergence_abs"]) < 1e-5


def test_coarse_simulations_are_the_full_one_sampled_on_their_lattice():
    env = _env()
    model = _randomised(_pair(4, 2))
    views = model.sub_views(env)
    full = model.initial_state(env)
    subsets = {(r, q): model.decompose_state(full, env, model.resolution_indices(r, q)) for r, q in [(2, 2), (4, 1), (4, 2)]}
    assert len(subsets[(4, 2)].indices) == 1 and len(subsets[(2, 2)].indices) == 4 and len(subsets[(4, 1)].indices) == 2
    with torch.no_grad():
        for _ in range(2):
            full = model(full, env)
            subsets = {key: model.step_subset(sub, views) for key, sub in subsets.items()}
    for (r, q), sub in subsets.items():
        states = model.lattice_states(sub, env, r)
        slots = [k for k in range(2) if (k + 1) % q == 0]
        assert len(states) == len(slots)
        for k, state in zip(slots, states):
            sampled = full.potential[:, k][(slice(None), slice(None)) + tuple(slice(0, None, r) for _ in range(2))]
            m = sampled.shape[2:]  # the coarse grid may reach past the full one: zeros there
            assert torch.equal(state.potential[..., :m[0], :m[1]], sampled)
            assert not state.potential[..., m[0]:, :].any() and not state.potential[..., m[1]:].any()
    with pytest.raises(ValueError, match="must divide the stride"):
        model.resolution_indices(3, 1)


def test_simulate_a_staggered_model_at_every_resolution_and_export_it(tmp_path):
    import json

    from pdeaccel.cli import main
    from pdeaccel.experiments.flow_eval import load_flow_model

    runner.train_run("flow-2d-s2t2", overrides=TINY + ["train.epochs=1"], out=tmp_path / "run", progress=False)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 0
    meta = json.loads((tmp_path / "model" / "model.json").read_text())["meta"]
    assert meta["command"].startswith("pdeaccel train flow-2d-s2t2 ") and "physics.length=16" in meta["command"]
    assert meta["optimizer_steps"] == 3 and meta["epochs"] == 1
    a, _, _ = load_flow_model(tmp_path / "run")
    b, _, _ = load_flow_model(tmp_path / "model")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    for res, n_steps in [("full", 4), ("2", 4), ("2:2", 2), ("1:2", 2)]:
        out = tmp_path / f"sim-{res.replace(':', '_')}"
        assert main(["simulate", "--model", str(tmp_path / "model"), "--env", "box", "--steps", "4", "--resolution",
                     res, "--no-animation", "--quiet", "--out", str(out)]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["stable"] and report["resolution"]["sub_solvers"] == {"full": 8, "2": 2, "2:2": 1, "1:2": 4}[res]
        import h5py
        with h5py.File(out / "trajectory.h5") as f:
            assert len(f["times"]) == n_steps
            # the channel is 8 cells high plus two wall cells; a coarse simulation lives on a grid twice as coarse
            assert f["velocity_x"].shape[-1] == (5 if res.startswith("2") else 10)
    assert main(["simulate", "--model", str(tmp_path / "model"), "--resolution", "3", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def _distributed_worker(rank, world, port, model, env, calls, queue):
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    state = model.initial_state(env)
    with torch.no_grad():
        for _ in range(calls):
            state = model.distributed_forward(state, env)
    queue.put((rank, state.potential.numpy().copy(), state.pressure.numpy().copy()))  # plain arrays: no shared fds
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("shared", [False])
def test_sub_solvers_split_over_two_processes_give_the_single_process_outputs(shared):
    import socket

    import torch.multiprocessing as mp

    env = _env(batch=1)
    model = _randomised(_pair(2, 2, shared))  # 8 sub-solvers, 4 per rank
    with torch.no_grad():
        full = model.initial_state(env)
        for _ in range(3):
            full = model(full, env)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_distributed_worker, args=(2, port, model, env, 3, queue), nprocs=2, start_method="spawn")
    results = [queue.get() for _ in range(2)]
    assert sorted(r[0] for r in results) == [0, 1]
    for rank, pot, pres in ((r, torch.from_numpy(a), torch.from_numpy(b)) for r, a, b in results):  # every rank holds the whole full-resolution window
        if shared:  # a batched call over 4 sub-solvers instead of 8: the same maths in another summation order
            torch.testing.assert_close(pot, full.potential, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(pres, full.pressure, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(pot, full.potential) and torch.equal(pres, full.pressure), rank


# ------------------------------------------------------------------------------ the walls gauge
def _reference_velocity(env, steps=6):
    from pdeaccel.physics.incompressible import MACFlowSolver
    env64 = env.to(dtype=torch.float64)
    solver = MACFlowSolver(env64.replace(dt=0.25), advection="upwind3")
    return solver.run(solver.initial_state(), steps).velocity


def test_wall_potential_matches_the_numerical_solvers_stream_function_on_the_walls():
    """The anchored values are those of the stream function of a MACFlowSolver solution (an
    independent solver meeting the same boundary conditions), integrated from the low wall."""
    from pdeaccel.experiments.flow_eval import potential_of
    from pdeaccel.neural_flow import wall_potential
    env = _env(batch=1).to(dtype=torch.float64)
    mask, value = wall_potential(env)
    psi = potential_of(_reference_velocity(env), env)
    anchored = mask > 0
    assert int(anchored.sum()) > 2 * sum(env.grid.shape)  # both walls and the inflow column
    assert not bool(anchored[..., env.grid.shape[0] // 2, env.grid.shape[1] // 2])  # not the interior
    # to the reference projection's round-off (its divergence tolerance), far below one cell's flux
    torch.testing.assert_close(psi[anchored], value[anchored], rtol=0, atol=1e-7)
    flux = float(value[0, 0, 0, -1])  # the high wall's level is the inflow's volume flux
    assert flux > 0.1 and abs(flux - float(value.amax())) < 1e-12


def test_walls_gauge_holds_the_walls_between_sub_fields_and_free_does_not():
    from pdeaccel.neural_flow import wall_potential
    env = _env(batch=2)
    mask, value = wall_potential(env)
    errors = {}
    for gauge in ("walls", "free"):
        torch.manual_seed(0)
        model = _randomised(StaggeredFlowSolver(2, stride=2, window=1, hidden=4, levels=1, gauge=gauge, **SCALES))
        with torch.no_grad():
            state = model(model(model.initial_state(env), env), env)
        a = state.potential[:, -1]
        errors[gauge] = float(((a - value) * mask).abs().max())
        u = model.velocity(state, env)
        # faces whose two nodes are anchored (the channel's frame): prescribed by construction
        wall_x = mask[..., :, 1:] * mask[..., :, :-1]
        errors[gauge + " face"] = float((wall_x * (u[0] - env.face_velocity[0])).abs().max())
    assert errors["walls"] < 1e-5 and errors["walls face"] < 1e-5
    assert errors["free"] > 1e-2 and errors["free face"] > 1e-2, errors


def test_walls_gauge_is_refused_in_3d_with_the_fix():
    with pytest.raises(ValueError, match="gauge='free'"):
        StaggeredFlowSolver(3, stride=2, window=1, hidden=4, levels=1, gauge="walls", **SCALES)
    with pytest.raises(ValueError, match="'walls' or 'free'"):
        StaggeredFlowSolver(2, stride=2, window=1, hidden=4, levels=1, gauge="mean", **SCALES)


def test_stagger_benchmark_compares_training_at_equal_steps_and_judges_the_targets(tmp_path):
    """benchmarks/stagger.py's training table reads the runs' own metrics.csv, and its targets table
    is computed from the measured numbers (not written by hand)."""
    from test_flow_model import load_benchmark
    bench = load_benchmark("stagger")

    def run(name, residuals):
        d = tmp_path / name
        d.mkdir()
        lines = ["epoch,train_seconds,val_metric"] + [f"{e},36.0,{r}" for e, r in enumerate(residuals)]
        (d / "metrics.csv").write_text("\n".join(lines) + "\n")
        return bench.training_curve(d, 100)

    vanilla = run("v", [1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1])
    stag = run("s", [2.0, 1.0, 0.6, 0.4, 0.3, 0.3])
    row = bench.training_row("flow-2d-s2t1", stag, vanilla)
    assert row["optimiser_steps"] == 600 and abs(row["train_hours"] - 0.06) < 1e-12
    assert row["residual"] == 0.3  # median of the last epochs
    assert row["vanilla_residual_same_steps"] == 0.1 and row["steps_to_vanilla_final"] is None
    assert row["vanilla_steps_to_this_residual"] == 400
    cost = [{"setting": "flow-2d", "ndim": 2, "stride": 1, "window": 1, "sub_solvers": 1,
             "latency_per_fine_step_ms": 20.0, "one_sub_solver_latency_per_call_ms": 20.0},
            {"setting": "flow-2d-s2t1", "ndim": 2, "stride": 2, "window": 1, "sub_solvers": 4,
             "latency_per_fine_step_ms": 15.0, "one_sub_solver_latency_per_call_ms": 5.0,
             "parallel_latency_per_call_ms": 7.0, "workers": 2}]
    accuracy = [{"setting": "flow-2d", "kind": "cylinder", "momentum_residual": 0.1},
                {"setting": "flow-2d-s2t1", "kind": "cylinder", "momentum_residual": 0.12}]
    lines = bench.targets({"cost": cost, "accuracy": accuracy})
    row = next(line for line in lines if line.startswith("| flow-2d-s2t1"))
    assert "4× vs 2× ✓" in row and "1.4 with 2 workers ✗" in row and "1.2 ✓" in row


def test_a_shared_network_without_offset_input_is_the_same_map_for_every_sub_solver():
    """Given the same sub-field and the same view, every sub-solver of an offset-blind shared network
    returns the same update; told its offset, each returns its own."""
    env = _env(batch=1)
    outs = {}
    for offset_input in (True, False):
        torch.manual_seed(0)
        model = _randomised(StaggeredFlowSolver(2, stride=2, window=2, hidden=4, levels=1, shared_weights=True,
                                                offset_input=offset_input, **SCALES))
        views = model.sub_views(env)
        sub = model.decompose_state(model(model.initial_state(env), env), env, [0])
        same = type(sub)(tuple(range(model.sub_solvers)), sub.potential * model.sub_solvers,
                         sub.pressure * model.sub_solvers)
        with torch.no_grad():
            new = model._step_shared(same, [views[0]] * len(views))
        outs[offset_input] = max(float((p - new.potential[0]).abs().max()) for p in new.potential)
    assert outs[False] == 0.0 and outs[True] > 1e-4, outs
    with pytest.raises(ValueError, match="needs shared_weights=True"):
        StaggeredFlowSolver(2, stride=2, hidden=4, levels=1, offset_input=False, **SCALES)


def test_flow_experiments_take_every_optimiser_the_trainer_offers():
    from pdeaccel.config import ConfigError
    from pdeaccel.experiments.flow import validate_flow
    cfg = runner.resolve_config("flow-2d-s2t1", "cpu", ["train.optimizer=adam-fused"])
    validate_flow(cfg)  # the trainer's named option is accepted here too
    cfg["train"]["optimizer"] = "adamw"
    with pytest.raises(ConfigError, match="adam, adam-fused, sgd"):
        validate_flow(cfg)
