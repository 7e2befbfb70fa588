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
from io import BytesIO
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import ConfigError, apply_overrides, flatten, require, to_yaml
from ..control import (ControlledEnvironment, ControlRun, ControlSettings, LearnedSimulator, NumericalSimulator,
                       Probe, evaluate, optimise, power_spectrum)
from ..train import io
from .flow import _CPU_2D, _paper_2d, build_environment
from .flow_eval import cell_speed, load_flow_model, shedding_frequency, vorticity

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


def _inflow_cpu() -> dict[str, Any]:
    physics = _physics(_CPU_2D)
    L, H = physics["length"], physics["height"]
    return {
        "physics": physics,
        # the held-out box of benchmarks/flow.py (side 0.25·H, 2% off the centre line so that shedding starts)
        "obstacle": {"kind": "box", "center": [0.25 * L, 0.52 * H], "size": [0.25 * H, 0.25 * H]},
        "inflow": 1.0,
        "control": {"name": "inflow_scale", "initial": 0.8, "bounds": [0.2, 1.2]},
        "targets": [0.02, 0.025, 0.03],
        "settings": _settings(250, 200),
        # a learned model that does not shed at the starting control has no frequency to steer: say so and
        # skip its optimisation (false: optimise anyway)
        "require_shedding": True,
        # 3 sub-steps of Δt/3: Courant ≤ 0.75 at the peak inflow (1.5·U, U ≤ 1.2); its frequency is within
        # 0.5% of 10 sub-steps' (benchmarks/results/control.md); float64 keeps CG at rtol 1e-6
        "numerical": {"substeps": 3, "dtype": "float64", "rtol": 1e-6},
    }


def _inflow_paper() -> dict[str, Any]:
    physics = _physics(_paper_2d())
    L, H = physics["length"], physics["height"]
    return {
        "physics": physics,
        "obstacle": {"kind": "box", "center": [0.25 * L, 0.52 * H], "size": [10.0, 20.0]},
        "inflow": 1.0,
        "control": {"name": "inflow_scale", "initial": 0.8, "bounds": [0.2, 1.2]},
        # St = f·D/U ≈ 0.2 for D = 20: f ≈ 0.01·U (not measured at this size: no paper-size run here)
        "targets": [0.007, 0.009, 0.011],
        "settings": _settings(500, 200),
        "require_shedding": True,
        # Courant 0.5 at 1.5·U·Δt/h for U ≤ 1.2 and Δt = 4
        "numerical": {"substeps": 15, "dtype": "float64", "rtol": 1e-6},
    }


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


PROBLEMS: dict[str, ControlProblem] = {}


def register_problem(problem: ControlProblem) -> None:
    PROBLEMS[problem.name] = problem


register_problem(ControlProblem(
    "inflow", "shedding frequency behind a box steered by the inflow speed (the founding works' demonstration)",
    {"cpu": _inflow_cpu(), "paper": _inflow_paper()}))
register_problem(ControlProblem(
    "magnus", "shedding frequency behind a spinning cylinder steered by its rotation (surface speed / inflow)",
    {"cpu": _magnus(_inflow_cpu()), "paper": _magnus(_inflow_paper())}))


def get_problem(name: str) -> ControlProblem:
    if name not in PROBLEMS:
        raise ConfigError(f"unknown control problem {name!r}; problems: {', '.join(PROBLEMS)}.")
    return PROBLEMS[name]


# ------------------------------------------------------------------------------ building
def validate(cfg: dict[str, Any]) -> None:
    s, c, n = cfg["settings"], cfg["control"], cfg["numerical"]
    for key in ("warmup", "checkpoint_every"):
        require(isinstance(s[key], int) and s[key] >= 0, f"settings.{key}", s[key], "an integer >= 0")
    for key in ("window", "iterations", "pad"):
        require(isinstance(s[key], int) and s[key] >= 1, f"settings.{key}", s[key], "an integer >= 1")
    require(s["window"] >= 16, "settings.window", s["window"], "an integer >= 16 (a spectrum needs several periods)")
    for key in ("lr", "band"):
        require(isinstance(s[key], (int, float)) and s[key] > 0, f"settings.{key}", s[key], "a number > 0")
    require(isinstance(s["tolerance"], (int, float)) and 0 <= s["tolerance"] < 1, "settings.tolerance",
            s["tolerance"], "a number in [0, 1)")
    require(isinstance(s["cross_decay"], (int, float)) and 0 < s["cross_decay"] <= 1, "settings.cross_decay",
            s["cross_decay"], "a number in (0, 1] (1: constant learning rate)")
    require(isinstance(s["betas"], list) and len(s["betas"]) == 2 and all(0 <= b < 1 for b in s["betas"]),
            "settings.betas", s["betas"], "[beta1, beta2] in [0, 1)")
    b = c["bounds"]
    require(isinstance(b, list) and len(b) == 2 and b[0] < b[1], "control.bounds", b, "[lo, hi] with lo < hi")
    require(b[0] <= c["initial"] <= b[1], "control.initial", c["initial"], f"a number in {b}")
    require(isinstance(n["substeps"], int) and n["substeps"] >= 1, "numerical.substeps", n["substeps"],
            "an integer >= 1")
    require(n["dtype"] in DTYPES, "numerical.dtype", n["dtype"], ", ".join(DTYPES))
    require(isinstance(cfg["require_shedding"], bool), "require_shedding", cfg["require_shedding"], "true, false")
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
def _shedding(signal: np.ndarray, share: float, inflow: float) -> bool:
    """A developed oscillation: a clean spectral peak and an amplitude above 1% of the inflow."""
    return bool(share > 0.5 and float(np.std(signal)) > 0.01 * abs(inflow))


