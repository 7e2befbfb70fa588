"""Data-parallel training with torch.distributed (gloo, 2 CPU processes).

The trainer-level tests spawn two processes that join a gloo group on a free local port and
train a tiny heat emulator (network then a Jacobi-solved implicit step, the heat-1d setting at 8
cells); the command-line tests go through torchrun (``pdeaccel train --nproc 2`` and
``python -m torch.distributed.run ... -m pdeaccel train``).
"""

from __future__ import annotations

import copy
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pdeaccel.grid import Grid
from pdeaccel.linalg import SolverConfig
from pdeaccel.nets import build_net
from pdeaccel.physics import HeatStepper
from pdeaccel.prdp import FixedSchedule, PRDPConfig, PRDPSchedule
from pdeaccel.train import distributed
from pdeaccel.train.distributed import DistContext, RankFailure
from pdeaccel.train.tasks import EmulatorTask
from pdeaccel.train.trainer import Trainer, TrainSettings

REPO = Path(__file__).resolve().parents[1]
WORLD = 2


# --------------------------------------------------------------------------- the toy problem
def _heat_task() -> EmulatorTask:
    """heat-1d in miniature: 8 cells, 10 windows; batch 7 gives uneven shards (4+3, then 2+1)."""
    grid = Grid(8, extent=1.0, boundary="dirichlet")
    stepper = HeatStepper(grid, nu=0.001 * 49, dt=1.0, scheme="implicit_euler")
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(12, 3, 1, 8, generator=gen)
    torch.manual_seed(0)
    net = build_net("mlp", in_features=8, out_features=8, width=16, depth=2, out_shape=(1, 8))
    solver = SolverConfig(method="jacobi", grad="implicit", rtol=1e-6)
    return EmulatorTask(net, lambda u, budgets: stepper(u, budgets.linear_solver(solver)), data[:10], data[10:],
                        batch_size=7)


def _trainer(ctx: DistContext, schedule, epochs: int, run_dir=None) -> Trainer:
    settings = TrainSettings(epochs=epochs, lr=1e-2, progress=False)
    return Trainer(_heat_task(), {"linear": schedule}, settings, run_dir, seed=5, dist=ctx)


def _prdp() -> PRDPSchedule:
    return PRDPSchedule(PRDPConfig(k0=2, delta_k=2, k_max=40, tau_step=0.999, tau_stop=0.5, ema_window=1,
                                   lookback=2))


def _outcome(trainer: Trainer) -> dict:
    rows = [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in trainer.rows]
    ledger = [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in trainer.ledger.state_dict()["epochs"]]
    return {"params": [p.detach().clone() for p in trainer.task.parameters()], "rows": rows, "ledger": ledger,
            "schedule": None if trainer.guarded is None else trainer.guarded.state_dict()}


# --------------------------------------------------------------------------- the ranks' side
def _scenario_fixed(ctx, out):
    trainer = _trainer(ctx, FixedSchedule(6), epochs=3)
    trainer.fit()
    return _outcome(trainer)


class _RankBiasedValidation:
    """Rank 1's validation metric keeps falling fast whatever the weights do (as a
    nondeterministic kernel or another validation share could make a rank's metric differ): on
    its own, its controller would never refine."""

    def __init__(self, task, rank):
        self.task, self.rank, self.calls = task, rank, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def validate(self, budgets):
        self.calls += 1
        metric = self.task.validate(budgets)
        return metric * 0.5 ** self.calls if self.rank == 1 else metric


def _scenario_prdp(ctx, out):
    trainer = _trainer(ctx, _prdp(), epochs=6)
    trainer.task = _RankBiasedValidation(trainer.task, ctx.rank)
    trainer.fit()
    return _outcome(trainer)


def _scenario_first_half(ctx, out):  # 2 ranks train epochs 0-1 into out/run
    _trainer(ctx, _prdp(), epochs=2, run_dir=out / "run").fit()
    return {}


def _scenario_resume(ctx, out):  # 2 ranks continue out/run (written by 1 process) to 4 epochs
    trainer = _trainer(ctx, _prdp(), epochs=4, run_dir=out / "run")
    assert trainer.resume() and trainer.epoch == 2
    trainer.fit()
    return _outcome(trainer)


