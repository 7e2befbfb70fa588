"""The PRDP controller's hyper-parameters and the record of a budget change."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .._checks import choice, integer, real

METRICS = ("validation", "train_loss")


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
        set_("k0", integer("PRDPConfig.k0", self.k0, minimum=1))
        set_("delta_k", integer("PRDPConfig.delta_k", self.delta_k, minimum=1))
        set_("k_max", integer("PRDPConfig.k_max", self.k_max, minimum=1))
        if self.k0 > self.k_max:
            raise ValueError(f"PRDPConfig.k0 must be <= k_max, got k0={self.k0} > k_max={self.k_max}.")
        for name in ("tau_step", "tau_stop"):
            set_(name, real(f"PRDPConfig.{name}", getattr(self, name), positive=True, maximum=1.0))
        set_("ema_window", integer("PRDPConfig.ema_window", self.ema_window, minimum=1, optional=True))
        set_("lookback", integer("PRDPConfig.lookback", self.lookback, minimum=2))
        set_("initial_checkpoint", real("PRDPConfig.initial_checkpoint", self.initial_checkpoint,
                                        positive=True, optional=True, fix="None takes the first metric."))
        choice("PRDPConfig.metric", self.metric, METRICS)

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
