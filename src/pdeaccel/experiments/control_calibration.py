"""Output calibration of a learned flow model for control (ours; named option ``calibration.rounds``).

A learned solver's shedding frequency can be off by a nearly constant factor (the cpu model sheds
about 20% fast behind the box: ``benchmarks/results/control.md``), and a control optimised through
it then misses the target by that factor once re-simulated by the numerical solver. Output
space mapping corrects this with the re-simulations the protocol already runs: optimise through the
model to a *model target* ``t`` (at first the target itself), re-simulate the optimum with the
numerical solver, and if it misses the target ``f*`` by more than ``tolerance``, set
``t ← t · f*/f_numerical`` and optimise through the model again from the control found, at most
``rounds`` times. Every gradient and every optimisation step is the learned model's; the numerical
solver only evaluates each round's optimum once (without gradient), and those evaluations are
timed and counted in the result. ``rounds = 0`` is the plain protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


from ..control import ControlRun, ControlSettings, ControlledEnvironment, Evaluation, Probe, evaluate, optimise
from .control_report import target_record


@dataclass
class CalibratedRun:
    """The round whose control came closest to the target once re-simulated: its optimisation
    (``run``), the model's rollout at that control (``through``) and the numerical one (``check``);
    ``rounds`` lists every round (model target, control, frequencies, steps and seconds)."""

    run: ControlRun
    through: Evaluation
    check: Evaluation
    control: dict[str, float]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # every optimisation step of every round
    model_seconds: float = 0.0
    numerical_seconds: float = 0.0
    first_signal: Any = None  # the probe signal at the initial control (round 0's first iteration)


def calibrated_optimise(sim, verifier, cenv: ControlledEnvironment, probe: Probe, settings: ControlSettings,
                        target: float, initial: Mapping[str, float], *, rounds: int, tolerance: float,
                        callback: Callable[[dict[str, Any]], None] | None = None) -> CalibratedRun:
    """Optimise through ``sim`` to ``target`` with up to ``rounds`` output corrections measured by
    ``verifier`` (see the module docstring)."""
    model_target, start = float(target), dict(initial)
    best: CalibratedRun | None = None
    records: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    model_seconds = numerical_seconds = 0.0
    first_signal = None
    for r in range(rounds + 1):
        run = optimise(sim, cenv, start, model_target, probe, settings,
                       callback=None if callback is None else (lambda row, r=r: callback({**row, "round": r})))
        model_seconds += run.seconds
        first_signal = run.first_signal if r == 0 else first_signal
        control = dict(run.best or start)
        through = run.best_evaluation or evaluate(sim, cenv, control, probe, settings)
        t0 = time.perf_counter()
        check = evaluate(verifier, cenv, control, probe, settings)
        check_seconds = time.perf_counter() - t0
        numerical_seconds += check_seconds
        f_model, f_num = float(through.frequency.detach()), float(check.frequency.detach())
        # one running iteration count over the rounds (each round's own count kept as round_iteration)
        history += [{**row, "iteration": len(history) + i, "round_iteration": row["iteration"], "round": r,
                     "model_target": model_target} for i, row in enumerate(run.history)]
        records.append({"round": r, "model_target": model_target, "control": control, "frequency_model": f_model,
                        "frequency_numerical": f_num, "error_numerical": (f_num - target) / target,
                        "iterations": len(run.history), "stopped": run.stop_reason, "model_seconds": run.seconds,
                        "numerical_seconds": check_seconds})
        if best is None or abs(f_num - target) < abs(float(best.check.frequency) - target):
            best = CalibratedRun(run, through, check, control)
        if abs(f_num - target) <= tolerance * target or r == rounds or not f_num > 0:
            break
        model_target *= target / f_num
        start = control
    assert best is not None
    best.rounds, best.history = records, history
    best.model_seconds, best.numerical_seconds = model_seconds, numerical_seconds
    best.first_signal = first_signal
    return best


def calibrated_target(sim, verifier, cenv, probe, settings, target, initial, inflow, progress, rounds, tolerance):
    """``control_target``'s record for one target reached with output calibration (the rounds kept
    under ``calibration_rounds``; the numerical re-simulations counted in ``seconds_total``)."""
    name = cenv.names[0]

    def show(row):
        if progress:
            print(f"  target {target:g}, round {row['round']}: iteration {row['iteration']}: "
                  f"{name} = {row[f'control.{name}']:.4f}, f = {row['frequency']:.5f}, {row['seconds']:.1f} s", flush=True)

    res = calibrated_optimise(sim, verifier, cenv, probe, settings, target, initial, rounds=rounds,
                              tolerance=tolerance, callback=show)
    return target_record(target, initial, res.control, res.history, res.through, res.check, res.first_signal, settings,
                         inflow, converged=abs(float(res.check.frequency) - target) <= tolerance * target,
                         stopped=f"calibrated, {len(res.rounds)} round(s)",
                         # the numerical re-simulations the calibration ran count in its total
                         seconds_total=res.model_seconds + res.numerical_seconds,
                         numerical_seconds=res.numerical_seconds, calibration_rounds=res.rounds)
