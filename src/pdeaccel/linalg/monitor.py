"""Counting what solves ran: :class:`IterationLog`, a solver monitor for simulations and for
measuring K_ε (PRDP's training cost has its own ledger, :class:`~pdeaccel.prdp.IterationLedger`)."""

from __future__ import annotations

import statistics
from typing import Any

import torch


class IterationLog:
    """A solver monitor (``SolverConfig(monitor=log)``) that counts what the solves ran: per solve the
    iterations of the slowest sample (a batched solve runs that many), the largest of them
    (:attr:`max_per_solve`: K_ε, when the solves are run to a tolerance), and grouped by time step
    (:meth:`end_step`) and solver method, with the sample solves that missed their tolerance.

    PRDP's cost accounting during training is the :class:`~pdeaccel.prdp.IterationLedger` (per
    epoch and phase, forward and adjoint); this log is for everything else that steps a solver
    (``pdeaccel simulate``, measuring K_ε). GMRES reports restart cycles.
    """

    def __init__(self) -> None:
        #: the largest forward iteration count of any one solve so far
        self.max_per_solve = 0
        self.steps: list[dict[str, int]] = []
        self._current: dict[str, int] = {}
        self._unconverged: dict[str, int] = {}
        #: per method, the sample solves of the last finished step that missed their tolerance
        self.last_unconverged: dict[str, int] = {}

    def __call__(self, direction: str, method: str, iterations: torch.Tensor) -> None:
        if direction == "forward":
            ran = int(iterations.max())
            self.max_per_solve = max(self.max_per_solve, ran)
            self._current[method] = self._current.get(method, 0) + ran

    def record_result(self, direction: str, result) -> None:
        """Called by :func:`~pdeaccel.linalg.solve` with every forward result: count the misses."""
        if direction == "forward":
            missed = int((~result.converged).sum())
            if missed:
                self._unconverged[result.method] = self._unconverged.get(result.method, 0) + missed

    def end_step(self) -> dict[str, int]:
        done, self._current = self._current, {}
        self.last_unconverged, self._unconverged = self._unconverged, {}
        self.steps.append(done)
        return done

    def summary(self) -> dict[str, dict[str, Any]]:
        methods = sorted({m for s in self.steps for m in s})
        out = {}
        for m in methods:
            counts = [s.get(m, 0) for s in self.steps]
            out[m] = {"mean": statistics.fmean(counts), "max": max(counts), "total": sum(counts),
                      "unit": "restart cycles" if m == "gmres" else "iterations"}
        return out
