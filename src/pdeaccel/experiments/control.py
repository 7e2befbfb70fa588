"""Named flow-control problems and ``pdeaccel control``: steer the vortex-shedding frequency behind
an obstacle through a learned flow solver or the differentiable numerical one, then verify every
optimised control by re-simulating it with the numerical solver.

Problems (each at ``cpu`` and ``paper`` size; ``pdeaccel control`` lists them):

* ``inflow`` — the founding works' demonstration: a box in the channel, the control scales the
  mean inflow speed (``inflow_scale``: the speed is ``inflow × inflow_scale``; the in- and outflow
  profiles scale together). Paper size: the 300×100 channel with a 10×20 box, warm-up 500 steps,
  back-propagation through 200 steps (Δt = 4, as the released models). Cpu size: the flow-2d cpu
  channel (64×32, Δt = 1) with the held-out 8×8 box, warm-up 250 steps, window 200.
* ``magnus`` — a spinning cylinder at fixed inflow, the control is its rotation (``rotation``: the
  surface speed ω·r in units of the mean inflow speed, the training pool's ``magnus_max`` range).

The observable is the mean cross-stream velocity in a window 1–3 obstacle sizes behind the
obstacle (:func:`pdeaccel.experiments.flow_eval.probe_window`); its frequency is the
differentiable spectral centroid of :func:`pdeaccel.control.spectral_frequency`; the objective is
``(f − f_target)²``, minimised by Adam (:func:`pdeaccel.control.optimise`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import (Allowed, ConfigError, apply_overrides, check_ranges, flag, flatten, integer_in, number_in,
                      one_of, require, to_yaml)
from ..control import (ControlledEnvironment, ControlRun, ControlSettings, LearnedSimulator, NumericalSimulator,
                       Probe, evaluate, optimise)
from ..train import io
from .flow import _CPU_2D, _paper_2d, build_environment
from .registry import RUNNABLES, lookup, register_runnable, timestamped_run_dir
from .control_calibration import calibrated_target
from .control_report import eval_record, markdown, target_record, plot_flows, plot_frequency, plot_spectra
from .flow_eval import cell_speed, load_flow_model

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class ControlProblem:
    name: str
    description: str
    sizes: dict[str, dict[str, Any]]

    def config(self, size: str | None) -> dict[str, Any]:
        size = size or "cpu"
        if size not in self.sizes:
            raise ConfigError(f"--size {size!r}: the {self.name} problem has sizes {', '.join(self.sizes)}.")
        return copy.deepcopy(self.sizes[size])


def _physics(base: dict[str, Any]) -> dict[str, Any]:
    p = base["physics"]
    return {k: p[k] for k in ("ndim", "length", "height", "mu", "rho", "dt")}


def _settings(warmup: int, window: int) -> dict[str, Any]:
    # lr: Adam's first step is lr in the control's own units; betas (0, 0.9): no momentum, so it turns
    # around at once when the frequency passes the target, and the learning rate halves there
    # (cross_decay); tolerance: stop within 2% of the target (the goal is 10% after re-simulation)
    return {"warmup": warmup, "window": window, "iterations": 8, "lr": 0.15, "betas": [0.0, 0.9],
            "tolerance": 0.02, "cross_decay": 0.5, "checkpoint_every": 10, "pad": 8, "band": 2.0}


def _inflow(base: dict[str, Any], box: list[float] | None, targets: list[float], warmup: int,
            substeps: int) -> dict[str, Any]:
    physics = _physics(base)
    L, H = physics["length"], physics["height"]
    return {
        "physics": physics,
        # 2% off the centre line so that shedding starts
        "obstacle": {"kind": "box", "center": [0.25 * L, 0.52 * H], "size": box or [0.25 * H, 0.25 * H]},
        "inflow": 1.0,
        "control": {"name": "inflow_scale", "initial": 0.8, "bounds": [0.2, 1.2]},
        "targets": targets,
        "settings": _settings(warmup, 200),
        # a learned model that does not shed at the starting control has no frequency to steer: say so and
        # skip its optimisation (false: optimise anyway)
        "require_shedding": True,
        "numerical": {"substeps": substeps, "dtype": "float64", "rtol": 1e-6},
        # output calibration of a learned model (ours, experiments/control_calibration.py): up to `rounds`
        # corrections of the model's target by the numerical re-simulation's miss, until it is within
        # `tolerance` of the target; 0 rounds: the plain protocol (the founding works')
        "calibration": {"rounds": 0, "tolerance": 0.05},
    }


def _inflow_cpu() -> dict[str, Any]:
    # the flow-2d cpu channel with the held-out box of benchmarks/flow.py (side 0.25·H); 3 sub-steps of Δt/3:
    # Courant ≤ 0.75 at the peak inflow (1.5·U, U ≤ 1.2); its frequency is within 0.5% of 10 sub-steps'
    # (benchmarks/results/control.md); float64 keeps CG at rtol 1e-6
    return _inflow(_CPU_2D, None, [0.02, 0.025, 0.03], 250, 3)


def _inflow_paper() -> dict[str, Any]:
    # the founding works' 10×20 box; St = f·D/U ≈ 0.2 for D = 20: f ≈ 0.01·U (not measured at this size);
    # 15 sub-steps: Courant 0.5 at 1.5·U·Δt/h for U ≤ 1.2 and Δt = 4
    return _inflow(_paper_2d(), [10.0, 20.0], [0.007, 0.009, 0.011], 500, 15)


def _magnus(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    L, H = cfg["physics"]["length"], cfg["physics"]["height"]
    # the held-out cylinder (diameter 0.3·H), spinning
    cfg["obstacle"] = {"kind": "magnus", "center": [0.25 * L, 0.52 * H], "radius": 0.15 * H}
    # cpu size, numerical solver (benchmarks/results/control.md): f = 0.0308 at rotation 0, 0.0333 from 0.1 to 0.4,
    # 0.0330 at ±0.5 (even in the rotation), 0.0325 at 0.63, then 0.0355 / 0.0363 / 0.0389 / 0.0420 at
    # 0.7 / 0.8 / 0.9 / 1 with half the wake amplitude: the problem stays on that monotone branch (a gradient
    # method started below 0.65 walks to rotation 0). Paper size: the same range, not measured.
    cfg["control"] = {"name": "rotation", "initial": 0.8, "bounds": [0.7, 1.0]}
    cfg["targets"] = [0.036, 0.038, 0.041] if L == 64 else cfg["targets"]
    return cfg


#: the control problems of the one registry (:data:`pdeaccel.experiments.registry.RUNNABLES`)
PROBLEMS: dict[str, ControlProblem] = RUNNABLES["control problem"]


def register_problem(problem: ControlProblem) -> None:
    register_runnable("control problem", problem.name, problem)


register_problem(ControlProblem(
    "inflow", "shedding frequency behind a box steered by the inflow speed (the founding works' demonstration)",
    {"cpu": _inflow_cpu(), "paper": _inflow_paper()}))
register_problem(ControlProblem(
    "magnus", "shedding frequency behind a spinning cylinder steered by its rotation (surface speed / inflow)",
    {"cpu": _magnus(_inflow_cpu()), "paper": _magnus(_inflow_paper())}))


def get_problem(name: str) -> ControlProblem:
    return lookup("control problem", name)


# ------------------------------------------------------------------------------ building
#: what each key of a control problem may hold (relations between keys are checked in validate)
CONTROL_RANGES: dict[str, Allowed] = {
    "settings.warmup": integer_in(0), "settings.checkpoint_every": integer_in(0, note="0: no checkpoints"),
    "settings.window": integer_in(16, note="a spectrum needs several periods"),
    "settings.iterations": integer_in(1), "settings.pad": integer_in(1),
    "settings.lr": number_in(positive=True), "settings.band": number_in(positive=True),
    "settings.tolerance": number_in(0, 0.999), "settings.cross_decay": number_in(0, 1, positive=True,
                                                                              note="1: constant learning rate"),
    "numerical.substeps": integer_in(1), "numerical.dtype": one_of(*DTYPES),
    "numerical.rtol": number_in(positive=True),
    "require_shedding": flag(),
    "calibration.rounds": integer_in(0, 8, note="0: the plain protocol"),
    "calibration.tolerance": number_in(0, 0.5, positive=True),
}


def validate(cfg: dict[str, Any]) -> None:
    check_ranges(cfg, CONTROL_RANGES)
    s, c = cfg["settings"], cfg["control"]
    require(isinstance(s["betas"], list) and len(s["betas"]) == 2 and all(0 <= b < 1 for b in s["betas"]),
            "settings.betas", s["betas"], "[beta1, beta2] in [0, 1)")
    b = c["bounds"]
    require(isinstance(b, list) and len(b) == 2 and b[0] < b[1], "control.bounds", b, "[lo, hi] with lo < hi")
    require(b[0] <= c["initial"] <= b[1], "control.initial", c["initial"], f"a number in {b}")
    require(isinstance(cfg["targets"], list) and cfg["targets"] and all(isinstance(t, (int, float)) and t > 0
                                                                          for t in cfg["targets"]),
            "targets", cfg["targets"], "a non-empty list of positive frequencies")
    nyquist = 0.5 / cfg["physics"]["dt"]
    require(all(t < nyquist for t in cfg["targets"]), "targets", cfg["targets"],
            f"frequencies below the Nyquist frequency 1/(2Δt) = {nyquist:g}")


def build_problem(cfg: dict[str, Any]) -> tuple[ControlledEnvironment, Probe]:
    """The controlled environment (float64; a learned simulator casts it to its own dtype) and the probe."""
    physics, ob, U0 = cfg["physics"], cfg["obstacle"], float(cfg["inflow"])
    name = cfg["control"]["name"]

    def build(values):
        spec = {**ob}
        scale = values.get("inflow_scale", 1.0)
        spec["inflow"] = U0 * scale
        if ob["kind"] == "magnus":
            spec["omega"] = values.get("rotation", 0.0) * U0 / ob["radius"]
        return build_environment(physics, spec, dtype=torch.float64)

    if name not in ("inflow_scale", "rotation"):
        raise ConfigError(f"control.name={name!r}: controls are inflow_scale and rotation.")
    if name == "rotation" and ob["kind"] != "magnus":
        raise ConfigError("control.name=rotation needs a spinning cylinder (obstacle.kind=magnus).")
    cenv = ControlledEnvironment.from_builder(build, {name: float(cfg["control"]["initial"])},
                                              bounds={name: tuple(cfg["control"]["bounds"])})
    c = ob["center"]
    size = 2 * ob["radius"] if "radius" in ob else max(ob["size"])
    probe = Probe(c[0] + size, c[0] + 3 * size, c[1] - size, c[1] + size)
    return cenv, probe


def settings_of(cfg: dict[str, Any]) -> ControlSettings:
    s = dict(cfg["settings"])
    s["betas"] = tuple(s["betas"])
    return ControlSettings(**s)


def numerical_simulator(cfg: dict[str, Any]) -> NumericalSimulator:
    n = cfg["numerical"]
    return NumericalSimulator(n["substeps"], dtype=DTYPES[n["dtype"]], rtol=n["rtol"])


def _check_model_physics(model_cfg: dict[str, Any], cfg: dict[str, Any], model_dir: str) -> None:
    p, q = model_cfg["physics"], cfg["physics"]
    bad = [k for k in ("ndim", "length", "height", "mu", "rho", "dt") if float(p[k]) != float(q[k])]
    if bad:
        raise ConfigError(f"--model {model_dir}: trained for {', '.join(f'{k}={p[k]}' for k in bad)}, but this "
                          f"problem has {', '.join(f'{k}={q[k]}' for k in bad)}; pick the matching --size "
                          f"or override physics.* to match.")


def simulator_for(model: str, cfg: dict[str, Any], resolution: tuple[int, int] = (1, 1)):
    """``numerical`` or a flow run directory (vanilla or NeuralStagger)."""
    if model == "numerical":
        if resolution != (1, 1):
            raise ConfigError("--resolution applies to a NeuralStagger model, not to the numerical solver.")
        return numerical_simulator(cfg), {"model": "numerical"}
    net, model_cfg, epochs = load_flow_model(model)
    _check_model_physics(model_cfg, cfg, model)
    m = model_cfg.get("model", {})
    kind = m.get("kind", "vanilla")
    label = "vanilla" if kind == "vanilla" else f"NeuralStagger s{m.get('stride')}t{m.get('window')}"
    try:
        sim = LearnedSimulator(net, space=resolution[0], time=resolution[1], name=label)
    except ValueError as exc:
        raise ConfigError(f"--resolution {resolution[0]},{resolution[1]}: {exc}") from None
    return sim, {"model": str(model), "kind": kind, "label": label, "epochs": epochs,
                 "parameters": sum(q.numel() for q in net.parameters()), "resolution": list(resolution)}


# ------------------------------------------------------------------------------ running
def control_target(sim, verifier: NumericalSimulator, cenv: ControlledEnvironment, probe: Probe,
                   settings: ControlSettings, target: float, initial: dict[str, float], inflow: float,
                   progress: bool = True, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """One target: optimise through ``sim``, then re-simulate the best control with ``verifier``;
    with ``calibration={"rounds": N, "tolerance": tol}`` (N > 0, a learned ``sim``), up to N output
    corrections (:mod:`pdeaccel.experiments.control_calibration`)."""
    name = cenv.names[0]
    rounds = int((calibration or {}).get("rounds", 0))
    if rounds > 0 and not isinstance(sim, NumericalSimulator):
        return calibrated_target(sim, verifier, cenv, probe, settings, target, initial, inflow, progress,
                                  rounds, float(calibration["tolerance"]))

    def show(row):
        if progress:
            print(f"  target {target:g}: iteration {row['iteration']}: {name} = {row[f'control.{name}']:.4f}, "
                  f"f = {row['frequency']:.5f}, {row['seconds']:.1f} s", flush=True)

    run: ControlRun = optimise(sim, cenv, initial, target, probe, settings, callback=show)
    best = run.best or dict(initial)
    # the objective is a fixed function of the controls (warm-up from rest, then the window): the best
    # iteration's rollout is the model's rollout at the optimum
    through = run.best_evaluation or evaluate(sim, cenv, best, probe, settings)
    if isinstance(sim, NumericalSimulator) and _same_numerical(sim, verifier):
        check = through  # the model is the numerical solver with the verifier's settings: the same rollout
    else:
        check = evaluate(verifier, cenv, best, probe, settings)
    return target_record(target, initial, best, run.history, through, check, run.first_signal, settings, inflow,
                         converged=run.converged, stopped=run.stop_reason, seconds_total=run.seconds)


def _skipped(target: float, initial: dict[str, float], start: dict[str, Any], reason: str) -> dict[str, Any]:
    return {"target": target, "initial": dict(initial), "best": dict(initial), "iterations": 0, "converged": False,
            "stopped": "not optimised",
            "skipped": reason, "frequency_model": start["frequency"], "frequency_numerical": math.nan,
            "error_model": math.nan, "error_numerical": math.nan, "model_eval": start, "numerical_eval": None,
            "seconds_per_iteration": math.nan, "gradient_seconds_per_iteration": math.nan, "seconds_total": 0.0,
            "history": []}


def _same_numerical(a: NumericalSimulator, b: NumericalSimulator) -> bool:
    return (a.substeps, a.dtype, a.rtol, a.advection) == (b.substeps, b.dtype, b.rtol, b.advection)


def run_control(problem: str, *, model: str = "numerical", size: str | None = None, targets: list[float] | None = None,
                resolution: tuple[int, int] = (1, 1), overrides: list[str] = (), out: str | Path | None = None,
                progress: bool = True) -> dict[str, Any]:
    """``pdeaccel control``: every target through ``model``, each verified by the numerical
    solver; writes a run directory (config.yaml, history.csv, report.md/.json, figures)."""
    prob = get_problem(problem)
    cfg = apply_overrides(prob.config(size), overrides,
                          keys_hint=f"Run `pdeaccel control {problem} --show` to list the keys.")
    if targets:
        cfg["targets"] = [float(t) for t in targets]
    validate(cfg)
    cfg["problem"], cfg["size"] = problem, size or "cpu"
    sim, info = simulator_for(model, cfg, resolution)
    cenv, probe = build_problem(cfg)
    settings = settings_of(cfg)
    verifier = numerical_simulator(cfg)
    run_dir = Path(out) if out is not None else timestamped_run_dir("control", problem)
    io.prepare_fresh_run_dir(run_dir)
    io.atomic_write_text(run_dir / "config.yaml", to_yaml({"config": cfg, "model": info}))
    name0 = cenv.names[0]
    initial = {name0: float(cfg["control"]["initial"])}
    inflow = float(cfg["inflow"])
    start = time.perf_counter()
    with warnings.catch_warnings():
        # the solver reads float() of tensors that carry the controls' graph (tolerances only)
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
        if progress:
            print(f"pdeaccel control {problem} ({cfg['size']} size) through {getattr(sim, 'describe')()}; "
                  f"verified by {verifier.describe()}", flush=True)
        before = evaluate(verifier, cenv, initial, probe, settings)
        start_model = before
        if not (isinstance(sim, NumericalSimulator) and _same_numerical(sim, verifier)):
            start_model = evaluate(sim, cenv, initial, probe, settings)
        start_rec = eval_record(start_model, settings, inflow)
        if cfg["require_shedding"] and not start_rec["shedding"]:
            reason = (f"the model does not shed at the start ({name0} = {initial[name0]:g}: probe amplitude "
                      f"{start_rec['amplitude']:.3g}, {100 * start_rec['amplitude'] / abs(inflow):.2g}% of the inflow; "
                      f"spectral peak share {start_rec['peak_share']:.2f}): no shedding frequency to steer")
            if progress:
                print(f"  {reason}; optimisation skipped (require_shedding=false optimises anyway)", flush=True)
            results = [_skipped(t, initial, start_rec, reason) for t in cfg["targets"]]
        else:
            results = [control_target(sim, verifier, cenv, probe, settings, t, initial, inflow, progress,
                                      calibration=cfg["calibration"]) for t in cfg["targets"]]
    report = {"problem": problem, "description": prob.description, "size": cfg["size"], "model": info,
              "simulator": sim.describe(), "verifier": verifier.describe(), "control": cfg["control"]["name"],
              "bounds": cfg["control"]["bounds"],
              "settings": cfg["settings"], "numerical": cfg["numerical"], "obstacle": cfg["obstacle"],
              "inflow": inflow, "physics": cfg["physics"], "probe": vars(probe),
              "initial_numerical": eval_record(before, settings, inflow), "initial_model": start_rec,
              "targets": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
              "seconds": time.perf_counter() - start, "run_dir": str(run_dir),
              "files": ["config.yaml", "history.csv", "frequency.png", "spectra.png", "flow.png", "report.md",
                        "report.json"]}
    rows = [{"target": r["target"], **h} for r in results for h in r["history"]]
    io.write_csv(run_dir / "history.csv", rows)
    done = [r for r in results if "_signals" in r]
    if done:
        plot_frequency(run_dir / "frequency.png", {**report, "targets": [r for r in report["targets"] if "skipped" not in r]})
        plot_spectra(run_dir / "spectra.png", done, before, settings, report)
        plot_flows(run_dir / "flow.png", done, report)
    else:
        report["files"] = [f for f in report["files"] if not f.endswith(".png")]
    io.write_json(run_dir / "report.json", report)
    io.atomic_write_text(run_dir / "report.md", markdown(report))
    # for callers that draw their own figures (benchmarks/control.py); never written to JSON
    report["_results"], report["_before"] = results, before
    return report


def describe_problems() -> str:
    return "\n".join(f"{p.name:10s} {p.description}  (sizes: {', '.join(p.sizes)})" for p in PROBLEMS.values())


def show_problem(name: str, size: str | None) -> str:
    cfg = get_problem(name).config(size)
    return to_yaml(cfg) + "# keys: " + ", ".join(flatten(cfg))


__all__ = ["PROBLEMS", "ControlProblem", "build_problem", "control_target", "describe_problems", "get_problem",
           "run_control", "show_problem", "simulator_for", "cell_speed"]


def parse_resolution(text: str) -> tuple[int, int]:
    """``full`` → (1, 1); ``R`` → (R, 1); ``R:Q`` → (R, Q) (as ``pdeaccel simulate --resolution``)."""
    text = str(text).strip().lower()
    if text == "full":
        return 1, 1
    try:
        parts = tuple(int(x) for x in text.split(":"))
    except ValueError:
        parts = ()
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise ConfigError(f"--resolution must be 'full', 'R' or 'R:Q' (positive integers: R times coarser in space, "
                          f"Q in time); got {text!r}.")
    return (parts[0], parts[1] if len(parts) == 2 else 1)


def cli_main(args, progress: bool) -> int:
    """``pdeaccel control [PROBLEM] [--model RUN_DIR|numerical] [--target F,F,…] [--resolution full|R|R:Q]
    [--size cpu|paper] [--out DIR] [--show] [key=value …]``."""
    if args.problem is None:
        print(describe_problems())
        return 0
    if args.show:
        print(show_problem(args.problem, args.size))
        return 0
    targets = None
    if args.target:
        try:
            targets = [float(t) for t in args.target.split(",") if t.strip()]
        except ValueError:
            raise ConfigError(f"--target must be comma-separated frequencies such as 0.02,0.025; got {args.target!r}") from None
    resolution = parse_resolution(args.resolution)
    report = run_control(args.problem, model=args.model, size=args.size, targets=targets, resolution=resolution,
                         overrides=args.overrides, out=args.out, progress=progress)
    print(Path(report["run_dir"], "report.md").read_text())
    print(f"run directory: {report['run_dir']}")
    return 0
