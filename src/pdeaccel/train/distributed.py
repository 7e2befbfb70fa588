"""Data-parallel training across processes with ``torch.distributed``.

One process per rank, started by torchrun (``torchrun --nproc_per_node=N -m pdeaccel train ...``)
or by ``pdeaccel train --nproc N`` (:func:`launch`, torchrun's elastic launcher in-process). The
:class:`~pdeaccel.train.trainer.Trainer` does the rest with the :class:`DistContext` of its
process:

* **Gradients** are all-reduced explicitly once per optimiser step (one flat buffer per dtype,
  each rank's gradient weighted by its number of samples), not through
  ``DistributedDataParallel``: a task's parameters are not always one module (``InverseTask``
  holds a bare ``nn.Parameter``, the flow tasks call ``model.trajectory``/``initial_state``,
  which a DDP wrapper hides), and the divergence guard must see the *reduced* loss and gradient
  so that every rank rolls back at the same step. The loss value and the guard's flags travel in
  the same reduction: every decision (guard, PRDP, target metric) is taken from identical numbers
  on every rank.
* **Data** (emulator/correction windows): every rank holds the whole dataset and draws the same
  global minibatch order from the same seed; rank ``r`` trains on the ``r``-th contiguous chunk
  of each global minibatch (``tensor_split``). ``N`` ranks with global batch ``B`` therefore
  compute the single-process gradient of the same minibatch up to the order of float additions,
  for any ``N`` (also after a resume with another ``N``).
* **Flow pool**: each rank owns its own pool (see :func:`rank_pool_config`); checkpoints hold the
  union (:func:`merge_pool_states`), which :func:`split_pool_state` divides among any number of
  ranks on resume.
* **Validation** runs on every rank (the same network on the same held-out set); rank 0's metric
  is broadcast, so the PRDP controller decides on identical numbers everywhere. The iteration
  ledger's solver counts are summed over ranks (the work of all of them).
* **Checkpoints** are written by rank 0 only (atomically), read by rank 0 and broadcast, so no
  shared file system is needed and any number of ranks can resume them.
* **NeuralStagger split over ranks** (``--sub-solver-ranks G``): the sub-solvers of one model
  replica run on ``G`` ranks (:func:`rank_layout`: replica ``d`` is ranks ``d·G … d·G+G-1``,
  which talk every model call, so they are neighbours, on one node when the node has ``G``
  devices); their outputs are all-gathered (differentiably, :class:`~pdeaccel.stagger_placement._GatherShares`)
  into the full-resolution window on which every member evaluates the physics loss.
  ``world_size / G`` replicas train data parallel on their own pools: the members of a replica
  build the same pool (seed ``pool.seed + replica``) and draw the same batch. Each parameter's
  gradient is the sum over the members (each sub-solver's gradient comes from its own member
  only) averaged over the replicas.
* **Failure**: a collective that loses a peer (a rank died: gloo reports the broken connection
  at once) or waits longer than the timeout (``PDEACCEL_DIST_TIMEOUT`` seconds, default 1800)
  raises :class:`RankFailure`; torchrun's agent stops the other ranks of a job whose rank died.
  A rank whose launcher died stops itself (:func:`_exit_with_launcher`).
* **Devices** (``--device``, :func:`resolve_device`): the CPU with gloo, or GPU ``LOCAL_RANK``
  per rank with NCCL for CUDA tensors (the trainer moves the task there with ``task.to``).
"""

from __future__ import annotations

import copy
import datetime
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch

T = TypeVar("T")

TIMEOUT_ENV = "PDEACCEL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
#: exit status of a command whose ranks lost each other (a rank died or timed out)
RANK_FAILURE_EXIT = 4