def _scenario_stall(ctx, out):  # rank 1 stops answering; rank 0 must give up after the timeout
    if ctx.rank == 1:
        time.sleep(12)
    start = time.monotonic()
    try:
        _trainer(ctx, FixedSchedule(6), epochs=3).fit()
    finally:
        (out / f"elapsed{ctx.rank}").write_text(str(time.monotonic() - start))
    return {}


# a NeuralStagger model with 4 sub-solvers (stride 2, window 1, separate weights) on a 16 x 8 channel;
# SGD because Adam's step hardly changes when every gradient is scaled by 2 (a double-counted
# gradient must show), and an unroll of 2 calls so the gradient also flows from one call's
# gathered window into the next call's sub-solvers
STAGGER = ["physics.length=16", "physics.height=8", "pool.size=4", "pool.reset_every=2", "model.kind=staggered",
           "model.stride=2", "model.window=1", "model.shared_weights=false", "net.hidden=4", "net.levels=2",
           "data.validation=2", "data.validation_steps=2", "train.steps_per_epoch=3", "train.batch_size=2",
           "train.optimizer=sgd", "train.lr=0.05", "loss.unroll=2"]


def _stagger_trainer(ctx: DistContext, epochs: int = 2, shared: bool = False) -> Trainer:
    from pdeaccel.experiments.flow import build_flow
    from pdeaccel.experiments.runner import resolve_config

    cfg = resolve_config("flow-2d", overrides=STAGGER + [f"model.shared_weights={str(shared).lower()}"])
    built = build_flow(distributed.rank_pool_config(cfg, ctx))
    torch.manual_seed(0)
    with torch.no_grad():  # the sub-solvers start from a zero output layer: give every one its own
        for p in built.task.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    settings = TrainSettings(epochs=epochs, optimizer="sgd", lr=0.05, progress=False)
    return Trainer(built.task, {}, settings, seed=3, dist=ctx, shard_batches=False)


def _scenario_stagger_split(ctx, out):  # both ranks share one model's 4 sub-solvers (2 each)
    result = {}
    for shared in (False, True):  # separate networks; one network called on each rank's share
        trainer = _stagger_trainer(DistContext(ctx.rank, ctx.world_size, ctx.local_rank, ctx.timeout_s,
                                               sub_solver_ranks=2), shared=shared)
        assert trainer.task.net.placement.shares[ctx.rank] == (ctx.rank, ctx.rank + 2)
        trainer.fit()
        result[str(shared)] = {**_outcome(trainer), "pool": trainer.task.pool.potential.clone()}
    return result


def _scenario_replicas(ctx, out):  # 4 ranks = 2 replicas x 2 members, or 2 ranks = 2 replicas of 1
    groups = ctx.world_size // 2
    trainer = _stagger_trainer(DistContext(ctx.rank, ctx.world_size, ctx.local_rank, ctx.timeout_s,
                                           sub_solver_ranks=groups), shared=True)
    trainer.fit()
    return {**_outcome(trainer), "pool": trainer.task.pool.potential.clone()}


SCENARIOS = {"replicas": _scenario_replicas, "fixed": _scenario_fixed, "prdp": _scenario_prdp, "first_half": _scenario_first_half,
             "resume": _scenario_resume, "stall": _scenario_stall, "stagger_split": _scenario_stagger_split}


def _worker(rank: int, port: int, scenario: str, out: str, timeout: float, world: int = WORLD) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), PDEACCEL_DIST_TIMEOUT=str(timeout))
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    out = Path(out)
    try:
        ctx = distributed.init_from_environment()
        result = SCENARIOS[scenario](ctx, out)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        torch.save({"error": f"{type(exc).__name__}: {exc}"}, out / f"rank{rank}.pt")
        sys.stdout.flush()
        os._exit(0)  # a group that lost a peer is not torn down
    torch.save(result, out / f"rank{rank}.pt")
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(scenario: str, out: Path, timeout: float = 60.0, world: int = WORLD) -> list[dict]:
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_worker, args=(_free_port(), scenario, str(out), timeout, world), nprocs=world, join=True,
                       start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _assert_ranks_agree(results: list[dict]) -> None:
    for key in ("rows", "ledger", "schedule"):
        assert results[0][key] == results[1][key], key
    for a, b in zip(results[0]["params"], results[1]["params"]):
        assert torch.equal(a, b)


