"""The trainer's state on disk: what a checkpoint holds, writing it atomically (rank 0, the
training pool merged over the ranks), and resuming from the newest intact one. A mixin of
:class:`~pdeaccel.train.trainer.Trainer`, which owns the attributes these methods read."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

from . import io
from .budgets import LINEAR, PICARD
from .distributed import RANK_LOCAL_STATE


class DivergenceError(RuntimeError):
    """Training kept diverging after the divergence guard ran out of retries."""


class NothingResumedError(ValueError):
    """``resume`` found checkpoints, but every one of them is damaged: nothing could be resumed."""


class CheckpointedTraining:
    """State, checkpoint and resume of a :class:`~pdeaccel.train.trainer.Trainer`."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "task": self.task.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "schedules": {name: s.state_dict() for name, s in self.schedules.items()},
            "ledger": self.ledger.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "rows": copy.deepcopy(self.rows),
            "guard_events": copy.deepcopy(self.guard_events),
            "reference_loss": self.reference_loss, "reference_k": self.reference_k,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.task.load_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        for name, schedule_state in _schedule_states(state).items():
            if name in self.schedules:
                self.schedules[name].load_state_dict(schedule_state)
        self.ledger.load_state_dict(state["ledger"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.rows = copy.deepcopy(state["rows"])
        self.guard_events = copy.deepcopy(state["guard_events"])
        self.reference_loss = state["reference_loss"]
        self.reference_k = state["reference_k"]

    def resume(self, restart_if_damaged: bool = False) -> bool:
        """Continue from the newest intact checkpoint in the run directory; False if there is none.

        Leftovers of an interrupted write are removed, damaged checkpoints are set aside (with a
        warning), and ``metrics.csv``/``events.json`` are rewritten from the checkpoint: after a
        crash they may be one epoch ahead of it (the checkpoint is written first) or, when the
        newest checkpoint was damaged, several.

        A run that never wrote a checkpoint (killed in its first epoch) starts at epoch 0 (False).
        A run whose checkpoints are *all* damaged (now, or set aside as ``*.damaged`` by an earlier
        resume) raises :class:`NothingResumedError`: silently training from scratch would throw
        away what the run had done. With ``restart_if_damaged`` it starts over at epoch 0 instead,
        with a warning, and the abandoned run's ``metrics.csv``/``events.json`` are removed.
        """
        if self.run_dir is None:
            return False
        # rank 0 reads (and repairs) the run directory; every rank gets its outcome and state
        found = self.dist.on_main(lambda: self._find_resumable(restart_if_damaged), "reading the checkpoint")
        if found is None:
            return False
        self.load_state_dict(self._rank_state(found))
        if self.dist.is_main:
            self._write_logs()
        return True

    def _find_resumable(self, restart_if_damaged: bool) -> dict[str, Any] | None:
        ckpt_dir = self.run_dir / "checkpoints"
        io.remove_temporaries(self.run_dir)
        io.remove_temporaries(ckpt_dir)
        found = io.latest_valid_checkpoint(ckpt_dir, quarantine=True)
        if found is None:
            damaged = sorted(p.name for p in ckpt_dir.glob("epoch_*.ckpt.damaged")) if ckpt_dir.is_dir() else []
            if not damaged:
                return None  # nothing was ever checkpointed: nothing is lost by starting at epoch 0
            if not restart_if_damaged:
                raise NothingResumedError(f"all {len(damaged)} checkpoint(s) in {ckpt_dir} are damaged "
                                          f"(set aside as {', '.join(damaged)}); there is no intact state "
                                          "to continue from.")
            warnings.warn(f"no intact checkpoint in {ckpt_dir} ({len(damaged)} damaged, kept as *.damaged); "
                          "starting the run over from epoch 0 as asked.", stacklevel=2)
            for name in ("metrics.csv", "events.json"):
                (self.run_dir / name).unlink(missing_ok=True)
            return None
        return found[1]

    def _rank_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """This rank's part of a checkpointed state (written by any number of ranks)."""
        task = state["task"]
        for key, (_, split) in RANK_LOCAL_STATE.items():
            if isinstance(task, dict) and key in task:
                task = {**task, key: split(task[key], self.dist.replicas)[self.dist.replica]}
        return {**state, "task": task}

    def _checkpoint(self) -> None:
        if self.run_dir is None:
            return
        state = self.state_dict()
        bad = io.non_finite_entries({"task": state["task"], "optimizer": state["optimizer"]})
        if self.dist.distributed:
            bad = sorted(set().union(*self.dist.all_gather_object(bad, "the checkpoint check")))
            state = self._gathered_state(state)
        if bad:
            # the guard should have caught this; a checkpoint with NaN weights would poison every resume
            raise DivergenceError(f"refusing to checkpoint epoch {self.epoch}: non-finite values in "
                                  f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; the previous "
                                  "checkpoint is kept.")
        self.dist.on_main(lambda: self._save(state), "writing the checkpoint")

    def _save(self, state: dict[str, Any]) -> None:
        ckpt_dir = self.run_dir / "checkpoints"
        io.save_checkpoint(ckpt_dir / f"epoch_{self.epoch:05d}.ckpt", state)
        io.prune_checkpoints(ckpt_dir, self.settings.checkpoint_keep)
        self._write_logs()

    def _gathered_state(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """On rank 0: ``state`` with every rank-owned task entry (the pool) merged over the ranks."""
        task = state["task"]
        for key, (merge, _) in RANK_LOCAL_STATE.items():
            if isinstance(task, dict) and key in task:
                parts = self.dist.gather_object(task[key], f"gathering the ranks' {key}")
                if parts is not None:  # the ranks of a replica hold the same: one part per replica
                    task = {**task, key: merge(parts[::self.dist.sub_solver_ranks])}
        return ({**state, "task": task, "world_size": self.dist.world_size,
                 "sub_solver_ranks": self.dist.sub_solver_ranks} if self.dist.is_main else None)

    def _write_logs(self) -> None:
        io.write_csv(self.run_dir / "metrics.csv", self.rows)
        io.write_json(self.run_dir / "events.json", {
            "refinements": [] if self.guarded is None else [e.to_dict() for e in self.guarded.events],
            "divergence_guard": self.guard_events,
        })


def _schedule_states(state: dict[str, Any]) -> dict[str, Any]:
    """The schedules' states of a checkpoint by budget name; checkpoints written before budgets
    had names hold ``schedule`` (K's) and ``nonlinear_schedule`` (the Picard count's, or None)."""
    if "schedules" in state:
        return state["schedules"]
    old = {LINEAR: state.get("schedule"), PICARD: state.get("nonlinear_schedule")}
    return {name: s for name, s in old.items() if s is not None}
