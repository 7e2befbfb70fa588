"""``pdeaccel train --nproc N``: start N ranks of this machine's job through torch's elastic launcher
and turn a rank's failure into one clear message and exit code."""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any, Sequence

from .distributed import LAUNCHER_ENV, RANK_FAILURE_EXIT


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