def _assert_close_to_single(result: dict, single: dict) -> None:
    for a, b in zip(result["params"], single["params"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert [r["k"] for r in result["rows"]] == [r["k"] for r in single["rows"]]
    for r, s in zip(result["rows"], single["rows"]):
        assert r["val_metric"] == pytest.approx(s["val_metric"], rel=1e-4)
        assert r["train_loss"] == pytest.approx(s["train_loss"], rel=1e-4)
        assert r["forward_iters"] == WORLD * s["forward_iters"]  # every rank runs K per solve: work of both
    for e, s in zip(result["ledger"], single["ledger"]):
        # per-sample counts summed over the ranks are the single process's; steps are global
        assert e["forward_iters_samples"] == s["forward_iters_samples"]
        assert e["backward_iters_samples"] == s["backward_iters_samples"]
        assert e["steps"] == s["steps"] == 2


# --------------------------------------------------------------------------- tests
def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    results = _spawn("fixed", tmp_path)
    assert "error" not in results[0], results[0].get("error")
    _assert_ranks_agree(results)
    single = _outcome(_run_single(FixedSchedule(6), epochs=3))
    _assert_close_to_single(results[0], single)
    start = _heat_task()
    assert not torch.equal(results[0]["params"][0], next(start.net.parameters()).detach())  # it trained


def _run_single(schedule, epochs, run_dir=None) -> Trainer:
    trainer = _trainer(DistContext(), schedule, epochs, run_dir)
    trainer.fit()
    return trainer


def test_prdp_decisions_are_identical_on_both_ranks(tmp_path):
    results = _spawn("prdp", tmp_path)
    assert "error" not in results[0], results[0].get("error")
    _assert_ranks_agree(results)  # K, refinements, PRDP state, ledger: the same on both ranks
    ks = [r["k"] for r in results[0]["rows"]]
    assert ks[-1] > ks[0] and len(results[0]["schedule"]["events"]) >= 2  # the controller did refine
    _assert_close_to_single(results[0], _outcome(_run_single(_prdp(), epochs=6)))


def test_resume_with_another_number_of_processes(tmp_path):
    full = _outcome(_run_single(_prdp(), epochs=4))
    # 2 ranks -> 1 process
    _spawn("first_half", tmp_path / "a")
    ckpt = sorted((tmp_path / "a" / "run" / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in ckpt] == ["epoch_00001.ckpt", "epoch_00002.ckpt"]  # rank 0 alone wrote them
    resumed = _trainer(DistContext(), _prdp(), epochs=4, run_dir=tmp_path / "a" / "run")
    assert resumed.resume() and resumed.epoch == 2
    resumed.fit()
    one = _outcome(resumed)
    for a, b in zip(one["params"], full["params"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert [r["k"] for r in one["rows"]] == [r["k"] for r in full["rows"]]
    # 1 process -> 2 ranks
    _run_single(_prdp(), epochs=2, run_dir=tmp_path / "b" / "run")
    results = _spawn("resume", tmp_path / "b")
    assert "error" not in results[0], results[0].get("error")
    _assert_ranks_agree(results)
    for a, b in zip(results[0]["params"], full["params"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert [r["k"] for r in results[0]["rows"]] == [r["k"] for r in full["rows"]]


def test_a_rank_that_stops_answering_ends_the_job_after_the_timeout(tmp_path):
    start = time.monotonic()
    results = _spawn("stall", tmp_path, timeout=3.0)
    assert time.monotonic() - start < 45
    assert "RankFailure" in results[0]["error"] and "lost the other ranks" in results[0]["error"]
    assert "--resume" in results[0]["error"]
    assert float((tmp_path / "elapsed0").read_text()) < 15  # the 3 s timeout, not rank 1's 12 s sleep


# --------------------------------------------------------------------------- pool sharding
def _pool_state(size: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"specs": [{"inflow": float(i + 100 * seed)} for i in range(size)],
            "potential": torch.randn(size, 1, 4, 4, generator=g), "pressure": torch.randn(size, 1, 3, 3, generator=g),
            "age": torch.arange(size), "steps": 7, "next_reset": seed % size, "rejected": 1, "perturbed": 0,
            "warm_specs": [], "warm_tensors": {}, "generator": g.get_state()}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_pool_states_merge_for_the_checkpoint_and_split_among_any_number_of_ranks():
    parts = [_pool_state(4, seed) for seed in (1, 2)]
    merged = distributed.merge_pool_states(parts)
    assert len(merged["specs"]) == 8 and merged["potential"].shape[0] == 8 and merged["rejected"] == 2
    back = distributed.split_pool_state(merged, 2)  # the same ranks get their own pools back exactly
    for part, original in zip(back, parts):
        assert _same({k: v for k, v in part.items()}, original)
    assert distributed.split_pool_state(merged, 1)[0] is merged  # one process: the union pool
    four = distributed.split_pool_state(merged, 4)
    assert [len(p["specs"]) for p in four] == [2, 2, 2, 2]
    assert torch.equal(torch.cat([p["potential"] for p in four]), merged["potential"])
    gens = [p["generator"] for p in four]
    assert all(not torch.equal(gens[i], gens[j]) for i in range(4) for j in range(i))
    with pytest.raises(ValueError, match="cannot share"):
        distributed.split_pool_state(merged, 3)


def test_each_rank_builds_its_share_of_the_pool():
    from pdeaccel.config import ConfigError
    from pdeaccel.experiments.runner import resolve_config

    cfg = resolve_config("flow-2d")
    cfg["pool"].update(size=64, reset_every=100, perturb_every=10, warm_bank=8, seed=1234)
    cfg["train"]["batch_size"] = 8
    assert distributed.rank_pool_config(cfg, DistContext()) is cfg
    r1 = distributed.rank_pool_config(cfg, DistContext(rank=1, world_size=2))
    assert r1["pool"] == {**cfg["pool"], "size": 32, "seed": 1235, "reset_every": 200, "perturb_every": 20,
                          "warm_bank": 4}
    assert r1["train"]["batch_size"] == 4 and cfg["pool"]["size"] == 64  # the run's own config is unchanged
    with pytest.raises(ConfigError, match="pool.size=64 must be divisible by the number of processes"):
        distributed.rank_pool_config(cfg, DistContext(rank=0, world_size=3))
    cfg["pool"]["size"] = 66
    with pytest.raises(ConfigError, match="train.batch_size=8 must be divisible by the number of processes"):
        distributed.rank_pool_config(cfg, DistContext(rank=0, world_size=3))


# --------------------------------------------------------------------------- the command line
HEAT = ["heat-1d", "--quiet", "--schedule", "fixed:4", "data.train=24", "data.validation=4", "train.batch_size=6"]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PDEACCEL_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO / "src")}


def _metrics(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_torchrun_matches_the_single_process_command(tmp_path):
    env = _env(tmp_path)
    one = subprocess.run([sys.executable, "-m", "pdeaccel", "train", *HEAT, "train.epochs=3", "--out",
                          str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "pdeaccel", "train", *HEAT, "train.epochs=3", "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("final validation metric") == 1 and "2 processes" in two.stdout  # rank 0 reports
    for a, b in zip(_metrics(tmp_path / "one"), _metrics(tmp_path / "two")):
        assert float(a["val_metric"]) == pytest.approx(float(b["val_metric"]), rel=1e-5)
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-5)


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        path = task / "children"
        if path.exists():
            children += [int(c) for c in path.read_text().split()]
    return children + [d for c in children for d in _descendants(c)]


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b"".join(env):
            return pid
    return None


@pytest.mark.skipif(not any(Path("/proc/self/task").glob("*/children")), reason="finds the rank's process through /proc")
def test_a_killed_rank_stops_the_job_with_a_clear_message_and_resume_takes_another_size(tmp_path):
    env, run = _env(tmp_path), tmp_path / "run"
    job = subprocess.Popen([sys.executable, "-m", "pdeaccel", "train", *HEAT, "train.epochs=2000", "--nproc", "2",
                            "--out", str(run)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not list((run / "checkpoints").glob("epoch_00002.ckpt")) and time.monotonic() < deadline:
            assert job.poll() is None, job.communicate()
            time.sleep(0.2)
        victim = _rank_pid(job.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert time.monotonic() - killed < 30
    assert job.returncode == distributed.RANK_FAILURE_EXIT
    assert "rank 1 of 2 was killed by SIGKILL" in err and f"--resume {run}" in err
    done = len(_metrics(run))
    assert done >= 2
    # continue in one process (another world size): the run picks up at its last checkpoint
    resumed = subprocess.run([sys.executable, "-m", "pdeaccel", "train", "heat-1d", "--quiet", "--resume", str(run),
                              f"train.epochs={done + 2}"], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    rows = _metrics(run)
    assert [int(r["epoch"]) for r in rows] == list(range(done + 2))


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


@pytest.mark.skipif(not any(Path("/proc/self/task").glob("*/children")), reason="finds the ranks through /proc")
def test_a_killed_launcher_takes_its_ranks_with_it_and_the_run_resumes(tmp_path):
    env, run = _env(tmp_path), tmp_path / "run"
    job = subprocess.Popen([sys.executable, "-m", "pdeaccel", "train", *HEAT, "train.epochs=2000", "--nproc", "2",
                            "--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks = []
    try:
        deadline = time.monotonic() + 90
        while not (run / "checkpoints" / "epoch_00002.ckpt").exists() and time.monotonic() < deadline:
            assert job.poll() is None
            time.sleep(0.2)
        ranks = [_rank_pid(job.pid, r) for r in range(2)]
        assert None not in ranks
        job.kill()  # SIGKILL: the launcher cannot stop its ranks itself
        job.wait()
        deadline = time.monotonic() + 10
        while any(_alive(r) for r in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        # orphaned ranks would go on training and writing the directory the user now resumes
        assert not any(_alive(r) for r in ranks)
    finally:
        for pid in [job.pid] + [r for r in ranks if r]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    done = len(_metrics(run))
    resumed = subprocess.run([sys.executable, "-m", "pdeaccel", "train", "heat-1d", "--quiet", "--resume", str(run),
                              f"train.epochs={done + 2}", "--nproc", "2"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert [int(r["epoch"]) for r in _metrics(run)] == list(range(done + 2))


def test_a_rank_whose_launcher_died_before_it_started_stops_instead_of_waiting_at_the_rendezvous(tmp_path):
    # the launcher was SIGKILLed while this rank was still importing torch: its parent is no longer
    # the launcher pdeaccel train --nproc named, and the rendezvous it is about to join has no host
    env = {**_env(tmp_path), "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), distributed.TIMEOUT_ENV: "120",
           distributed.LAUNCHER_ENV: str(os.getpid() + 10 ** 6)}
    start = time.monotonic()
    rank = subprocess.run([sys.executable, "-c", "from pdeaccel.train import distributed as d; "
                           "d.init_from_environment()"], env=env, capture_output=True, text=True, timeout=40)
    assert time.monotonic() - start < 30  # not the 120 s rendezvous timeout
    assert rank.returncode == distributed.RANK_FAILURE_EXIT and "the launcher (pid" in rank.stderr


FLOW = ["flow-2d", "--quiet", "physics.length=16", "physics.height=8", "pool.size=4", "pool.reset_every=2",
        "net.hidden=4", "net.levels=2", "data.validation=2", "data.validation_steps=2", "train.steps_per_epoch=3",
        "train.batch_size=2"]


def test_flow_pool_trains_on_two_processes_and_resumes_in_one(tmp_path):
    from pdeaccel.train import io

    env, run = _env(tmp_path), tmp_path / "flow"
    two = subprocess.run([sys.executable, "-m", "pdeaccel", "train", *FLOW, "train.epochs=2", "--nproc", "2", "--out",
                          str(run)], env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    _, state = io.latest_valid_checkpoint(run / "checkpoints")
    pool = state["task"]["pool"]
    assert state["world_size"] == 2 and len(pool["specs"]) == 4  # the union of two pools of 2
    assert [s["size"] for s in pool["shards"]] == [2, 2]
    assert not torch.equal(pool["shards"][0]["generator"], pool["shards"][1]["generator"])
    # every rank drew its own environments (pool.seed + rank): the halves differ
    assert pool["specs"][:2] != pool["specs"][2:]
    one = subprocess.run([sys.executable, "-m", "pdeaccel", "train", "flow-2d", "--quiet", "--resume", str(run),
                          "train.epochs=3"], env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    _, state = io.latest_valid_checkpoint(run / "checkpoints")
    assert state["epoch"] == 3 and len(state["task"]["pool"]["specs"]) == 4
    assert [int(r["epoch"]) for r in _metrics(run)] == [0, 1, 2]


# --------------------------------------------------------------------------- NeuralStagger over ranks
def test_staggered_sub_solvers_split_over_two_ranks_train_like_one_process(tmp_path):
    spawned = _spawn("stagger_split", tmp_path)
    assert "error" not in spawned[0], spawned[0].get("error")
    for shared in (False, True):
        results = [r[str(shared)] for r in spawned]
        _assert_ranks_agree(results)
        single = _stagger_trainer(DistContext(), shared=shared)
        start = [p.detach().clone() for p in single.task.parameters()]
        single.fit()
        one = {**_outcome(single), "pool": single.task.pool.potential}
        for a, b in zip(results[0]["rows"], one["rows"]):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
            assert a["val_metric"] == pytest.approx(b["val_metric"], rel=1e-5)
        moved = 0.0
        for a, b, s0 in zip(results[0]["params"], one["params"], start):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            moved = max(moved, float((b - s0).abs().max()))
        assert moved > 1e-3  # it trained: a gradient counted twice (or half) would show in every weight
        torch.testing.assert_close(results[0]["pool"], one["pool"], rtol=1e-5, atol=1e-6)  # the same rollouts


def test_rank_layout_of_sub_solver_groups_and_replicas():
    from pdeaccel.config import ConfigError
    from pdeaccel.experiments.runner import resolve_config

    # 8 ranks, each model's sub-solvers split over 4 of them: 2 replicas of 4 consecutive ranks
    layout = [distributed.rank_layout(r, 8, 4) for r in range(8)]
    assert layout == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert [distributed.replica_ranks(d, 8, 4) for d in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [distributed.rank_layout(r, 8, 1) for r in (0, 5)] == [(0, 0), (5, 0)]  # plain data parallelism
    assert [distributed.rank_layout(r, 8, 8) for r in (0, 5)] == [(0, 0), (0, 5)]  # one model over all 8
    ctx = DistContext(rank=6, world_size=8, sub_solver_ranks=4)
    assert (ctx.replicas, ctx.replica, ctx.member) == (2, 1, 2)
    # s2t2 in 2D has 8 sub-solvers: 2 per member; 6 of them over 4 members: 2, 2, 1, 1
    assert distributed.sub_solver_shares(8, 4) == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert distributed.sub_solver_shares(6, 4) == ((0, 4), (1, 5), (2,), (3,))
    with pytest.raises(ConfigError, match="more than the model's 4 sub-solvers"):
        distributed.sub_solver_shares(4, 8)
    with pytest.raises(ConfigError, match="multiple of it.*this job has 6"):
        DistContext(rank=0, world_size=6, sub_solver_ranks=4)
    with pytest.raises(ConfigError, match="sub-solver-ranks must be an integer >= 1"):
        distributed.check_layout(4, 0)
    # the replicas (not the ranks) share the pool and the batch; a replica's ranks build the same pool
    cfg = resolve_config("flow-2d-s2t1")
    cfg["pool"].update(size=64, seed=1234)
    cfg["train"]["batch_size"] = 8
    parts = [distributed.rank_pool_config(cfg, DistContext(rank=r, world_size=8, sub_solver_ranks=4)) for r in range(8)]
    assert [p["pool"]["seed"] for p in parts] == [1234] * 4 + [1235] * 4
    assert {(p["pool"]["size"], p["train"]["batch_size"]) for p in parts} == {(32, 4)}
    assert distributed.rank_pool_config(cfg, DistContext(rank=1, world_size=2, sub_solver_ranks=2)) is cfg
    with pytest.raises(ConfigError, match="model.kind=vanilla has none"):
        distributed.rank_pool_config(resolve_config("flow-2d"), DistContext(rank=0, world_size=2, sub_solver_ranks=2))
    with pytest.raises(ConfigError, match="more than the model's 4 sub-solvers"):
        distributed.rank_pool_config(cfg, DistContext(rank=0, world_size=8, sub_solver_ranks=8))
    with pytest.raises(ConfigError, match="has none"):  # a data experiment has no sub-solvers either
        distributed.rank_pool_config(resolve_config("heat-1d"), DistContext(rank=0, world_size=2, sub_solver_ranks=2))


def test_the_sub_solver_split_is_refused_clearly_on_the_command_line(tmp_path, capsys):
    from pdeaccel.cli import main

    assert main(["train", *FLOW, "--sub-solver-ranks", "2", "--nproc", "2", "--out", str(tmp_path / "a")]) == 2
    assert "model.kind=vanilla has none" in capsys.readouterr().err
    assert main(["train", "flow-2d-s2t1", "--quiet", "--sub-solver-ranks", "2", "--nproc", "3",
                 "--out", str(tmp_path / "b")]) == 2
    assert "multiple of it" in capsys.readouterr().err
    assert main(["train", "flow-2d-s2t1", "--quiet", "--sub-solver-ranks", "2", "--out", str(tmp_path / "c")]) == 2
    assert "this job has 1" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_split_sub_solvers_train_from_the_command_line_and_resume_in_one_process(tmp_path):
    from pdeaccel.train import io

    env, run = _env(tmp_path), tmp_path / "split"
    small = [o for o in FLOW[2:] if not o.startswith("net.levels")] + ["net.levels=1"]  # the sub-grid is 8 x 4
    two = subprocess.run([sys.executable, "-m", "pdeaccel", "train", "flow-2d-s2t1", "--quiet", *small,
                          "train.epochs=2", "--nproc", "2", "--sub-solver-ranks", "2", "--out", str(run)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    _, state = io.latest_valid_checkpoint(run / "checkpoints")
    assert state["world_size"] == 2 and state["sub_solver_ranks"] == 2
    assert len(state["task"]["pool"]["specs"]) == 4 and "shards" not in state["task"]["pool"]  # one replica's pool
    one = subprocess.run([sys.executable, "-m", "pdeaccel", "train", "flow-2d-s2t1", "--quiet", "--resume", str(run),
                          "train.epochs=3"], env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    assert [int(r["epoch"]) for r in _metrics(run)] == [0, 1, 2]


# --------------------------------------------------------------------------- the device option
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_device_cuda_without_a_gpu_is_refused_clearly(tmp_path, capsys, monkeypatch):
    from pdeaccel.cli import main
    from pdeaccel.config import ConfigError

    monkeypatch.setenv("PDEACCEL_DATA", str(tmp_path / "data"))

    assert distributed.resolve_device("cpu") == distributed.resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="--device cuda: .*(no CUDA support|no CUDA GPU).*--device cpu"):
        distributed.resolve_device("cuda")
    with pytest.raises(ConfigError, match="allowed are cpu, cuda, auto"):
        distributed.resolve_device("gpu")
    for extra in ([], ["--nproc", "2"]):  # refused before anything is built, written or launched
        assert main(["train", *HEAT, "train.epochs=1", "--device", "cuda", *extra, "--out", str(tmp_path / "r")]) == 2
        assert "--device cuda:" in capsys.readouterr().err
        assert not (tmp_path / "r").exists()
    # --device cpu (the default) and auto train here
    assert main(["train", *HEAT, "train.epochs=1", "--device", "auto", "--out", str(tmp_path / "auto")]) == 0


def test_a_task_that_cannot_move_to_a_gpu_is_refused_by_name():
    from pdeaccel.config import ConfigError

    with pytest.raises(ConfigError, match="EmulatorTask.*trains on the CPU only.*--device cpu"):
        _trainer(DistContext(device="cuda:0"), FixedSchedule(2), epochs=1)


@pytest.mark.slow
def test_four_ranks_as_two_replicas_of_two_sub_solver_groups_train_like_two_data_parallel_ranks(tmp_path):
    # replica d of the 4-rank job builds the pool of rank d of the 2-rank job (seed pool.seed + d) and
    # trains on the same half of each batch: only the sub-solvers' placement differs
    four = _spawn("replicas", tmp_path / "four", world=4)
    assert all("error" not in r for r in four), [r.get("error") for r in four]
    two = _spawn("replicas", tmp_path / "two", world=2)
    assert "error" not in two[0], two[0].get("error")
    for r in four[1:]:  # every rank holds the same model
        for a, b in zip(r["params"], four[0]["params"]):
            assert torch.equal(a, b)
    assert torch.equal(four[0]["pool"], four[1]["pool"]) and torch.equal(four[2]["pool"], four[3]["pool"])
    assert not torch.equal(four[0]["pool"], four[2]["pool"])  # the replicas' own pools
    for a, b in zip(four[0]["rows"], two[0]["rows"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    for a, b in zip(four[0]["params"], two[0]["params"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for four_pool, two_pool in ((four[0]["pool"], two[0]["pool"]), (four[2]["pool"], two[1]["pool"])):
        torch.testing.assert_close(four_pool, two_pool, rtol=1e-5, atol=1e-6)
