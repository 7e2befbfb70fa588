"""One training run of a named experiment: the resolved config, the run directory (fresh or resumed),
the budget schedules, the trainer, and the run's summary and report (``pdeaccel train``).
:mod:`pdeaccel.experiments.runner` builds comparisons and sweeps from these runs."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from .. import prdp as prdp_mod
from ..config import ConfigError, apply_overrides, flatten, to_yaml
from ..train import distributed, io
from ..train.budgets import LINEAR, PICARD, Budgets
from ..train.report import markdown_table, plot_run
from ..train.trainer import NothingResumedError, Trainer, TrainSettings, flushing_denormals
from . import data as data_mod
from .registry import Experiment, get_experiment, timestamped_run_dir, k_converged_setting, prdp_config, validate_config


def default_run_dir(kind: str, name: str) -> Path:
    return timestamped_run_dir(name, suffix=f"-{kind}")


def resolve_config(name: str, size: str = "cpu", overrides: Iterable[str] = (), seed: int | None = None) -> dict[str, Any]:
    exp = get_experiment(name)
    overrides = list(overrides)
    _refuse_reserved_overrides(overrides)  # size=paper would relabel the cpu config, not select paper's
    cfg = apply_overrides(exp.config(size), overrides)
    if seed is not None:
        cfg["seed"] = int(seed)
    validate_config(exp, cfg)
    return cfg


def _holds_files(run_dir: Path) -> bool:
    """True if ``run_dir`` has anything besides leftovers of an interrupted atomic write."""
    return run_dir.exists() and any(not io.is_temporary(p) for p in run_dir.iterdir())


def _refuse_existing(run_dir: Path, resume: bool) -> None:
    if _holds_files(run_dir) and not resume:
        raise FileExistsError(f"run directory {run_dir} already holds files; choose another --out "
                              "or continue it with --resume.")


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    _refuse_existing(run_dir, resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise io.RunDirectoryError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from exc
    io.remove_temporaries(run_dir)


# Config keys a resumed run may change (``--resume RUN key=value``): they decide how far the run
# goes, not what the saved state means. Everything else (learning rate, data, net, solver, PRDP,
# seed, size, schedule) is baked into the checkpoint or the data and is refused, naming the key.
RESUME_CHANGEABLE_KEYS = frozenset({"train.epochs", "train.target_metric"})


def plan_train(name: str, *, size: str | None = None, schedule: str | None = None, overrides: Iterable[str] = (),
               out: str | Path | None = None, seed: int | None = None,
               resume: bool = False) -> tuple[dict[str, Any], str, Path, list[str]]:
    """What :func:`train_run` will do, checked without building or writing anything: the resolved
    config, the schedule, the run directory and the config keys a resume changes."""
    exp = get_experiment(name)
    if resume:
        if out is None:
            raise ConfigError("--resume needs the run directory to continue.")
        run_dir = Path(out)
        cfg, schedule, changed = _resumed_config(exp, run_dir, size=size, schedule=schedule, seed=seed,
                                                 overrides=overrides)
    else:
        cfg = resolve_config(name, size or "cpu", overrides, seed)
        schedule = _default_schedule(exp, schedule)
        run_dir = Path(out) if out is not None else default_run_dir(schedule.replace(":", ""), name)
        changed = []
    _refuse_existing(run_dir, resume)
    if LINEAR in exp.budgets:
        _linear_schedule(cfg, schedule, k_converged=1)  # a bad spec fails before the (costly) build
    return cfg, schedule, run_dir, changed


def train_run(name: str, *, size: str | None = None, schedule: str | None = None, overrides: Iterable[str] = (),
              out: str | Path | None = None, seed: int | None = None, resume: bool = False,
              progress: bool = True, restart_if_damaged: bool = False,
              dist: distributed.DistContext | None = None) -> dict[str, Any]:
    """Train experiment ``name`` with a budget schedule; return the run summary (also in report.json).

    With ``resume``, ``out`` is the run directory to continue: its stored config and schedule are
    used; ``overrides`` may change only :data:`RESUME_CHANGEABLE_KEYS` (the new values are written
    to its ``config.yaml``), and ``size``/``schedule``/``seed`` must be left out or equal the
    stored ones. If every checkpoint of the run is damaged, :class:`NothingResumedError` is raised
    unless ``restart_if_damaged`` (then the run starts over at epoch 0 in the same directory).

    In a data-parallel job (``dist``, default: this process's :func:`pdeaccel.train.distributed.context`)
    rank 0 plans the run and the other ranks follow it; rank 0 builds first (it writes the
    dataset cache the others then read), rank 0 alone writes the run directory, and every rank
    returns the same summary (``world_size`` says how many ranks trained).
    """
    run = _PreparedRun(name, size=size, schedule=schedule, overrides=overrides, out=out, seed=seed, resume=resume,
                       progress=progress, restart_if_damaged=restart_if_damaged, dist=dist)
    start = time.perf_counter()
    run.trainer.fit()
    return run.finish(time.perf_counter() - start)


def steps_per_epoch(task: Any) -> int:
    """Optimiser steps in one epoch of ``task`` (counted from its minibatch iterator)."""
    return max(1, sum(1 for _ in task.train_batches(torch.Generator().manual_seed(0))))


def lr_factor(train_cfg: dict[str, Any], steps: int) -> Callable[[int], float] | None:
    """The learning-rate factor after ``e`` epochs, or None for the trainer's default (``lr_decay``
    per epoch).

    * ``train.lr_decay_every = N > 0``: ``lr_decay`` per N optimiser steps, continuously
      (optax's ``exponential_decay(lr, N, lr_decay)``, the reference code's), evaluated at epoch
      boundaries: factor ``lr_decay ** (e·S/N)`` with S steps per epoch.
    * ``train.lr_schedule = cosine``: optax's ``cosine_decay_schedule(lr, E·S, α)`` at epoch
      boundaries, ``α + (1 − α)·½(1 + cos(π e/E))`` with α = ``train.lr_final_fraction``
      (the reference code's Navier–Stokes schedule).
    """
    kind = train_cfg.get("lr_schedule", "exponential")
    every = int(train_cfg.get("lr_decay_every", 0) or 0)
    if kind == "cosine":
        epochs, alpha = train_cfg["epochs"], float(train_cfg.get("lr_final_fraction", 0.0))
        return lambda e: alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(e, epochs) / epochs))
    if every > 0:
        decay = float(train_cfg["lr_decay"])
        return lambda e: decay ** (e * steps / every)
    return None


class _PreparedRun:
    """One training run, built and ready to train (``trainer.fit()`` or epoch by epoch), then
    :meth:`finish`ed into its summary and report. :func:`train_run` and the interleaved
    :func:`compare` share it."""

    def __init__(self, name: str, *, size: str | None, schedule: str | None, overrides: Iterable[str],
                 out: str | Path | None, seed: int | None, resume: bool, progress: bool,
                 restart_if_damaged: bool, dist: distributed.DistContext | None) -> None:
        ctx = dist if dist is not None else distributed.context()
        exp = get_experiment(name)
        cfg, schedule, run_dir, changed = ctx.on_main(
            lambda: plan_train(name, size=size, schedule=schedule, overrides=overrides, out=out, seed=seed,
                               resume=resume), "planning the run")
        progress = progress and ctx.is_main
        # each rank of a pool experiment builds its own share of the pool (and of the batch)
        build_cfg = distributed.rank_pool_config(cfg, ctx)

        def build():
            # torch seeds its global generator randomly per process; a resumed run must restore the same
            # RNG state as an uninterrupted one even where the experiment draws nothing from it
            torch.manual_seed(cfg["seed"])
            with data_mod.progress_bars(progress):  # --quiet also hides the data-generation bars
                return exp.build(build_cfg)  # validates the whole config first: a bad key never leaves a directory behind

        built = ctx.main_first(build, "building the experiment")
        # K_ε: measured, or the paper's fixed value (prdp.k_converged)
        fixed = k_converged_setting(cfg) if LINEAR in exp.budgets else None
        k_eps = fixed if fixed is not None else built.k_converged
        declared = tuple(built.task.budgets)
        schedules = _schedules(cfg, schedule, k_eps, declared)
        validation_budgets = _validation_budgets(cfg, declared)

        def prepare():
            _prepare_run_dir(run_dir, resume)
            if not resume:
                _write_run_config(run_dir, cfg, schedule, k_eps)

        ctx.on_main(prepare, "preparing the run directory")
        t = cfg["train"]
        settings = TrainSettings(epochs=t["epochs"], optimizer=t["optimizer"], lr=t["lr"], lr_decay=t["lr_decay"],
                                 progress=progress, target_metric=t.get("target_metric") or None,
                                 guard_factor=t.get("guard_factor", TrainSettings.guard_factor))
        trainer = Trainer(built.task, schedules, settings, run_dir, seed=cfg["seed"],
                          validation_budgets=validation_budgets, dist=ctx, shard_batches="pool" not in cfg)
        factor = lr_factor(t, steps_per_epoch(built.task)) if LINEAR in exp.budgets else None
        if factor is not None:  # before a resume, which loads its state
            trainer.lr_schedule = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, factor)
        if resume:
            try:
                trainer.resume(restart_if_damaged=restart_if_damaged)
            except NothingResumedError as exc:
                raise NothingResumedError(f"--resume {run_dir}: {exc} Nothing was resumed and nothing was trained. "
                                          f"To start this run over from epoch 0 in the same directory, run "
                                          f"`pdeaccel train {name} --resume {run_dir} --restart-if-damaged`.") from None
            if trainer.epoch > cfg["train"]["epochs"]:
                raise ConfigError(f"train.epochs={cfg['train']['epochs']}: the run in {run_dir} has already "
                                  f"completed {trainer.epoch} epochs; give train.epochs >= {trainer.epoch}.")
            if changed:
                # the run now follows the new plan: a later plain --resume must continue it, not the old one
                ctx.on_main(lambda: _write_run_config(run_dir, cfg, schedule, k_eps), "writing config.yaml")
        sched = schedules.get(LINEAR)
        if (trainer.epoch == 0 and cfg.get("prdp", {}).get("initial_validation")
                and isinstance(sched, prdp_mod.PRDPSchedule)):
            # the reference code's history starts with the untrained network's validation error
            with flushing_denormals():  # as inside fit(), where every other validation runs
                metric0 = float(built.task.validate(Budgets(validation_budgets)))
            metric0 = ctx.broadcast_object(metric0, "the initial validation metric") if ctx.distributed else metric0
            sched.observe_initial(metric0)
        self.exp, self.cfg, self.schedule, self.run_dir, self.ctx = exp, cfg, schedule, run_dir, ctx
        self.built, self.sched, self.trainer, self.k_eps = built, sched, trainer, k_eps
        self.validation_budgets = validation_budgets

    @property
    def done(self) -> bool:
        return self.trainer.epoch >= self.cfg["train"]["epochs"] or self.trainer.reached_target()

    def run_one_epoch(self) -> None:
        """Train exactly one more epoch (for interleaving two runs epoch by epoch)."""
        trainer = self.trainer
        planned = trainer.settings
        trainer.settings = dataclasses.replace(planned, epochs=trainer.epoch + 1, progress=False)
        try:
            trainer.fit()
        finally:
            trainer.settings = planned

    def finish(self, seconds: float) -> dict[str, Any]:
        summary = _run_summary(self.exp, self.cfg, self.schedule, self.k_eps, self.trainer.rows, self.sched)
        summary["k_converged_measured"] = self.built.k_converged
        if isinstance(self.sched, prdp_mod.PRDPSchedule) and summary["k_final"] is not None and self.ctx.is_main:
            # the final model validated with the solver budget it was trained with (for a hybrid
            # model it differs from the converged validation; for an emulator it is the same number)
            budgets = Budgets({**self.validation_budgets, LINEAR: int(summary["k_final"])})
            with flushing_denormals():
                summary["final_val_metric_at_k_final"] = float(self.built.task.validate(budgets))
        summary["wall_seconds_total"] = seconds
        summary["ledger"] = self.trainer.ledger.state_dict()
        summary["run_dir"] = str(self.run_dir)
        summary["world_size"] = self.ctx.world_size
        self.ctx.on_main(lambda: write_run_report(self.run_dir, summary, self.trainer.rows), "writing the report")
        return summary


def _write_run_config(run_dir: Path, cfg: dict[str, Any], schedule: str, k_converged: int) -> None:
    io.atomic_write_text(run_dir / "config.yaml", to_yaml({"config": cfg, "schedule": schedule,
                                                           "k_converged": k_converged}))


def _resumed_config(exp: Experiment, run_dir: Path, *, size: str | None, schedule: str | None, seed: int | None,
                    overrides: Iterable[str]) -> tuple[dict[str, Any], str, list[str]]:
    """The config a resumed run continues with, and the keys the overrides changed.

    ``--size``, ``--schedule`` and ``--seed`` must be omitted or equal what the run was started with;
    ``key=value`` overrides may change only :data:`RESUME_CHANGEABLE_KEYS`. Anything else fails
    with a :class:`ConfigError` naming the key, before anything is built or written.
    """
    cfg, stored_schedule = _stored_config(exp, run_dir)
    for flag, given, stored in (("--size", size, cfg["size"]), ("--seed", seed, cfg["seed"]),
                                ("--schedule", schedule, stored_schedule)):
        if given is not None and given != stored:
            raise ConfigError(f"{flag} {given} does not match the run being resumed ({run_dir} was started with "
                              f"{flag} {stored}); a resumed run keeps it. Leave {flag} out, or start a new run "
                              "with another --out.")
    overrides = list(overrides)
    _refuse_reserved_overrides(overrides)
    new_cfg = apply_overrides(cfg, overrides)
    old, new = flatten(cfg), flatten(new_cfg)
    changed = [k for k in new if new[k] != old.get(k)]
    refused = [k for k in changed if k not in RESUME_CHANGEABLE_KEYS]
    if refused:
        raise ConfigError(f"--resume cannot change {', '.join(refused)} (the run was started with "
                          + ", ".join(f"{k}={old.get(k)!r}" for k in refused)
                          + "): the saved state depends on it. Only "
                          + ", ".join(sorted(RESUME_CHANGEABLE_KEYS)) + " may change when resuming; "
                          "start a new run with another --out for the rest.")
    validate_config(exp, new_cfg)
    return new_cfg, stored_schedule, changed


def _refuse_reserved_overrides(overrides: Sequence[str]) -> None:
    """``size`` and ``experiment`` are config entries but not settings: refuse them as overrides."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key == "size":
            raise ConfigError(f"{item!r}: the size is chosen with --size (e.g. --size paper), which selects the "
                              "whole set of that size's defaults; size= would only relabel the config.")
        if key == "experiment":
            raise ConfigError(f"{item!r}: the experiment is the command's NAME argument, not a config override.")


def _stored_config(exp: Experiment, run_dir: Path) -> tuple[dict[str, Any], str]:
    """The resolved config and schedule a run directory was started with, checked like a new one."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.exists():
        if run_dir.is_dir() and not _holds_files(run_dir):
            raise FileNotFoundError(f"--resume {run_dir}: the run was interrupted before it wrote config.yaml "
                                    "(nothing was trained); start it again without --resume.")
        raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there; not a pdeaccel run directory.")
    try:
        stored = yaml.safe_load(path.read_text())
        cfg, schedule = stored["config"], stored["schedule"]
    except (yaml.YAMLError, TypeError, KeyError) as exc:
        raise ConfigError(f"--resume {run_dir}: config.yaml is not a pdeaccel run config ({exc}).") from None
    _add_missing_keys(exp, cfg)
    validate_config(exp, cfg)
    return cfg, schedule


def _add_missing_keys(exp: Experiment, cfg: dict[str, Any]) -> None:
    """Give a stored config the keys added to the experiment since it was written (their
    old-behaviour values, :attr:`Experiment.added_keys`)."""
    if not isinstance(cfg, dict):
        return
    for key, value in exp.added_keys.items():
        *sections, leaf = key.split(".")
        node = cfg
        for name in sections:
            node = node.setdefault(name, {}) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = copy.deepcopy(value)


def _default_schedule(exp: Experiment, schedule: str | None) -> str:
    """PRDP unless asked otherwise; ``"none"`` for experiments without a solver in the loop."""
    if LINEAR in exp.budgets:
        return schedule or "prdp"
    if schedule not in (None, "none"):
        raise ConfigError(f"experiment {exp.name!r} has no linear solver in its training loop, so --schedule "
                          f"{schedule!r} does not apply; omit --schedule.")
    return "none"


def _linear_schedule(cfg: dict[str, Any], schedule: str, k_converged: int):
    """The schedule of the linear budget K."""
    prdp_cfg = prdp_config(cfg)
    if prdp_cfg.k_max > k_converged >= prdp_cfg.k0:
        # iterations beyond the converged budget buy nothing: K_ε caps the refinement
        prdp_cfg = dataclasses.replace(prdp_cfg, k_max=k_converged)
    return prdp_mod.make_schedule(schedule, prdp=prdp_cfg, k_converged=k_converged, epochs=cfg["train"]["epochs"])


def _require_linear_budget(exp: Experiment, command: str) -> None:
    if LINEAR not in exp.budgets:
        raise ConfigError(f"`pdeaccel {command}` compares solver budgets, but experiment {exp.name!r} has no "
                          f"linear solver in its training loop; use `pdeaccel train {exp.name}`.")


def _picard_schedule(cfg: dict[str, Any], schedule: str):
    """The schedule of the Picard budget P, which tasks declare with ``picard.refine``.

    PRDP runs refine it from ``picard.k0`` by ``picard.delta_k`` up to ``picard.converged`` with the
    same controller and metric as K; every other schedule runs ``picard.converged`` iterations.
    """
    pc = cfg["picard"]
    if schedule != "prdp":
        return prdp_mod.FixedSchedule(pc["converged"])
    base = prdp_config(cfg)
    return prdp_mod.PRDPSchedule(dataclasses.replace(base, k0=pc["k0"], delta_k=pc["delta_k"], k_max=pc["converged"]))


def _schedules(cfg: dict[str, Any], schedule: str, k_converged: int | None, declared: Sequence[str]) -> dict[str, Any]:
    """One schedule per budget the task declares, by name (none for a task without a solver)."""
    makers = {LINEAR: lambda: _linear_schedule(cfg, schedule, k_converged),
              PICARD: lambda: _picard_schedule(cfg, schedule)}
    unknown = [name for name in declared if name not in makers]
    if unknown:
        raise ConfigError(f"the task declares budget(s) {unknown} that no experiment config schedules; known: "
                          f"{', '.join(makers)}.")
    return {name: makers[name]() for name in declared}


def _validation_budgets(cfg: dict[str, Any], declared: Sequence[str]) -> dict[str, int | None]:
    """Validation runs converged: K to the tolerance, P at ``picard.converged``."""
    return {name: cfg["picard"]["converged"] if name == PICARD else None for name in declared}


def _run_summary(exp: Experiment, cfg: dict[str, Any], schedule: str, k_eps: int | None,
                 rows: Sequence[dict[str, Any]], sched) -> dict[str, Any]:
    picard = [r.get("picard") for r in rows]
    return {
        "picard_final": picard[-1], "sum_picard": sum(picard) if all(p is not None for p in picard) else None,
        "experiment": exp.name, "size": cfg["size"], "seed": cfg["seed"], "schedule": schedule,
        "k_converged": k_eps, "epochs": len(rows),
        "k_final": rows[-1]["k"], "final_val_metric": rows[-1]["val_metric"],
        "best_val_metric": min(r["val_metric"] for r in rows),
        "forward_iters": sum(r["forward_iters"] for r in rows),
        "backward_iters": sum(r["backward_iters"] for r in rows),
        "sum_k": sum((r["k"] or 0) for r in rows),
        "train_seconds": sum(r["train_seconds"] for r in rows),
        "validation_seconds": sum(r["validation_seconds"] for r in rows),
        "refinements": [] if sched is None else [e.to_dict() for e in sched.events],
    }


def write_run_report(run_dir: Path, summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    plot_run(rows, run_dir / "training.png", f"{summary['experiment']} ({summary['schedule']}, seed {summary['seed']})")
    io.write_json(run_dir / "report.json", summary)
    keys = ["experiment", "schedule", "seed", "epochs", "k_converged", "k_final", "final_val_metric",
            "forward_iters", "backward_iters", "train_seconds", "validation_seconds"]
    md = [f"# {summary['experiment']} — {summary['schedule']}", "",
          markdown_table(["quantity", "value"], [[k, summary[k]] for k in keys]), "",
          f"Refinements: {len(summary['refinements'])}", "", "![training](training.png)", ""]
    io.atomic_write_text(run_dir / "report.md", "\n".join(md))


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())