class RankFailure(RuntimeError):
    """A collective operation failed: another rank died, or did not answer within the timeout."""


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or raw == "":
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${TIMEOUT_ENV}={raw!r} is not a number of seconds.") from None
    if not value > 0:
        raise ValueError(f"${TIMEOUT_ENV}={raw!r} must be > 0 seconds.")
    return value


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; every collective is a no-op for ``world_size == 1``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    #: ranks one model replica's NeuralStagger sub-solvers are split over (1: none split; every
    #: rank runs the whole model). See :func:`rank_layout`.
    sub_solver_ranks: int = 1
    #: where this rank trains (:func:`resolve_device`): "cpu" or "cuda:<i>"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.sub_solver_ranks != 1:
            check_layout(self.world_size, self.sub_solver_ranks)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def replicas(self) -> int:
        """Data-parallel replicas of the model: each trains on its own share of every batch/pool."""
        return self.world_size // self.sub_solver_ranks

    @property
    def replica(self) -> int:
        return rank_layout(self.rank, self.world_size, self.sub_solver_ranks)[0]

    @property
    def member(self) -> int:
        """This rank's place among the ranks that share its replica's sub-solvers."""
        return rank_layout(self.rank, self.world_size, self.sub_solver_ranks)[1]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------- collectives
    def _failed(self, what: str, exc: BaseException) -> RankFailure:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RankFailure(
            f"rank {self.rank} of {self.world_size} lost the other ranks during {what}: {first[:300]}. "
            f"Another rank died or did not answer within {self.timeout_s:g} s (${TIMEOUT_ENV}); its own "
            "output says why. Completed epochs are checkpointed: continue with `pdeaccel train NAME "
            "--resume RUN_DIR` with the same or another number of processes.")

    def _collective(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RankFailure:
            raise
        except RuntimeError as exc:  # DistBackendError, DistNetworkError, gloo's connection errors
            raise self._failed(what, exc) from exc

    def all_reduce_sum(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """Sum ``tensor`` over the ranks in place (and return it)."""
        if self.distributed:
            import torch.distributed as dist

            self._collective(what, lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
        return tensor

    def broadcast_tensor(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (in place)."""
        if self.distributed:
            import torch.distributed as dist

            self._collective(what, lambda: dist.broadcast(tensor, src=0))
        return tensor

    def broadcast_object(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` (pickled) on every rank; the others' argument is ignored."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        self._collective(what, lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def all_gather_object(self, obj: Any, what: str) -> list[Any]:
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        self._collective(what, lambda: dist.all_gather_object(out, obj))
        return out

    def gather_object(self, obj: Any, what: str) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); ``None`` elsewhere."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        self._collective(what, lambda: dist.gather_object(obj, out, dst=0))
        return out

    def barrier(self, what: str) -> None:
        if self.distributed:
            import torch.distributed as dist

            self._collective(what, dist.barrier)

    def check_same(self, value: Any, what: str) -> None:
        """Raise :class:`RankFailure` unless every rank holds the same ``value``."""
        if not self.distributed:
            return
        values = self.all_gather_object(value, what)
        if any(v != values[0] for v in values[1:]):
            raise RankFailure(f"the ranks disagree on {what}: " + ", ".join(f"rank {r}: {v!r}" for r, v in
                                                                           enumerate(values))
                              + ". This is a bug in pdeaccel's distributed training; please report it.")

    def on_main(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` on rank 0 only; every rank returns its result or raises its exception."""
        return self._main_then(fn, what, share_result=True)

    def main_first(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` on rank 0, then (if it succeeded) on the other ranks; rank 0's exception is
        raised on every rank. For work whose side effects the others reuse (a dataset cache)."""
        return self._main_then(fn, what, share_result=False)

    def _main_then(self, fn: Callable[[], T], what: str, share_result: bool) -> T:
        """Rank 0 runs ``fn`` and broadcasts its outcome; the others receive its result
        (``share_result``) or run ``fn`` themselves once rank 0 succeeded."""
        if not self.distributed:
            return fn()
        if self.is_main:
            try:
                result = fn()
            except Exception as exc:
                self.broadcast_object(("error", _portable(exc)), what)
                raise
            self.broadcast_object(("ok", result if share_result else None), what)
            return result
        kind, value = self.broadcast_object(None, what)
        if kind == "error":
            raise _rebuilt(value)
        return value if share_result else fn()


def _portable(exc: BaseException) -> tuple[type, str]:
    return type(exc), str(exc)


def _rebuilt(value: tuple[type, str]) -> BaseException:
    cls, message = value
    try:
        exc = cls(message)
        if str(exc) != message:
            raise TypeError
    except Exception:  # noqa: BLE001 - an exception class with another signature
        exc = RuntimeError(f"{cls.__name__}: {message}")
    exc.from_main_rank = True  # rank 0 raised (and reported) it too
    return exc


# ---------------------------------------------------------------------- process group
_CONTEXT = DistContext()


def context() -> DistContext:
    """This process's context (a single process until :func:`init_from_environment`)."""
    return _CONTEXT


def environment_world_size() -> int:
    """``WORLD_SIZE`` as torchrun set it (1 outside a torchrun job)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(raw))
    except ValueError:
        raise ValueError(f"$WORLD_SIZE={raw!r} is not an integer.") from None


DEVICES = ("cpu", "cuda", "auto")


def resolve_device(name: str, local_rank: int = 0) -> str:
    """The device a rank trains on: ``"cpu"``; ``"cuda"`` (GPU ``local_rank`` modulo the GPUs
    this process sees, as torchrun numbers a node's ranks; a ``ConfigError`` if there is none);
    ``"auto"``: CUDA where available, else the CPU."""
    from ..config import ConfigError

    if name not in DEVICES:
        raise ConfigError(f"--device {name!r}: allowed are {', '.join(DEVICES)}.")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        why = ("this PyTorch build has no CUDA support (torch " + torch.__version__ + ")"
               if torch.version.cuda is None else "no CUDA GPU is visible to this process"
               + (f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r})"
                  if "CUDA_VISIBLE_DEVICES" in os.environ else ""))
        raise ConfigError(f"--device cuda: {why}. Train on the CPU with --device cpu (the default), or "
                          "--device auto to use a GPU only where there is one.")
    count = torch.cuda.device_count()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if per_node > count:
        # NCCL refuses two ranks on one GPU ("Duplicate GPU detected")
        raise ConfigError(f"--device cuda: {per_node} processes on this node but {count} GPU(s) visible; start at "
                          f"most {count} per node (torchrun --nproc_per_node={count}).")
    return f"cuda:{local_rank % count}"


def init_from_environment(sub_solver_ranks: int = 1, device: str = "cpu") -> DistContext:
    """Join the job torchrun started (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``); a single process if ``WORLD_SIZE`` is unset or 1.

    ``device`` (:func:`resolve_device`): with ``cpu`` the backend is gloo; with a GPU each rank
    uses GPU ``LOCAL_RANK`` and the backend is ``"cpu:gloo,cuda:nccl"`` (NCCL for the CUDA
    tensors: gradients, parameters, NeuralStagger's sub-fields; gloo for the small CPU tensors and
    objects: losses, flags, checkpoint parts).
    """
    global _CONTEXT
    world = environment_world_size()
    check_layout(world, sub_solver_ranks)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = resolve_device(device, local_rank)
    if where != "cpu":
        torch.cuda.set_device(torch.device(where))
    if world == 1:
        _CONTEXT = DistContext(device=where)
        return _CONTEXT
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run with one process.")
    timeout = timeout_seconds()
    rank = int(os.environ["RANK"])
    # from the start: a rank whose launcher died during the rendezvous would wait out the timeout
    _exit_with_launcher(rank, world)
    if not dist.is_initialized():
        backend = "gloo" if where == "cpu" else "cpu:gloo,cuda:nccl"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        except RuntimeError as exc:
            raise RankFailure(f"rank {rank} of {world} could not join the job ({str(exc).splitlines()[0][:300]}); "
                              f"the other ranks did not start or did not answer within {timeout:g} s.") from exc
    _CONTEXT = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                           timeout_s=timeout, sub_solver_ranks=sub_solver_ranks, device=where)
    return _CONTEXT


LAUNCHER_POLL_S = 0.2
#: set by :func:`launch` for its ranks: the launcher's pid, so that a rank whose launcher died
#: before the rank started watching it (while Python and torch were still loading) knows it
LAUNCHER_ENV = "PDEACCEL_LAUNCHER_PID"


def _exit_with_launcher(rank: int, world: int) -> None:
    """Stop this rank as soon as the process that started it (torchrun's agent, or
    ``pdeaccel train --nproc``) is gone.

    A SIGKILLed launcher cannot stop its ranks, and gloo does not need it after the rendezvous:
    the orphaned ranks would train on, still writing the run directory, while the user (or a
    supervisor) resumes the same directory with a new job. A daemon thread watches the parent
    (re-parenting changes ``getppid()``) and ends the process at once; an interrupted checkpoint
    write leaves only a temporary file, which a resume removes. Under ``pdeaccel train --nproc``
    the launcher's pid comes from ``$PDEACCEL_LAUNCHER_PID``; under an external torchrun it is the
    parent at the time of this call (a torchrun agent killed in the second before leaves its
    ranks waiting at the rendezvous until the timeout, without writing anything).
    """
    import threading
    import time

    raw = os.environ.get(LAUNCHER_ENV, "")
    parent = int(raw) if raw.isdigit() else os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                print(f"pdeaccel [rank {rank}/{world}]: the launcher (pid {parent}) is gone; stopping "
                      "this rank. Completed epochs are checkpointed: continue with `pdeaccel train NAME --resume "
                      "RUN_DIR`.", file=sys.stderr, flush=True)
                os._exit(RANK_FAILURE_EXIT)
            time.sleep(LAUNCHER_POLL_S)

    threading.Thread(target=watch, name="pdeaccel-launcher-watch", daemon=True).start()


def shutdown() -> None:
    """Leave the process group (after a successful run)."""
    global _CONTEXT
    if _CONTEXT.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            # every rank reaches the end before any leaves: a gloo peer torn down while another is
            # still sending aborts the process ("terminate called without an active exception")
            try:
                dist.barrier()
            except RuntimeError:
                pass  # a peer is gone already; leaving is all that is left to do
            dist.destroy_process_group()
    _CONTEXT = DistContext()


# ---------------------------------------------------------------------- batches
def shard_batch(batch: Any, ctx: DistContext) -> Any:
    """The contiguous chunk of a global minibatch (a tensor, or a tuple/list of tensors of one
    length) that this rank's replica trains on; ``None`` (a task without data, e.g. an inverse
    problem) is kept."""
    if ctx.replicas == 1 or batch is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.tensor_split(ctx.replicas)[ctx.replica]
    if isinstance(batch, (tuple, list)) and batch and all(isinstance(b, torch.Tensor) for b in batch):
        return type(batch)(b.tensor_split(ctx.replicas)[ctx.replica] for b in batch)
    raise TypeError(f"cannot split a training batch of type {type(batch).__name__} among ranks; a task trained "
                    "with several processes yields tensors (or tuples of tensors) with the samples first.")


def sample_count(batch: Any) -> int:
    """How many samples a (local) batch holds: the weight of its gradient in the all-reduce."""
    if batch is None:
        return 1
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return sample_count(batch[0])
    try:
        return len(batch)
    except TypeError:
        return 1


# ---------------------------------------------------------------------- the flow pool
def rank_pool_config(cfg: dict[str, Any], ctx: DistContext) -> dict[str, Any]:
    """The config rank ``ctx.rank`` builds its experiment from: for a pool experiment with
    ``N > 1`` replicas (:attr:`DistContext.replicas`: ranks, or ranks / ``sub_solver_ranks``), the
    replica's own pool of ``pool.size / N`` environments, seed ``pool.seed + replica``,
    ``reset_every``/``perturb_every`` ``N`` times longer, a warm bank of ``warm_bank / N``
    (at least 1) and a batch of ``train.batch_size / N``. The ranks of one replica build the same.

    What "the same result as one process" means for the pool: the union of the ``N`` replica pools
    has the single pool's size, and every environment is advanced ``B / size`` model calls per
    optimiser step and reset once per ``size · reset_every`` steps on average, as in the single
    pool, so the distribution of states (their ages) is the same; each optimiser step averages the
    gradient over ``B`` environments drawn from it. The environments themselves are other samples
    (other seeds), so the runs agree statistically, not number for number. With one replica
    (one process, or every rank sharing one model's sub-solvers) the run is the single process's.

    A job that splits sub-solvers (``ctx.sub_solver_ranks > 1``) is checked here too: it needs a
    NeuralStagger model (``model.kind=staggered``) with at least as many sub-solvers as ranks share
    them.
    """
    if ctx.sub_solver_ranks > 1:
        check_sub_solver_split(cfg, ctx.sub_solver_ranks)
    if ctx.replicas == 1 or "pool" not in cfg:
        return cfg
    from ..config import ConfigError

    n = ctx.replicas
    what = "number of processes" if ctx.sub_solver_ranks == 1 else \
        f"number of model replicas ({ctx.world_size} processes / --sub-solver-ranks {ctx.sub_solver_ranks})"
    pc, t = cfg["pool"], cfg["train"]
    for key, value in (("pool.size", pc["size"]), ("train.batch_size", t["batch_size"])):
        if value % n:
            raise ConfigError(f"{key}={value} must be divisible by the {what} ({n}): each one "
                              f"owns 1/{n} of it.")
    out = copy.deepcopy(cfg)
    out["pool"].update(size=pc["size"] // n, seed=pc["seed"] + ctx.replica, reset_every=pc["reset_every"] * n,
                       perturb_every=pc["perturb_every"] * n, warm_bank=max(1, pc["warm_bank"] // n))
    if pc.get("young"):
        # young / N slots per replica, reset N times less often: the same share of the pool and the
        # same lifetime in model calls as the single pool's young slots
        out["pool"].update(young=max(1, pc["young"] // n), young_reset_every=pc["young_reset_every"] * n)
    out["train"]["batch_size"] = t["batch_size"] // n
    return out


# ---------------------------------------------------------------------- NeuralStagger over ranks
def check_layout(world_size: int, sub_solver_ranks: int) -> None:
    """Refuse a split of sub-solvers that the job's ranks cannot form (a ``ConfigError``)."""
    from ..config import ConfigError

    if isinstance(sub_solver_ranks, bool) or not isinstance(sub_solver_ranks, int) or sub_solver_ranks < 1:
        raise ConfigError(f"--sub-solver-ranks must be a positive integer, got {sub_solver_ranks!r}.")
    if world_size % sub_solver_ranks:
        raise ConfigError(f"--sub-solver-ranks {sub_solver_ranks} needs a number of processes that is a multiple "
                          f"of it (each model replica's sub-solvers are split over {sub_solver_ranks} processes); "
                          f"this job has {world_size}.")


def rank_layout(rank: int, world_size: int, sub_solver_ranks: int) -> tuple[int, int]:
    """``(replica, member)`` of ``rank``: replica ``rank // G`` and its place ``rank % G`` among the
    ``G = sub_solver_ranks`` ranks that share that replica's sub-solvers.

    A replica's ranks are consecutive because they exchange the sub-fields at every model call
    (forward) while the replicas meet once per optimiser step (the gradient all-reduce); torchrun
    numbers the ranks of a node consecutively, so with ``G`` dividing the GPUs per node a replica
    stays on one node.
    """
    check_layout(world_size, sub_solver_ranks)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a job of {world_size} processes.")
    return rank // sub_solver_ranks, rank % sub_solver_ranks


def replica_ranks(replica: int, world_size: int, sub_solver_ranks: int) -> list[int]:
    """The ranks that share replica ``replica``'s sub-solvers (member order)."""
    return [r for r in range(world_size) if rank_layout(r, world_size, sub_solver_ranks)[0] == replica]


def sub_solver_shares(sub_solvers: int, sub_solver_ranks: int) -> tuple[tuple[int, ...], ...]:
    """The sub-solvers each member of a replica runs: round-robin, so that with
    ``sub_solvers % G != 0`` the shares differ by at most one."""
    if sub_solver_ranks > sub_solvers:
        from ..config import ConfigError

        raise ConfigError(f"--sub-solver-ranks {sub_solver_ranks} is more than the model's {sub_solvers} "
                          "sub-solvers: some processes would have none to run. Give at most "
                          f"{sub_solvers}.")
    from ..stagger import member_shares

    return member_shares(sub_solvers, sub_solver_ranks)


def check_sub_solver_split(cfg: dict[str, Any], sub_solver_ranks: int) -> None:
    """A ``ConfigError`` unless ``cfg`` trains a NeuralStagger model with at least
    ``sub_solver_ranks`` sub-solvers."""
    from ..config import ConfigError

    model = cfg.get("model")
    if not isinstance(model, dict) or model.get("kind") != "staggered":
        kind = model.get("kind", "vanilla") if isinstance(model, dict) else None
        what = f"model.kind={kind}" if kind else f"the experiment {cfg.get('experiment', '')!r}".replace(" ''", "")
        raise ConfigError(f"--sub-solver-ranks {sub_solver_ranks} splits a NeuralStagger model's sub-solvers over "
                          f"processes, but {what} has none (use a staggered flow experiment such as "
                          "flow-2d-s2t1, or model.kind=staggered; leave --sub-solver-ranks out for plain data "
                          "parallelism).")
    ndim = cfg["physics"]["ndim"]
    count = int(model["stride"]) ** ndim * int(model["window"])
    sub_solver_shares(count, sub_solver_ranks)


def place_sub_solvers(model: Any, ctx: DistContext) -> None:
    """Split ``model``'s sub-solvers over the ranks of this rank's replica (:func:`rank_layout`).

    Collective: every rank of the job calls it (``new_group`` is), in the same order. The
    all-gather the model calls goes through :meth:`DistContext._collective`, so a lost peer raises
    :class:`RankFailure` as every other collective does.
    """
    if ctx.sub_solver_ranks == 1:
        return
    from ..stagger import SubSolverPlacement

    split = getattr(model, "split_sub_solvers", None)
    if split is None:
        from ..config import ConfigError

        raise ConfigError(f"--sub-solver-ranks {ctx.sub_solver_ranks}: the model ({type(model).__name__}) has no "
                          "sub-solvers to split; only a NeuralStagger model (model.kind=staggered) can be.")
    import torch.distributed as dist

    group = None  # one replica: its group is the whole job
    if ctx.replicas > 1:
        for d in range(ctx.replicas):  # every rank creates every group, in the same order
            pg = ctx._collective("creating the sub-solver groups",
                                 lambda d=d: dist.new_group(replica_ranks(d, ctx.world_size, ctx.sub_solver_ranks)))
            if d == ctx.replica:
                group = pg
    size = ctx.sub_solver_ranks

    def all_gather(flat: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(flat) for _ in range(size)]
        ctx._collective("gathering the sub-solvers' outputs", lambda: dist.all_gather(out, flat, group=group))
        return out

    split(SubSolverPlacement(sub_solver_shares(model.sub_solvers, size), ctx.member, all_gather))


_POOL_RANK_KEYS = ("generator", "steps", "next_reset", "next_young", "rejected", "perturbed", "warm_specs", "warm_tensors")


def _per_environment_keys(state: dict[str, Any]) -> list[str]:
    n = len(state["specs"])
    return [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n
            and k not in _POOL_RANK_KEYS]


def merge_pool_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One pool state holding the environments of every rank's pool (rank order).

    It loads into a single-process pool of the summed size; ``shards`` keeps each rank's own
    generator, counters and warm bank, so the same number of ranks resumes them exactly.
    """
    states = list(states)
    if len(states) == 1:
        return states[0]
    merged = copy.deepcopy({k: v for k, v in states[0].items() if k != "shards"})
    merged["specs"] = [copy.deepcopy(s) for st in states for s in st["specs"]]
    for key in _per_environment_keys(states[0]):
        merged[key] = torch.cat([st[key] for st in states])
    merged["rejected"] = sum(int(st["rejected"]) for st in states)
    merged["perturbed"] = sum(int(st.get("perturbed", 0)) for st in states)
    merged["next_reset"] = 0
    merged["shards"] = [{"size": len(st["specs"]), **{k: copy.deepcopy(st[k]) for k in _POOL_RANK_KEYS if k in st}}
                        for st in states]
    return merged


def split_pool_state(state: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Divide a pool state (one rank's, or a :func:`merge_pool_states` union) among ``n`` ranks.

    With the ranks it was merged from, every rank gets its own pool back exactly. Otherwise the
    environments are divided in order (``size`` must be divisible by ``n``); rank ``r`` continues
    with the generator and warm bank of the old rank ``r mod M`` (re-seeded from it for ``r >= M``
    so no two ranks draw alike) and its reset pointer at 0.
    """
    shards = state.get("shards")
    size = len(state["specs"])
    if n == 1:
        return [state]
    if size % n:
        raise ValueError(f"the checkpointed pool holds {size} environments, which {n} processes cannot share "
                         "equally; resume with a number of processes that divides it.")
    per = size // n
    keys = _per_environment_keys(state)
    out = []
    old = shards or [{k: state[k] for k in _POOL_RANK_KEYS if k in state}]
    exact = shards is not None and len(shards) == n and all(s["size"] == per for s in shards)
    for r in range(n):
        part = {k: copy.deepcopy(v) for k, v in state.items() if k not in keys and k not in ("specs", "shards")}
        part["specs"] = copy.deepcopy(state["specs"][r * per:(r + 1) * per])
        for key in keys:
            part[key] = state[key][r * per:(r + 1) * per].clone()
        own = old[r % len(old)]
        for key in _POOL_RANK_KEYS:
            if key in own:
                part[key] = copy.deepcopy(own[key])
        if not exact:
            part["next_reset"] = 0
            part["rejected"] = state["rejected"] if r == 0 else 0
            part["perturbed"] = state.get("perturbed", 0) if r == 0 else 0
            if r >= len(old):
                g = torch.Generator()
                g.set_state(own["generator"])
                seed = int(torch.randint(2 ** 62, (), generator=g)) + r
                part["generator"] = torch.Generator().manual_seed(seed).get_state()
        out.append(part)
    return out


#: task-state entries each rank owns (merge for the checkpoint, split on resume)
RANK_LOCAL_STATE: dict[str, tuple[Callable, Callable]] = {"pool": (merge_pool_states, split_pool_state)}


# ---------------------------------------------------------------------- launching
def launch(argv: Sequence[str], nproc: int, *, run_dir: str | None = None, name: str = "NAME") -> int:
    """Run ``python -m pdeaccel ARGV`` in ``nproc`` processes on this machine with torchrun's
    elastic launcher (rendezvous on a free local port, no restarts); the exit status of the job.

    A rank that dies (or exits with an error) makes the agent stop the others; the failure is
    summarised on stderr with how to resume.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"pdeaccel-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
                          start_method="spawn")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default: N ranks share the cores
    os.environ[LAUNCHER_ENV] = str(os.getpid())  # the ranks' parent: they stop if it is gone
    try:
        elastic_launch(config, sys.executable)("-m", "pdeaccel", *argv)
    except ChildFailedError as exc:
        print(describe_failure(exc.failures, nproc, run_dir, name), file=sys.stderr, flush=True)
        codes = [f.exitcode for f in exc.failures.values() if f.exitcode > 0 and f.exitcode != RANK_FAILURE_EXIT]
        return codes[0] if codes else RANK_FAILURE_EXIT
    return 0


def describe_failure(failures: dict[int, Any], nproc: int, run_dir: str | None, name: str = "NAME") -> str:
    """The user's summary of a failed job: which ranks died how, and how to continue.

    A rank that got SIGTERM (the agent stopping the survivors) or that exited after losing the
    others is a consequence, not a cause; it is named as stopped."""
    causes, stopped = [], []
    for rank, f in sorted(failures.items()):
        if f.exitcode == RANK_FAILURE_EXIT or (f.exitcode < 0 and f.signal_name() == "SIGTERM"):
            stopped.append(rank)
        elif f.exitcode < 0:
            causes.append(f"rank {rank} of {nproc} was killed by {f.signal_name()}")
        else:
            causes.append(f"rank {rank} of {nproc} failed with exit status {f.exitcode} (its error is printed above)")
    if not causes:  # nothing but stopped ranks: say what happened to each
        causes = [f"rank {r} of {nproc} " + ("was stopped (SIGTERM)" if failures[r].exitcode < 0
                                              else "lost the other ranks") for r in stopped]
        stopped = []
    others = f"; the other rank(s) ({', '.join(map(str, stopped))}) were stopped" if stopped else ""
    where = run_dir or "RUN_DIR"
    return ("pdeaccel train: the distributed job stopped: " + "; ".join(causes) + others + ". Completed epochs "
            f"are checkpointed; continue with `pdeaccel train {name} --resume {where} [--nproc N]` (the same "
            "or another number of processes).")
