"""Adam on the controls: one objective evaluation (warm-up without gradient, then the window with
it) and the optimisation loop with its stopping rules."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .._checks import integer
from .environment import ControlledEnvironment, Probe
from .simulators import Bound, State, simulate
from .spectral import peak_share, spectral_frequency


@dataclass
class ControlSettings:
    """``warmup``: fine steps from rest without gradient; ``window``: fine steps back-propagated
    through (their probe samples make the signal); ``iterations``: the most Adam steps;
    ``tolerance``: stop once ``|f − f_target| ≤ tolerance·f_target`` (0: never early);
    ``checkpoint_every``: simulator calls per checkpointed chunk (0: no checkpointing);
    ``pad``/``band``: of :func:`spectral_frequency`; ``cross_decay``: the learning rate is
    multiplied by it whenever the frequency crosses the target (the gradient changes sign), so
    Adam, whose step is about ``lr`` whatever the gradient's size, closes in on the target like a
    bisection instead of circling it (1: a constant learning rate)."""

    warmup: int = 200
    window: int = 200
    iterations: int = 8
    lr: float = 0.15
    betas: tuple[float, float] = (0.0, 0.9)
    tolerance: float = 0.02
    checkpoint_every: int = 10
    pad: int = 8
    band: float = 2.0
    cross_decay: float = 0.5

    def __post_init__(self) -> None:
        for key in ("warmup", "window", "iterations", "checkpoint_every", "pad"):
            integer(key, getattr(self, key), minimum=1 if key in ("window", "pad") else 0)
        if not (self.lr > 0 and self.band > 0 and self.tolerance >= 0 and 0 < self.cross_decay <= 1):
            raise ValueError("lr and band must be positive, tolerance non-negative and cross_decay in (0, 1].")


@dataclass
class Evaluation:
    """One rollout at fixed controls: the frequency estimate (a tensor, with its graph when
    evaluated with gradient), the window's probe signal, the last state and timings."""

    frequency: torch.Tensor
    signal: np.ndarray
    sample_dt: float
    state: State
    bound: Bound
    warmup_seconds: float
    window_seconds: float
    share: float


def evaluate(simulator, cenv: ControlledEnvironment, controls: Mapping[str, torch.Tensor | float], probe: Probe,
             settings: ControlSettings, *, grad: bool = False) -> Evaluation:
    """Warm-up from rest (no gradient), then the window (with gradient if ``grad``, checkpointed)."""
    t0 = time.perf_counter()
    with torch.set_grad_enabled(grad):
        bound = simulator.bind(cenv(controls), probe)
    state = bound.rest()
    with torch.no_grad():
        state, _ = simulate(bound, state, math.ceil(settings.warmup / bound.steps_per_call))
    state = tuple(s.detach() for s in state)
    t1 = time.perf_counter()
    with torch.set_grad_enabled(grad):
        calls = math.ceil(settings.window / bound.steps_per_call)
        state, probes = simulate(bound, state, calls, checkpoint_every=settings.checkpoint_every if grad else 0)
        signal = probes[0, :math.ceil(settings.window / bound.steps_per_call) * bound.samples_per_call]
        f = spectral_frequency(signal.to(torch.float64), bound.sample_dt, pad=settings.pad, band=settings.band)
    t2 = time.perf_counter()
    return Evaluation(f, signal.detach().double().numpy().copy(), bound.sample_dt, state, bound, t1 - t0, t2 - t1,
                      peak_share(signal.double(), bound.sample_dt, pad=settings.pad, band=settings.band))


@dataclass
class ControlRun:
    """What :func:`optimise` did: per iteration the controls, the frequency, the objective, the
    gradient and the seconds (forward + backward and in total); the best controls (smallest
    |f − f_target| seen); the first and the last window's signals."""

    target: float
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    best_frequency: float = math.nan
    first_signal: np.ndarray | None = None
    last_signal: np.ndarray | None = None
    sample_dt: float = 1.0
    converged: bool = False
    stop_reason: str = "iterations"
    seconds: float = 0.0
    best_evaluation: "Evaluation | None" = None


