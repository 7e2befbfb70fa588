"""PRDP: progressively refined iteration budgets, the baseline schedules, an iteration ledger and
the savings report.

One module a room: :mod:`.config` (the controller's hyper-parameters and a refinement event),
:mod:`.schedules` (the PRDP controller and the baseline schedules), :mod:`.ledger` (the solver
monitor counting iterations) and :mod:`.savings` (the savings vocabulary, report and table).

PRDP (Bhatia, Koehler & Thuerey, ICLR 2025) trains a network through an iterative linear solver
whose iteration budget K starts small and is raised only when the validation metric plateaus,
and is *not* raised again when the previous raise brought no gain (incomplete convergence). This
module knows no PDE: a :class:`Schedule` sees one metric per epoch and owns the budget K; an
:class:`IterationLedger` is a solver monitor that counts the iterations actually run;
:func:`savings_report` turns two ledgers (PRDP and converged training) into the paper's numbers.

The controller, after each epoch, with metric history ``x`` and its EMA ``m``
(``m_0 = x_0``, ``m_t = (1−α) m_{t−1} + α x_t``, ``α = 2/(w+1)``)::

    if len(x) <= δ:            keep K                    (warm-up)
    r  = m[-1] / m[-δ]                                   (progress over the look-back window;
                                                          m[-δ] is δ−1 epochs back, as in the paper)
    if r <= τ_step:            keep K                    (still improving at this K)
    rc = m[-1] / ck                                      (progress since the last refinement)
    if rc < τ_stop or rc > 1:  ck = m[-1]; K = min(K + ΔK, K_max)
    else:                      keep K                    (plateau, no gain: K is enough)

Using it in your own training loop::

    from pdeaccel.linalg import SolverConfig
    from pdeaccel.prdp import IterationLedger, PRDPConfig, PRDPSchedule

    schedule = PRDPSchedule(PRDPConfig(k0=1, delta_k=1, k_max=100))
    ledger = IterationLedger()
    for epoch in range(num_epochs):
        ledger.start_epoch(epoch, k=schedule.budget)
        solver = SolverConfig(method="cg", max_iters=schedule.budget, monitor=ledger)
        with ledger.phase("train"):
            for batch in loader:
                loss = loss_fn(net, batch, solver)          # calls solver.solve(A, b)
                opt.zero_grad(); loss.backward(); opt.step(); ledger.count_step()
        with ledger.phase("validation"), torch.no_grad():
            val_metric = validate(net)
        ledger.end_epoch()
        schedule.update(epoch, val_metric)                  # K for the next epoch

Baselines are schedules too: ``make_schedule("converged", k_converged=K_eps)``,
``make_schedule("fixed:12")``, ``make_schedule("linear:1:25", epochs=100)``.
"""

from __future__ import annotations

from .config import METRICS, PRDPConfig, RefinementEvent
from .ledger import IterationLedger
from .savings import QUANTITIES, format_savings_markdown, in_current_names, savings_report, savings_table
from .schedules import (
    SCHEDULE_SPECS, ConvergedSchedule, FixedSchedule, LinearSchedule, PRDPSchedule, Schedule, make_schedule,
    schedule_from_state_dict,
)

__all__ = [
    "PRDPConfig", "RefinementEvent", "Schedule", "PRDPSchedule", "FixedSchedule", "ConvergedSchedule",
    "LinearSchedule", "make_schedule", "schedule_from_state_dict", "IterationLedger", "savings_report",
    "savings_table", "format_savings_markdown", "in_current_names", "QUANTITIES", "SCHEDULE_SPECS", "METRICS",
]
