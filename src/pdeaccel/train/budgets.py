"""Named budgets: what the trainer hands a task at every step.

Each budget schedule (:mod:`pdeaccel.prdp.schedules`) owns one named budget; a task declares the
names it uses (``task.budgets``), and its ``loss`` and ``validate`` receive the current values as
a :class:`Budgets` mapping. The names in use:

* ``"linear"`` — K, the iteration budget of every linear solve (``None``: solve to the
  tolerance); :meth:`Budgets.linear_solver` applies it to a task's solver settings;
* ``"picard"`` — P, the Picard (nonlinear) iterations of an implicit step, passed to the
  stepper as ``picard_iterations`` (``None``: the stepper's own count).

A new budget (a resolution level, ...) needs only a name: a schedule for it in the trainer's
``schedules`` and a task that declares and reads it.
"""

from __future__ import annotations

from typing import Iterator, Mapping

from ..linalg import Monitor, SolverConfig

LINEAR = "linear"
PICARD = "picard"


class Budgets(Mapping[str, "int | None"]):
    """The current value of each budget a task declared (``None``: converged), and the monitor
    that counts the iterations its solves run (the trainer's ledger)."""

    def __init__(self, values: Mapping[str, int | None], monitor: Monitor | None = None) -> None:
        self._values = dict(values)
        self.monitor = monitor

    def __getitem__(self, name: str) -> int | None:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"no budget {name!r} here; the task declared {sorted(self._values) or 'none'} "
                           "(task.budgets)") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Budgets({self._values!r})"

    def linear_solver(self, base: SolverConfig) -> SolverConfig:
        """``base`` under the linear budget K, with the monitor attached: exactly K iterations (no
        tolerance checks, so K are run and counted every solve), or ``base``'s tolerance when K is
        ``None`` or the task declared no linear budget."""
        solver = base.replace(monitor=self.monitor)
        k = self._values.get(LINEAR)
        if k is None:
            return solver.replace(max_iters=None)
        return solver.replace(max_iters=int(k), rtol=0.0, atol=0.0)

    def stepper_options(self) -> dict[str, int]:
        """Keyword arguments of a nonlinear stepper for the budgets beyond K: ``picard_iterations``
        when a Picard budget is set."""
        p = self._values.get(PICARD)
        return {} if p is None else {"picard_iterations": int(p)}
