"""Data-parallel training across processes with ``torch.distributed``.

One process per rank, started by torchrun (``torchrun --nproc_per_node=N -m pdeaccel train ...``)
or by ``pdeaccel train --nproc N`` (:func:`~pdeaccel.train.launcher.launch`, torchrun's elastic launcher in-process). The
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

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch

# the division of work among ranks lives in sharing.py; these names stay importable from here
from .sharing import (RANK_LOCAL_STATE, check_layout, check_sub_solver_split, merge_pool_states,  # noqa: E402,F401
                      place_sub_solvers, rank_layout, rank_pool_config, replica_ranks, split_pool_state,
                      sub_solver_shares)

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
#: set by :func:`~pdeaccel.train.launcher.launch` for its ranks: the launcher's pid, so that a rank whose launcher died
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