def _eval_record(ev, settings: ControlSettings, inflow: float) -> dict[str, Any]:
    f_peak, _ = shedding_frequency(list(ev.signal), ev.sample_dt)
    return {"frequency": float(ev.frequency.detach()), "frequency_peak_interpolated": f_peak,
            "peak_share": ev.share, "amplitude": float(np.std(ev.signal)),
            "shedding": _shedding(ev.signal, ev.share, inflow), "seconds": ev.warmup_seconds + ev.window_seconds,
            "sample_dt": ev.sample_dt}


def control_target(sim, verifier: NumericalSimulator, cenv: ControlledEnvironment, probe: Probe,
                   settings: ControlSettings, target: float, initial: dict[str, float], inflow: float,
                   progress: bool = True) -> dict[str, Any]:
    """One target: optimise through ``sim``, then re-simulate the best control with ``verifier``."""
    name = cenv.names[0]

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
    model_rec, check_rec = _eval_record(through, settings, inflow), _eval_record(check, settings, inflow)
    steps = run.history
    return {
        "target": target, "initial": dict(initial), "best": best, "iterations": len(steps), "converged": run.converged,
        "stopped": run.stop_reason,
        "frequency_model": model_rec["frequency"], "frequency_numerical": check_rec["frequency"],
        "error_model": (model_rec["frequency"] - target) / target,
        "error_numerical": (check_rec["frequency"] - target) / target,
        "model_eval": model_rec, "numerical_eval": check_rec,
        "seconds_per_iteration": float(np.mean([h["seconds"] for h in steps])),
        "gradient_seconds_per_iteration": float(np.mean([h["gradient_seconds"] for h in steps])),
        "seconds_total": run.seconds, "history": steps,
        "_signals": {"model_first": run.first_signal, "model_best": through.signal, "numerical_best": check.signal,
                     "sample_dt_model": through.sample_dt, "sample_dt_numerical": check.sample_dt},
        "_snapshots": {"model": through.bound.snapshot(through.state), "numerical": check.bound.snapshot(check.state)},
    }


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
    run_dir = Path(out) if out is not None else Path("runs") / "control" / problem / time.strftime("%Y%m%d-%H%M%S")
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
        start_rec = _eval_record(start_model, settings, inflow)
        if cfg["require_shedding"] and not start_rec["shedding"]:
            reason = (f"the model does not shed at the start ({name0} = {initial[name0]:g}: probe amplitude "
                      f"{start_rec['amplitude']:.3g}, {100 * start_rec['amplitude'] / abs(inflow):.2g}% of the inflow; "
                      f"spectral peak share {start_rec['peak_share']:.2f}): no shedding frequency to steer")
            if progress:
                print(f"  {reason}; optimisation skipped (require_shedding=false optimises anyway)", flush=True)
            results = [_skipped(t, initial, start_rec, reason) for t in cfg["targets"]]
        else:
            results = [control_target(sim, verifier, cenv, probe, settings, t, initial, inflow, progress)
                       for t in cfg["targets"]]
    report = {"problem": problem, "description": prob.description, "size": cfg["size"], "model": info,
              "simulator": sim.describe(), "verifier": verifier.describe(), "control": cfg["control"]["name"],
              "bounds": cfg["control"]["bounds"],
              "settings": cfg["settings"], "numerical": cfg["numerical"], "obstacle": cfg["obstacle"],
              "inflow": inflow, "physics": cfg["physics"], "probe": vars(probe),
              "initial_numerical": _eval_record(before, settings, inflow), "initial_model": start_rec,
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


# ------------------------------------------------------------------------------ report
def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if isinstance(x, float) and math.isfinite(x) else str(x)


def markdown(report: dict[str, Any]) -> str:
    name = report["control"]
    s = report["settings"]
    lines = [f"# Flow control: {report['problem']} ({report['size']} size)", "", report["description"] + ".", "",
             f"- through: {report['simulator']}" + (f" — `{report['model']['model']}`, {report['model'].get('epochs')} "
                                                    "epochs" if report["model"]["model"] != "numerical" else ""),
             f"- verified by: {report['verifier']}",
             f"- control `{name}`, start {report['targets'][0]['initial'][name]:g}; warm-up {s['warmup']} steps "
             f"(no gradient), back-propagation through {s['window']} steps (checkpoints every {s['checkpoint_every']}), "
             f"Adam lr {s['lr']}, at most {s['iterations']} iterations, stop within {100 * s['tolerance']:g}% of the target",
             f"- at the start the numerical solver sheds at f = {_fmt(report['initial_numerical']['frequency'])}",
             "", f"| target f | {name} found | f through the model | f re-simulated (numerical) | error model / "
                 "numerical | iterations | s per iteration (gradient window) | s total | model sheds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["targets"]:
        if "skipped" in r:
            lines.append(f"| {_fmt(r['target'])} | – | no shedding | – | – | 0 | – | – | **NO** |")
            continue
        lines.append(f"| {_fmt(r['target'])} | {_fmt(r['best'][name])} | {_fmt(r['frequency_model'])} | "
                     f"{_fmt(r['frequency_numerical'])} | {100 * r['error_model']:+.1f}% / {100 * r['error_numerical']:+.1f}% | "
                     f"{r['iterations']} | {_fmt(r['seconds_per_iteration'], 3)} ({_fmt(r['gradient_seconds_per_iteration'], 3)}) | "
                     f"{_fmt(r['seconds_total'], 3)} | {'yes' if r['model_eval']['shedding'] else 'NO'} |")
    skipped = [r["skipped"] for r in report["targets"] if "skipped" in r]
    if skipped:
        lines += ["", f"Not optimised: {skipped[0]}."]
    if "frequency.png" in report["files"]:
        lines += ["", "![frequency](frequency.png)", "", "![spectra](spectra.png)", "", "![flow](flow.png)"]
    lines.append("")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    buf = BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    io.atomic_write_bytes(path, buf.getvalue())


def plot_frequency(path: Path, report: dict[str, Any]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(report["targets"]):
        color = f"C{i}"
        its = [h["iteration"] for h in r["history"]]
        ax.plot(its, [h["frequency"] for h in r["history"]], "o-", color=color, label=f"target {r['target']:g}")
        ax.axhline(r["target"], color=color, ls=":", lw=1)
        ax.plot([its[-1] + 0.5], [r["frequency_numerical"]], "s", color=color, mfc="none", ms=9)
    ax.set(xlabel="optimisation iteration", ylabel="shedding frequency",
           title=f"{report['problem']}: through {report['simulator'].split(' (')[0]} (squares: re-simulated by the "
                 "numerical solver)")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_spectra(path: Path, results: list[dict], before, settings: ControlSettings, report: dict) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    sig0 = before.signal
    for ax, r in zip(axes[0], results):
        s = r["_signals"]
        curves = [("numerical, start", sig0, before.sample_dt, "k", ":"),
                  ("model, start", s["model_first"], s["sample_dt_model"], "C1", ":"),
                  ("model, optimum", s["model_best"], s["sample_dt_model"], "C1", "-"),
                  ("numerical, optimum", s["numerical_best"], s["sample_dt_numerical"], "k", "-")]
        for label, sig, dt, color, ls in curves:
            if sig is None:
                continue
            f, p = power_spectrum(torch.as_tensor(sig, dtype=torch.float64), dt, settings.pad)
            ax.plot(f.numpy(), (p / p[1:].max().clamp(min=1e-300)).numpy(), color=color, ls=ls, label=label, lw=1)
        ax.axvline(r["target"], color="C3", lw=1, label="target")
        ax.set(xlim=(0, min(4 * r["target"], 0.5 / before.sample_dt)), xlabel="frequency", ylabel="power (normalised)",
               title=f"target {r['target']:g}")
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_flows(path: Path, results: list[dict], report: dict) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 2.6 * len(results)), squeeze=False)
    for row, r in zip(axes, results):
        for ax, key in zip(row, ("model", "numerical")):
            u, solid, h = r["_snapshots"][key]
            w = vorticity(u, h).numpy()
            lim = max(float(np.percentile(np.abs(w), 99)), 1e-12)  # the corners of the obstacle spike
            ax.imshow(w.T, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim,
                      extent=(0.0, solid.shape[0] - 1.0, 0.0, solid.shape[1] - 1.0))
            ax.contour(solid.T.astype(float), levels=[0.5], colors="k", linewidths=0.8)
            ax.set(xticks=[], yticks=[])
            what = "through the model" if key == "model" else "re-simulated, numerical"
            f = r["frequency_model"] if key == "model" else r["frequency_numerical"]
            ax.set_title(f"target {r['target']:g}: vorticity at the optimum, {what} (f = {f:.4g})", fontsize=8)
    _save(fig, path)


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
