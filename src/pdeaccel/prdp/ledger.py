"""The iteration ledger: a solver monitor that counts the iterations training actually runs."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from .._checks import choice, integer

_PHASES = ("train", "validation")
_DIRECTIONS = ("forward", "backward")
_COUNTERS = ("forward_iters", "backward_iters", "forward_iters_samples", "backward_iters_samples",
             "val_forward_iters", "val_backward_iters", "val_forward_iters_samples",
             "val_backward_iters_samples", "solves", "backward_solves", "val_solves", "val_backward_solves")
_EPOCH_FIELDS = ("epoch", "k", "steps", *_COUNTERS, "train_seconds", "validation_seconds", "seconds")


class IterationLedger:
    """Counts the solver iterations training actually runs, per epoch, and times its phases.

    Pass it as a solver monitor (``SolverConfig(monitor=ledger)``): each solve reports its
    per-sample iteration counts. Two counts are kept per solve:

    * ``*_iters``: the maximum over the batch — a batched solve runs that many iterations, so this
      is the compute spent. **The savings use these.**
    * ``*_iters_samples``: the sum over samples (the cost had each sample been solved alone).

    Solves inside ``phase("train")`` (or outside any phase) are training cost (``forward_iters``,
    ``backward_iters``); solves inside ``phase("validation")`` are kept apart (``val_*``). With
    ``grad="unrolled"`` no adjoint solve runs — back-propagation retraces the forward iterations —
    so ``backward_iters`` stays 0 and the backward cost is proportional to ``forward_iters``.
    GMRES reports restart cycles. Counts stay on the solver's device until :meth:`end_epoch`, so
    the monitor adds no host synchronisation. ``count_step()`` counts optimiser steps (the
    weights of the nominal cost Σ K_e·steps_e).
    """

    def __init__(self, sync_cuda: bool = True) -> None:
        self.sync_cuda = bool(sync_cuda)
        self.epochs: list[dict] = []
        self._open: dict | None = None
        self._acc: dict[str, Any] = {}
        self._phase: str | None = None
        self._epoch_started = 0.0

    # -- the monitor -------------------------------------------------------------------------
    def __call__(self, direction: str, method: str, iterations: torch.Tensor | int) -> None:
        choice("direction", direction, _DIRECTIONS)
        if self._open is None:
            self.start_epoch(self.epochs[-1]["epoch"] + 1 if self.epochs else 0)
        if isinstance(iterations, torch.Tensor):
            iters = iterations.detach()
            if iters.numel() == 0:
                raise ValueError("iterations is an empty tensor; a solve reports one count per sample.")
            run, total = iters.max().to(torch.int64), iters.sum().to(torch.int64)
        else:
            run = total = integer("iterations", iterations, minimum=0)
        prefix = "val_" if self._phase == "validation" else ""
        self._add(f"{prefix}{direction}_iters", run)
        self._add(f"{prefix}{direction}_iters_samples", total)
        solves = {"forward": "solves", "backward": "backward_solves"}[direction]
        self._add(f"{prefix}{solves}", 1)

    def _add(self, key: str, value: Any) -> None:
        self._acc[key] = self._acc.get(key, 0) + value

    # -- epochs, budget, steps, phases -------------------------------------------------------
    def start_epoch(self, epoch: int, k: int | None = None) -> None:
        """Open epoch ``epoch``; ``k`` (optional) is the budget it uses (see :meth:`record_budget`)."""
        epoch = integer("epoch", epoch, minimum=0)
        if self._open is not None:
            raise RuntimeError(f"epoch {self._open['epoch']} is still open; call end_epoch() first.")
        self._open = {"epoch": epoch, "k": None, "steps": 0, "train_seconds": 0.0, "validation_seconds": 0.0}
        self._acc = {}
        self._epoch_started = time.perf_counter()
        if k is not None:
            self.record_budget(k)

    def record_budget(self, k: int | None) -> None:
        """The budget K this epoch uses (None: solved to tolerance)."""
        if self._open is None:
            self.start_epoch(self.epochs[-1]["epoch"] + 1 if self.epochs else 0)
        self._open["k"] = integer("k", k, minimum=0, optional=True)

    def count_step(self, n: int = 1) -> None:
        """Count ``n`` optimiser steps in the open epoch."""
        if self._open is None:
            self.start_epoch(self.epochs[-1]["epoch"] + 1 if self.epochs else 0)
        self._open["steps"] += integer("n", n, minimum=0)

    def _sync(self) -> None:
        # wall-clock of asynchronous GPU work is only meaningful after the queue drained
        if self.sync_cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a ``"train"`` or ``"validation"`` phase; solves inside are attributed to it."""
        choice("phase", name, _PHASES)
        if self._phase is not None:
            raise RuntimeError(f"phase {name!r} opened inside phase {self._phase!r}; phases do not nest.")
        if self._open is None:
            self.start_epoch(self.epochs[-1]["epoch"] + 1 if self.epochs else 0)
        self._sync()
        self._phase, started = name, time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self._open[f"{name}_seconds"] += time.perf_counter() - started
            self._phase = None

    def end_epoch(self) -> dict:
        """Close the open epoch and return its record (also appended to :attr:`epochs`)."""
        if self._open is None:
            raise RuntimeError("end_epoch() called with no open epoch; call start_epoch(epoch) first.")
        if self._phase is not None:
            raise RuntimeError(f"end_epoch() called inside phase {self._phase!r}.")
        record = dict(self._open)
        for key in _COUNTERS:
            value = self._acc.get(key, 0)
            record[key] = int(value.item()) if isinstance(value, torch.Tensor) else int(value)
        record["seconds"] = time.perf_counter() - self._epoch_started
        record = {key: record[key] for key in _EPOCH_FIELDS}
        self.epochs.append(record)
        self._open, self._acc = None, {}
        return record

    # -- summaries and state -----------------------------------------------------------------
    def totals(self) -> dict:
        """Sums over the finished epochs, plus ``epochs``, ``k_final`` and ``sum_k`` = Σ K_e."""
        out: dict[str, Any] = {"epochs": len(self.epochs)}
        for key in ("steps", *_COUNTERS):
            out[key] = sum(int(e[key]) for e in self.epochs)
        for key in ("train_seconds", "validation_seconds", "seconds"):
            out[key] = sum(float(e[key]) for e in self.epochs)
        ks = [e["k"] for e in self.epochs]
        out["k_final"] = ks[-1] if ks else None
        out["sum_k"] = None if (not ks or any(k is None for k in ks)) else sum(ks)
        return out

    def state_dict(self) -> dict:
        """The finished epochs (an epoch still open is not part of the state)."""
        return {"version": 1, "epochs": [dict(e) for e in self.epochs]}

    def load_state_dict(self, d: dict) -> None:
        if self._open is not None:
            raise RuntimeError("cannot load a state while an epoch is open.")
        self.epochs = [_checked_epoch(e, i) for i, e in enumerate(_epochs_of(d, "state"))]

    @classmethod
    def from_state_dict(cls, d: dict) -> "IterationLedger":
        ledger = cls()
        ledger.load_state_dict(d)
        return ledger


def _epochs_of(d: Any, name: str) -> list:
    if not isinstance(d, dict) or not isinstance(d.get("epochs"), list):
        raise ValueError(f"{name} must be an IterationLedger or its state_dict() (a dict with an 'epochs' list).")
    return d["epochs"]


def _checked_epoch(e: Any, i: int) -> dict:
    if not isinstance(e, dict):
        raise ValueError(f"ledger epoch #{i} must be a dict, got {type(e).__name__}.")
    missing = [key for key in _EPOCH_FIELDS if key not in e]
    if missing:
        raise ValueError(f"ledger epoch #{i} lacks the key(s) {missing}; an epoch record has {list(_EPOCH_FIELDS)}.")
    return {key: e[key] for key in _EPOCH_FIELDS}


def _as_ledger(x: IterationLedger | dict, name: str) -> IterationLedger:
    if isinstance(x, IterationLedger):
        return x
    ledger = IterationLedger()
    ledger.epochs = [_checked_epoch(e, i) for i, e in enumerate(_epochs_of(x, name))]
    return ledger