def optimise(simulator, cenv: ControlledEnvironment, initial: Mapping[str, float], target: float, probe: Probe,
             settings: ControlSettings, *, controls: Sequence[str] | None = None,
             callback: Callable[[dict[str, Any]], None] | None = None) -> ControlRun:
    """Adam on ``controls`` (default all of ``cenv.names``; the others stay at ``initial``) to bring
    the shedding frequency to ``target``: minimise ``(f − f_target)²``. Adam normalises the
    gradient's scale, so the step is about ``lr`` in the controls' own units; the learning rate is
    multiplied by ``settings.cross_decay`` each time the frequency crosses the target; after each
    step the controls are clipped to ``cenv.bounds``. Stops at ``settings.iterations`` objective
    evaluations, as soon as one is within ``settings.tolerance`` of the target, or when every
    control sits on a bound that the gradient pushes it beyond (``run.stop_reason``). The best
    evaluation (closest to the target) is kept in ``run.best_evaluation`` (detached)."""
    if not (target > 0 and math.isfinite(target)):
        raise ValueError(f"the target frequency must be a positive number, got {target!r}.")
    active = tuple(controls) if controls is not None else cenv.names
    unknown = [k for k in active if k not in cenv.names]
    if unknown:
        raise ValueError(f"unknown control(s) {', '.join(unknown)}; this problem has {', '.join(cenv.names)}.")
    params = {k: torch.tensor(float(initial[k]), dtype=torch.float64, requires_grad=k in active) for k in cenv.names}
    opt = torch.optim.Adam([params[k] for k in active], lr=settings.lr, betas=settings.betas)
    run = ControlRun(target=float(target))
    start = time.perf_counter()
    best_err = math.inf
    above: bool | None = None  # whether the last frequency was above the target
    for it in range(max(settings.iterations, 1)):
        t0 = time.perf_counter()
        opt.zero_grad()
        ev = evaluate(simulator, cenv, params, probe, settings, grad=True)
        f = ev.frequency
        loss = (f - target) ** 2
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        fv = float(f.detach())
        values = {k: float(params[k].detach()) for k in cenv.names}
        grads = {k: float(params[k].grad) if params[k].grad is not None else 0.0 for k in active}
        err = abs(fv - target)
        if math.isfinite(fv) and err < best_err:
            best_err, run.best, run.best_frequency = err, dict(values), fv
            ev.frequency = ev.frequency.detach()
            ev.state = tuple(x.detach() for x in ev.state)
            run.best_evaluation = ev
        if run.first_signal is None:
            run.first_signal = ev.signal
        run.last_signal, run.sample_dt = ev.signal, ev.sample_dt
        done = err <= settings.tolerance * target
        stuck = not done and all((values[k] <= cenv.bounds[k][0] and grads[k] > 0)
                                 or (values[k] >= cenv.bounds[k][1] and grads[k] < 0) for k in active)
        if above is not None and (fv > target) != above:
            for group in opt.param_groups:
                group["lr"] *= settings.cross_decay
        above = fv > target
        if not done and not stuck and it < settings.iterations - 1:
            opt.step()
            with torch.no_grad():
                for k in active:
                    lo, hi = cenv.bounds[k]
                    params[k].clamp_(lo, hi)
        t3 = time.perf_counter()
        row = {"iteration": it, **{f"control.{k}": v for k, v in values.items()}, "frequency": fv,
               "lr": opt.param_groups[0]["lr"],
               "loss": float(loss.detach()), **{f"grad.{k}": g for k, g in grads.items()},
               "df_dcontrol": (grads[active[0]] / (2 * (fv - target))) if fv != target else math.nan,
               "peak_share": ev.share, "warmup_seconds": ev.warmup_seconds,
               "window_forward_seconds": ev.window_seconds, "backward_seconds": t2 - t1,
               "gradient_seconds": ev.window_seconds + (t2 - t1), "seconds": t3 - t0}
        run.history.append(row)
        if callback is not None:
            callback(row)
        if done:
            run.converged, run.stop_reason = True, "converged"
            break
        if stuck:
            run.stop_reason = "at a bound"  # the target lies beyond it as far as the gradient says
            break
    run.seconds = time.perf_counter() - start
    return run
