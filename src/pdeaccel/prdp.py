"""PRDP: progressively refined iteration budgets, the baseline schedules, an iteration ledger and
the savings report.

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

import dataclasses
import math
import numbers
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch

__all__ = [
    "PRDPConfig", "RefinementEvent", "Schedule", "PRDPSchedule", "FixedSchedule", "ConvergedSchedule",
    "LinearSchedule", "make_schedule", "schedule_from_state_dict", "IterationLedger", "savings_report",
    "format_savings_markdown", "SCHEDULE_SPECS",
]

#: The spellings :func:`make_schedule` understands.
SCHEDULE_SPECS = ("prdp", "converged", "converged:K", "fixed:K", "linear:K0:K1")

METRICS = ("validation", "train_loss")


# --------------------------------------------------------------------------------------------
# argument checks (shared by the config, the schedules and the ledger)
# --------------------------------------------------------------------------------------------

def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    return float(value)


def _metric(value: Any, positive: bool, name: str = "metric") -> float:
    """A metric as a float: Python/numpy numbers and one-element tensors are accepted."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be a scalar, got a tensor of shape {list(value.shape)}.")
        value = value.detach().item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(
            f"{name} must be finite, got {value!r}. A diverged epoch is the divergence guard's business "
            "(roll back, raise_budget); do not feed it to the schedule."
        )
    if positive and value <= 0:
        raise ValueError(
            f"metric must be > 0 for PRDP, got {value!r}: the controller compares ratios of an error "
            "measure (validation error or a non-negative loss)."
        )
    return value


