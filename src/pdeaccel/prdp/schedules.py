"""Budget schedules: the PRDP controller and the baselines (fixed, converged, linear ramp).

A schedule owns one iteration budget K, sees one metric per epoch and never lowers K.
"""

from __future__ import annotations

from .._checks import integer
from ._checks import check_metric
from .config import PRDPConfig, RefinementEvent

#: The spellings :func:`make_schedule` understands.
SCHEDULE_SPECS = ("prdp", "converged", "converged:K", "fixed:K", "linear:K0:K1")


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
        epoch = integer("epoch", epoch, minimum=0)
        if self.epochs_seen and epoch <= self.epochs_seen[-1]:
            raise ValueError(
                f"epoch must increase from call to call; got epoch={epoch} after epoch="
                f"{self.epochs_seen[-1]}. Each epoch's metric is recorded once (a rollback must also "
                "restore the schedule's state_dict)."
            )
        value = check_metric(metric, self._positive_metric)
        self.epochs_seen.append(epoch)
        self.metrics.append(value)
        return self._decide(epoch, value)

    def raise_budget(self, epoch: int, reason: str) -> RefinementEvent | None:
        """Raise K outside the metric logic (divergence guard). Returns None if K cannot rise."""
        epoch = integer("epoch", epoch, minimum=0)
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
        value = check_metric(metric, self._positive_metric)
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
        k = integer("k (fixed budget)", k, minimum=1)
        self.k_max = integer("k_max", k_max, minimum=k, optional=True)
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
        super().__init__(integer("k_eps (converged budget)", k_eps, minimum=1, optional=True))
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
        self.k0 = integer("k0 (linear schedule)", k0, minimum=1)
        self.k1 = integer("k1 (linear schedule)", k1, minimum=self.k0)
        self.num_epochs = integer("epochs (linear schedule)", epochs, minimum=1)
        self.k_max = integer("k_max", k_max, minimum=self.k1, optional=True)
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