# --------------------------------------------------------------------------------------------
# configuration and events
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PRDPConfig:
    """Hyper-parameters of the PRDP controller (defaults: the paper's).

    Attributes:
        k0: budget K of the first epoch.
        delta_k: ΔK, added at each refinement.
        k_max: K never exceeds this.
        tau_step: τ_step ∈ (0, 1]; the metric is "still improving" while ``m[-1]/m[-δ] <= τ_step``
            and has plateaued once the ratio exceeds it (a lower τ_step refines sooner).
        tau_stop: τ_stop ∈ (0, 1]; after a plateau, refine again only if the metric improved by more
            than a factor τ_stop since the last refinement (or got worse).
        ema_window: EMA window w (α = 2/(w+1)); ``None`` or 1 smooths nothing.
        lookback: δ >= 2, epochs compared by the plateau test (δ = 1 would compare an epoch
            with itself).
        initial_checkpoint: initial ck; ``None`` takes the first metric.
        metric: which metric the trainer feeds: ``"validation"`` (recommended) or ``"train_loss"``.
    """

    k0: int = 1
    delta_k: int = 1
    k_max: int = 100
    tau_step: float = 0.98
    tau_stop: float = 0.9
    ema_window: int | None = 6
    lookback: int = 3
    initial_checkpoint: float | None = 100.0
    metric: str = "validation"

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("k0", _int("PRDPConfig.k0", self.k0, 1))
        set_("delta_k", _int("PRDPConfig.delta_k", self.delta_k, 1))
        set_("k_max", _int("PRDPConfig.k_max", self.k_max, 1))
        if self.k0 > self.k_max:
            raise ValueError(f"PRDPConfig.k0 must be <= k_max, got k0={self.k0} > k_max={self.k_max}.")
        for name in ("tau_step", "tau_stop"):
            value = _real(f"PRDPConfig.{name}", getattr(self, name))
            if not 0.0 < value <= 1.0:
                raise ValueError(f"PRDPConfig.{name} must lie in (0, 1], got {value!r}.")
            set_(name, value)
        if self.ema_window is not None:
            set_("ema_window", _int("PRDPConfig.ema_window", self.ema_window, 1))
        set_("lookback", _int("PRDPConfig.lookback", self.lookback, 2))
        if self.initial_checkpoint is not None:
            value = _real("PRDPConfig.initial_checkpoint", self.initial_checkpoint)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"PRDPConfig.initial_checkpoint must be a finite number > 0 or None, got {value!r}.")
            set_("initial_checkpoint", value)
        if self.metric not in METRICS:
            raise ValueError(f"PRDPConfig.metric must be one of {', '.join(METRICS)}; got {self.metric!r}.")

    @property
    def ema_alpha(self) -> float:
        """α = 2/(w+1); 1 (no smoothing) when ``ema_window`` is None or 1."""
        return 1.0 if self.ema_window is None else 2.0 / (self.ema_window + 1.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PRDPConfig":
        """Build from a plain mapping (a YAML section); unknown keys are an error, not ignored."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ValueError(f"unknown PRDPConfig key(s) {unknown}; allowed: {', '.join(allowed)}.")
        return cls(**d)


@dataclass(frozen=True)
class RefinementEvent:
    """A change of K: after ``epoch``, K went from ``old_k`` to ``new_k`` because of ``reason``.

    ``reason`` is ``"plateau"`` (plateau after a refinement that paid off), ``"worse"`` (plateau
    above the checkpoint), ``"linear"`` (hand-written schedule) or the text a divergence guard
    passed to :meth:`Schedule.raise_budget`. The ratios are PRDP's r and rc (None elsewhere).
    """

    epoch: int
    old_k: int | None
    new_k: int | None
    reason: str
    ratio_step: float | None = None
    ratio_checkpoint: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RefinementEvent":
        return cls(**d)


# --------------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------------

class Schedule:
    """An iteration budget K per epoch, updated from one metric per epoch.

    The trainer reads :attr:`budget` before an epoch, and calls :meth:`update` with the epoch's
    metric after it; K never decreases. :meth:`raise_budget` is for a divergence guard; what it
    does depends on the policy (see each subclass). ``state_dict`` is JSON-serialisable and
    complete: a fresh schedule of the same kind with that state loaded makes identical decisions.
    """

    name: str
    kind: str = "base"
    _positive_metric = False

    def __init__(self, k: int | None) -> None:
        self._k = k
        self.events: list[RefinementEvent] = []
        self.metrics: list[float] = []
        self.epochs_seen: list[int] = []

    @property
    def budget(self) -> int | None:
        """K for the coming epoch; ``None`` means "solve to the tolerance" (converged training)."""
        return self._k

    @property
    def metric(self) -> str:
        """Which metric to feed :meth:`update`: ``"validation"`` or ``"train_loss"``."""
        return "validation"

    def update(self, epoch: int, metric: float) -> RefinementEvent | None:
        """Record the metric of the epoch just finished; returns the event if K changed."""
        epoch = _int("epoch", epoch, 0)
        if self.epochs_seen and epoch <= self.epochs_seen[-1]:
            raise ValueError(
                f"epoch must increase from call to call; got epoch={epoch} after epoch="
                f"{self.epochs_seen[-1]}. Each epoch's metric is recorded once (a rollback must also "
                "restore the schedule's state_dict)."
            )
        value = _metric(metric, self._positive_metric)
        self.epochs_seen.append(epoch)
        self.metrics.append(value)
        return self._decide(epoch, value)

    def raise_budget(self, epoch: int, reason: str) -> RefinementEvent | None:
        """Raise K outside the metric logic (divergence guard). Returns None if K cannot rise."""
        epoch = _int("epoch", epoch, 0)
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reason must be a non-empty string, got {reason!r}.")
        new_k = self._raised_k()
        if new_k is None or new_k == self._k:
            return None
        return self._change(epoch, new_k, reason)

    # subclasses override these three
    def _decide(self, epoch: int, metric: float) -> RefinementEvent | None:
        return None

    def _raised_k(self) -> int | None:
        return None

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, d: dict) -> None:
        pass

    def _change(self, epoch: int, new_k: int | None, reason: str, ratio_step: float | None = None,
                ratio_checkpoint: float | None = None) -> RefinementEvent:
        event = RefinementEvent(epoch, self._k, new_k, reason, ratio_step, ratio_checkpoint)
        self._k = new_k
        self.events.append(event)
        return event

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "k": self._k,
            "events": [e.to_dict() for e in self.events],
            "metrics": list(self.metrics),
            "epochs_seen": list(self.epochs_seen),
            **self._extra_state(),
        }

    def load_state_dict(self, d: dict) -> None:
        """Restore everything, configuration included (the state wins over the constructor)."""
        if not isinstance(d, dict) or d.get("kind") != self.kind:
            got = d.get("kind") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"state is for a {got!r} schedule, this is a {self.kind!r} schedule.")
        self._load_extra_state(d)
        self._k = d["k"]
        self.events = [RefinementEvent.from_dict(e) for e in d["events"]]
        self.metrics = [float(m) for m in d["metrics"]]
        self.epochs_seen = [int(e) for e in d["epochs_seen"]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, budget={self._k})"


class PRDPSchedule(Schedule):
    """The PRDP controller exactly as in the paper (see the module docstring for the rule).

    :meth:`raise_budget` adds ΔK (capped at K_max) and leaves the checkpoint and the history as
    they are, so the metric logic goes on from the new K. :attr:`trace` has one entry per epoch
    (metric, EMA, r, rc, checkpoint, action, K for the next epoch) for logs and plots.
    """

    kind = "prdp"
    _positive_metric = True

    def __init__(self, config: PRDPConfig | None = None) -> None:
        config = PRDPConfig() if config is None else config
        if not isinstance(config, PRDPConfig):
            raise TypeError(f"config must be a PRDPConfig, got {type(config).__name__}.")
        super().__init__(config.k0)
        self.config = config
        self.name = "prdp"
        self.ema: list[float] = []
        self.checkpoint: float | None = config.initial_checkpoint
        self.trace: list[dict] = []

    @property
    def metric(self) -> str:
        return self.config.metric

    def observe_initial(self, metric: float) -> None:
        """Put the untrained model's metric at the head of the history, before the first epoch.

        The reference code does this (its error history starts with the epoch-0 validation error):
        the EMA starts at that value, the plateau test needs one epoch fewer to start, and with
        ``initial_checkpoint=None`` the checkpoint ck is that error (the paper's heat-2d setting).
        Nothing is decided and K does not change. Only before the first :meth:`update`.
        """
        if self.metrics or self.ema:
            raise ValueError("observe_initial must come before the first update (the history is not empty).")
        value = _metric(metric, self._positive_metric)
        self.ema.append(value)
        if self.checkpoint is None:
            self.checkpoint = value
        self.trace.append({"epoch": None, "metric": value, "ema": value, "ratio_step": None,
                           "ratio_checkpoint": None, "checkpoint": self.checkpoint, "action": "initial",
                           "k": self._k})

    def _decide(self, epoch: int, metric: float) -> RefinementEvent | None:
        cfg = self.config
        alpha = cfg.ema_alpha
        smoothed = metric if not self.ema else (1.0 - alpha) * self.ema[-1] + alpha * metric
        self.ema.append(smoothed)
        if self.checkpoint is None:
            self.checkpoint = metric
        step = ckpt = None
        event = None
        if len(self.ema) <= cfg.lookback:
            action = "warm-up"
        else:
            step = smoothed / self.ema[-cfg.lookback]
            if step <= cfg.tau_step:
                action = "improving"
            else:
                ckpt = smoothed / self.checkpoint
                if ckpt < cfg.tau_stop or ckpt > 1.0:
                    # the checkpoint moves even at K_max, as in the reference controller
                    self.checkpoint = smoothed
                    new_k = min(self._k + cfg.delta_k, cfg.k_max)
                    if new_k == self._k:
                        action = "at k_max"
                    else:
                        action = "refine"
                        event = self._change(epoch, new_k, "plateau" if ckpt < cfg.tau_stop else "worse",
                                             step, ckpt)
                else:
                    action = "plateau, no gain"
        self.trace.append({"epoch": epoch, "metric": metric, "ema": smoothed, "ratio_step": step,
                           "ratio_checkpoint": ckpt, "checkpoint": self.checkpoint, "action": action,
                           "k": self._k})
        return event

    def _raised_k(self) -> int | None:
        return min(self._k + self.config.delta_k, self.config.k_max)

    def _extra_state(self) -> dict:
        return {"config": self.config.to_dict(), "ema": list(self.ema), "checkpoint": self.checkpoint,
                "trace": [dict(t) for t in self.trace]}

    def _load_extra_state(self, d: dict) -> None:
        self.config = PRDPConfig.from_dict(d["config"])
        self.ema = [float(m) for m in d["ema"]]
        self.checkpoint = None if d["checkpoint"] is None else float(d["checkpoint"])
        self.trace = [dict(t) for t in d["trace"]]


class FixedSchedule(Schedule):
    """A constant K. :meth:`raise_budget` doubles K (capped at ``k_max`` if given): a fixed
    baseline that diverges is under-resolved, and a doubling finds a stable K in few tries."""

    kind = "fixed"

    def __init__(self, k: int, k_max: int | None = None) -> None:
        k = _int("k (fixed budget)", k, 1)
        self.k_max = None if k_max is None else _int("k_max", k_max, k)
        super().__init__(k)
        self.name = f"fixed:{k}"

    def _raised_k(self) -> int | None:
        doubled = 2 * self._k
        return doubled if self.k_max is None else min(doubled, self.k_max)

    def _extra_state(self) -> dict:
        return {"name": self.name, "k_max": self.k_max}

    def _load_extra_state(self, d: dict) -> None:
        self.name, self.k_max = d["name"], d["k_max"]


class ConvergedSchedule(Schedule):
    """Converged training: K = K_ε for every epoch, or ``None`` (each solve runs to its tolerance).

    :meth:`raise_budget` never changes anything (returns None): the solver already converges, so a
    divergence is not a budget problem.
    """

    kind = "converged"

    def __init__(self, k_eps: int | None = None) -> None:
        super().__init__(None if k_eps is None else _int("k_eps (converged budget)", k_eps, 1))
        self.name = "converged" if k_eps is None else f"converged:{self._k}"

    def _extra_state(self) -> dict:
        return {"name": self.name}

    def _load_extra_state(self, d: dict) -> None:
        self.name = d["name"]


class LinearSchedule(Schedule):
    """Hand-written baseline: K_i = k0 + round((k1 − k0)·i/(n − 1)) for epoch i < n, then k1.

    Epochs are counted by :meth:`update` calls (not by the epoch numbers passed), so 0- and
    1-based loops see the same schedule; with n = 1 the only epoch uses k1.
    :meth:`raise_budget` sets a floor of twice the current K (capped at ``k_max`` if given); the
    linear ramp continues above it.
    """

    kind = "linear"

    def __init__(self, k0: int, k1: int, epochs: int, k_max: int | None = None) -> None:
        self.k0 = _int("k0 (linear schedule)", k0, 1)
        self.k1 = _int("k1 (linear schedule)", k1, self.k0)
        self.num_epochs = _int("epochs (linear schedule)", epochs, 1)
        self.k_max = None if k_max is None else _int("k_max", k_max, self.k1)
        self.floor = 0
        super().__init__(self._ramp(0))
        self.name = f"linear:{self.k0}:{self.k1}"

    def _ramp(self, i: int) -> int:
        if self.num_epochs == 1:
            return self.k1
        frac = min(i, self.num_epochs - 1) / (self.num_epochs - 1)
        return max(self.k0 + round((self.k1 - self.k0) * frac), self.floor)

    def _decide(self, epoch: int, metric: float) -> RefinementEvent | None:
        new_k = self._ramp(len(self.metrics))
        return self._change(epoch, new_k, "linear") if new_k != self._k else None

    def _raised_k(self) -> int | None:
        doubled = 2 * self._k
        self.floor = doubled if self.k_max is None else min(doubled, self.k_max)
        return max(self._k, self.floor)

    def _extra_state(self) -> dict:
        return {"k0": self.k0, "k1": self.k1, "epochs": self.num_epochs, "k_max": self.k_max,
                "floor": self.floor}

    def _load_extra_state(self, d: dict) -> None:
        self.k0, self.k1, self.num_epochs = int(d["k0"]), int(d["k1"]), int(d["epochs"])
        self.k_max, self.floor = d["k_max"], int(d["floor"])
        self.name = f"linear:{self.k0}:{self.k1}"


_KINDS: dict[str, type[Schedule]] = {cls.kind: cls for cls in
                                      (PRDPSchedule, FixedSchedule, ConvergedSchedule, LinearSchedule)}


def make_schedule(spec: str, prdp: PRDPConfig | None = None, k_converged: int | None = None,
                  epochs: int | None = None) -> Schedule:
    """Build a schedule from its spelling.

    ``"prdp"`` (uses ``prdp``, default :class:`PRDPConfig`), ``"converged"`` (K = ``k_converged``,
    or to tolerance when that is None), ``"converged:K"``, ``"fixed:K"``, ``"linear:K0:K1"`` (needs
    ``epochs``).
    """
    forms = ", ".join(repr(s) for s in SCHEDULE_SPECS)
    if not isinstance(spec, str):
        raise TypeError(f"schedule spec must be a string ({forms}), got {type(spec).__name__}.")
    parts = [p.strip() for p in spec.strip().lower().split(":")]

    def ints(values: list[str]) -> list[int]:
        try:
            return [int(v) for v in values]
        except ValueError:
            raise ValueError(f"schedule spec {spec!r}: budgets must be integers; allowed forms: {forms}.") from None

    if parts == ["prdp"]:
        return PRDPSchedule(prdp)
    if parts == ["converged"]:
        return ConvergedSchedule(k_converged)
    if parts[0] == "converged" and len(parts) == 2:
        return ConvergedSchedule(*ints(parts[1:]))
    if parts[0] == "fixed" and len(parts) == 2:
        return FixedSchedule(*ints(parts[1:]))
    if parts[0] == "linear" and len(parts) == 3:
        if epochs is None:
            raise ValueError(f"schedule spec {spec!r} needs epochs (the length of the linear ramp).")
        k0, k1 = ints(parts[1:])
        return LinearSchedule(k0, k1, epochs)
    raise ValueError(f"unknown schedule spec {spec!r}; allowed forms: {forms}.")


def schedule_from_state_dict(d: dict) -> Schedule:
    """Rebuild a schedule of the right kind from its :meth:`Schedule.state_dict`."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind not in _KINDS:
        raise ValueError(f"state has kind {kind!r}; known kinds: {', '.join(_KINDS)}.")
    placeholder = {"prdp": lambda: PRDPSchedule(), "fixed": lambda: FixedSchedule(1),
                   "converged": lambda: ConvergedSchedule(), "linear": lambda: LinearSchedule(1, 1, 1)}
    schedule = placeholder[kind]()
    schedule.load_state_dict(d)
    return schedule


# --------------------------------------------------------------------------------------------
# the ledger
# --------------------------------------------------------------------------------------------

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
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}.")
        if self._open is None:
            self.start_epoch(self.epochs[-1]["epoch"] + 1 if self.epochs else 0)
        if isinstance(iterations, torch.Tensor):
            iters = iterations.detach()
            if iters.numel() == 0:
                raise ValueError("iterations is an empty tensor; a solve reports one count per sample.")
            run, total = iters.max().to(torch.int64), iters.sum().to(torch.int64)
        else:
            run = total = _int("iterations", iterations, 0)
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
        epoch = _int("epoch", epoch, 0)
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
        self._open["k"] = None if k is None else _int("k", k, 0)

    def count_step(self, n: int = 1) -> None:
        """Count ``n`` optimiser steps in the open epoch."""
        if self._open is None:
            self.start_epoch(self.epochs[-1]["epoch"] + 1 if self.epochs else 0)
        self._open["steps"] += _int("n", n, 0)

    def _sync(self) -> None:
        # wall-clock of asynchronous GPU work is only meaningful after the queue drained
        if self.sync_cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a ``"train"`` or ``"validation"`` phase; solves inside are attributed to it."""
        if name not in _PHASES:
            raise ValueError(f"phase must be 'train' or 'validation', got {name!r}.")
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


# --------------------------------------------------------------------------------------------
# savings
# --------------------------------------------------------------------------------------------

def _saving(ours: float, theirs: float) -> float | None:
    return None if theirs == 0 else 1.0 - ours / theirs


def _weights(ledger: IterationLedger, name: str) -> tuple[list[int], str]:
    steps = [int(e["steps"]) for e in ledger.epochs]
    if all(s > 0 for s in steps):
        return steps, "steps"
    if all(s == 0 for s in steps):
        return [1] * len(steps), "epochs"
    raise ValueError(f"{name}: some epochs counted optimiser steps and some did not ({steps}); "
                     "call count_step() in every epoch or in none.")


def savings_report(prdp: IterationLedger | dict, converged: IterationLedger | dict, k_eps: int,
                   prdp_final_metric: float, converged_final_metric: float) -> dict:
    """PRDP's savings against converged training, nominal (the paper's) and measured.

    Nominal, with K_e the budget of PRDP epoch e and s_e its optimiser steps (1 per epoch when no
    steps were counted — the paper's E):

    * C_conv = K_ε · Σ s_e (converged run), C_PRDP = Σ K_e·s_e
    * total = 1 − C_PRDP / C_conv  (= 1 − Σ K_e / (K_ε·E) for equal E)
    * IC = (K_ε − K_final)/K_ε, PR = total − IC  (= (K_final·E − Σ K_e)/(K_ε·E) for equal E)

    Runs of different length (the inverse problem compares at equal accuracy) are allowed:
    ``same_length`` says whether E (and the steps) agree.

    Measured, from the iterations the ledgers saw actually run (max over the batch per solve):
    ``measured_forward``, ``measured_backward`` and ``measured_total`` (forward + backward) are
    1 − PRDP/converged (None where converged ran none). Wall clock: ``wall_clock_train`` (training
    phases only, the paper's) and ``wall_clock_with_validation``. Finally both final metrics and
    ``final_metric_ratio`` = PRDP / converged.
    """
    p, c = _as_ledger(prdp, "prdp"), _as_ledger(converged, "converged")
    k_eps = _int("k_eps", k_eps, 1)
    final_p = _metric(prdp_final_metric, False, "prdp_final_metric")
    final_c = _metric(converged_final_metric, False, "converged_final_metric")
    for ledger, name in ((p, "prdp"), (c, "converged")):
        if not ledger.epochs:
            raise ValueError(f"the {name} ledger has no finished epochs.")
    ks = [e["k"] for e in p.epochs]
    if any(k is None for k in ks):
        first = next(e["epoch"] for e in p.epochs if e["k"] is None)
        raise ValueError(f"the prdp ledger has no budget K for epoch {first}; call record_budget(k) each epoch.")
    w_p, weighting = _weights(p, "prdp")
    w_c, weighting_c = _weights(c, "converged")
    if weighting != weighting_c:
        raise ValueError(f"the prdp ledger is weighted by {weighting}, the converged one by {weighting_c}; "
                         "count optimiser steps in both runs or in neither.")
    cost_p = sum(k * w for k, w in zip(ks, w_p))
    cost_c = k_eps * sum(w_c)
    k_final = ks[-1]
    total = 1.0 - cost_p / cost_c
    ic = (k_eps - k_final) / k_eps
    tp, tc = p.totals(), c.totals()
    fwd = _saving(tp["forward_iters"], tc["forward_iters"])
    bwd = _saving(tp["backward_iters"], tc["backward_iters"])
    both = _saving(tp["forward_iters"] + tp["backward_iters"], tc["forward_iters"] + tc["backward_iters"])
    with_val_p = tp["train_seconds"] + tp["validation_seconds"]
    with_val_c = tc["train_seconds"] + tc["validation_seconds"]
    return {
        "k_eps": k_eps, "epochs": len(p.epochs), "epochs_converged": len(c.epochs),
        "same_length": len(p.epochs) == len(c.epochs) and w_p == w_c, "weighting": weighting,
        "k_final": k_final, "sum_k": sum(ks),
        "cost_nominal_prdp": cost_p, "cost_nominal_converged": cost_c,
        "ic": ic, "pr": total - ic, "total": total,
        "forward_iters_prdp": tp["forward_iters"], "forward_iters_converged": tc["forward_iters"],
        "backward_iters_prdp": tp["backward_iters"], "backward_iters_converged": tc["backward_iters"],
        "measured_forward": fwd, "measured_backward": bwd, "measured_total": both,
        "train_seconds_prdp": tp["train_seconds"], "train_seconds_converged": tc["train_seconds"],
        "wall_clock_train": _saving(tp["train_seconds"], tc["train_seconds"]),
        "seconds_with_validation_prdp": with_val_p, "seconds_with_validation_converged": with_val_c,
        "wall_clock_with_validation": _saving(with_val_p, with_val_c),
        "final_metric_prdp": final_p, "final_metric_converged": final_c,
        "final_metric_ratio": None if final_c == 0 else final_p / final_c,
    }


#: Rows of :func:`format_savings_markdown`: (label, report key, format). ``paper_row`` uses the keys.
_TABLE_ROWS = (
    ("K_ε (converged budget)", "k_eps", "int"),
    ("epochs E", "epochs", "int"),
    ("K_final", "k_final", "int"),
    ("IC (incomplete convergence)", "ic", "pct"),
    ("PR (progressive refinement)", "pr", "pct"),
    ("total saving, nominal Σ K_e", "total", "pct"),
    ("saving, measured iterations (fwd + bwd)", "measured_total", "pct"),
    ("train time converged [s]", "train_seconds_converged", "sec"),
    ("train time PRDP [s]", "train_seconds_prdp", "sec"),
    ("saving, train wall clock", "wall_clock_train", "pct"),
    ("saving, wall clock incl. validation", "wall_clock_with_validation", "pct"),
    ("final metric converged", "final_metric_converged", "sci"),
    ("final metric PRDP", "final_metric_prdp", "sci"),
    ("final metric PRDP / converged", "final_metric_ratio", "ratio"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if fmt == "pct":
        return f"{100.0 * value:.1f}%"
    if fmt == "int":
        return f"{value:g}" if isinstance(value, float) else str(value)
    if fmt == "sec":
        return f"{value:.3g}"
    if fmt == "sci":
        return f"{value:.3e}"
    return f"{value:.3f}"


def format_savings_markdown(report: dict, paper_row: dict | None = None) -> str:
    """A markdown table of a :func:`savings_report`, with the paper's numbers beside it.

    ``paper_row`` maps report keys (``k_eps``, ``epochs``, ``k_final``, ``ic``, ``pr``, ``total``,
    ``train_seconds_converged``, ...) to numbers (fractions for percentages) or strings such as
    ``"≈12"``, shown as they are; missing entries print as "–".
    """
    keys = [key for _, key, _ in _TABLE_ROWS]
    missing = [key for key in keys if key not in report]
    if missing:
        raise ValueError(f"report lacks {missing}; pass the dict savings_report() returns.")
    if paper_row is not None:
        unknown = sorted(set(paper_row) - set(keys))
        if unknown:
            raise ValueError(f"paper_row has unknown key(s) {unknown}; allowed: {', '.join(keys)}.")
    header = "| quantity | ours | paper |\n|---|---|---|" if paper_row is not None else "| quantity | ours |\n|---|---|"
    lines = [header]
    for label, key, fmt in _TABLE_ROWS:
        row = f"| {label} | {_cell(report[key], fmt)} |"
        if paper_row is not None:
            row += f" {_cell(paper_row.get(key), fmt)} |"
        lines.append(row)
    return "\n".join(lines) + "\n"
