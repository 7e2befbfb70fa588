"""Named, versioned experiment configurations and the registry that builds them.

An experiment is a nested config dict per size (``"cpu"``: runs on a laptop CPU in minutes;
``"paper"``: the paper's setting, for a GPU) and a ``build`` function that turns a resolved config
into a task (which declares the budgets it uses) and K_ε. Baselines are configurations
(``--schedule``), not code.
"""

from __future__ import annotations

import copy
import difflib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import Allowed, ConfigError, check_ranges, flatten, integer_in, number_in, one_of, require
from ..linalg import METHODS, GRAD_MODES, IterationLog, SolverConfig
from ..prdp import PRDPConfig


@dataclass
class Built:
    """What an experiment's ``build`` returns."""

    task: Any  # declares its budgets (task.budgets); the trainer's schedules set them each epoch
    k_converged: int | None = None  # K_ε: iterations that converge the training solver (measured); None without one
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experiment:
    name: str
    description: str
    sizes: dict[str, dict[str, Any]]
    build: Callable[[dict[str, Any]], Built]
    paper: dict[str, Any]  # the paper's reported row, for the tables
    # the budgets its tasks may declare (pdeaccel.train.budgets): "linear" K, "picard" P; none for
    # tasks without a solver in the training loop (the physics-constrained flow solver), to which
    # budget schedules, compare and sweep do not apply
    budgets: tuple[str, ...] = ("linear",)
    # per size: every remaining difference from the paper's experiment and why (printed by
    # `pdeaccel experiments NAME` and in the benchmark tables)
    deviations: dict[str, list[str]] = field(default_factory=dict)
    # config keys added after runs of this experiment were written, each with the value that keeps
    # the old behaviour: a resumed run whose config.yaml lacks one continues with that value
    # (recorded in its config.yaml) instead of failing on a "missing" key
    added_keys: dict[str, Any] = field(default_factory=dict)
    # what this experiment's own config keys may hold, declared next to its config (keys many
    # experiments share are in SHARED_RANGES); checked with the config's types before build
    ranges: dict[str, Allowed] = field(default_factory=dict)

    def config(self, size: str = "cpu") -> dict[str, Any]:
        if size not in self.sizes:
            raise ConfigError(f"experiment {self.name!r} has sizes {', '.join(self.sizes)}; got {size!r}.")
        cfg = copy.deepcopy(self.sizes[size])
        cfg["experiment"] = self.name
        cfg["size"] = size
        return cfg


# ------------------------------------------------------------------------------ the one registry
#: everything ``pdeaccel`` can run, by kind: training experiments (``pdeaccel train/compare/sweep``),
#: simulations (``pdeaccel simulate``) and control problems (``pdeaccel control``). A name is unique
#: within its kind (``heat-1d`` is both an experiment and a simulation).
RUNNABLES: dict[str, dict[str, Any]] = {"experiment": {}, "simulation": {}, "control problem": {}}
EXPERIMENTS: dict[str, Experiment] = RUNNABLES["experiment"]


def register_runnable(kind: str, name: str, entry: Any) -> Any:
    """Add ``entry`` under ``name`` to the registry of ``kind`` (a key of :data:`RUNNABLES`)."""
    if kind not in RUNNABLES:
        raise ValueError(f"unknown kind of runnable {kind!r}; kinds: {', '.join(RUNNABLES)}.")
    RUNNABLES[kind][name] = entry
    return entry


def lookup(kind: str, name: str) -> Any:
    """The runnable ``name`` of ``kind``; an unknown name fails with a :class:`ConfigError` that
    suggests the closest names of that kind, and says so when the name is another kind's."""
    if kind == "experiment":
        _load_all()
    table = RUNNABLES[kind]
    if name in table:
        return table[name]
    close = difflib.get_close_matches(str(name), list(table), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    elsewhere = [k for k, t in RUNNABLES.items() if k != kind and name in t]
    if elsewhere:
        hint += f" {name!r} is a{'n' if elsewhere[0][0] in 'aeiou' else ''} {elsewhere[0]}."
    raise ConfigError(f"unknown {kind} {name!r}.{hint} Available: {', '.join(sorted(table))}.")


def timestamped_run_dir(*parts: str, suffix: str = "") -> Path:
    """The default run directory of every command: ``runs/<parts…>/<YYYYmmdd-HHMMSS><suffix>``."""
    return Path("runs", *parts, time.strftime("%Y%m%d-%H%M%S") + suffix)


def register(exp: Experiment) -> Experiment:
    return register_runnable("experiment", exp.name, exp)


def _load_all() -> None:
    from . import burgers, flow, heat, navier_stokes, poisson  # noqa: F401  (registration side effect)


def get_experiment(name: str) -> Experiment:
    return lookup("experiment", name)


def list_experiments() -> list[Experiment]:
    _load_all()

    return [EXPERIMENTS[k] for k in sorted(EXPERIMENTS)]


# Ranges of the keys experiments share, checked wherever an experiment has the key. Sizes are capped so
# that a typo such as physics.n=30000 fails at once instead of exhausting memory hours later.
# Ranges of the keys experiments share, checked wherever an experiment has the key (an experiment's
# own keys are declared next to its config, in ``Experiment.ranges``). Sizes are capped so that a
# typo such as physics.n=30000 fails at once instead of exhausting memory hours later.
SHARED_RANGES: dict[str, Allowed] = {
    "physics.n": integer_in(3, 4096), "physics.ndim": one_of(1, 2, 3), "physics.modes": integer_in(1, 1024),
    "net.name": one_of("mlp", "resnet"),
    "solver.initial_guess": one_of("prediction", "zero"),
    "validation.metric": one_of("ours", "paper"),
    "train.lr_schedule": one_of("exponential", "cosine"),
    "train.lr_decay_every": integer_in(0, 10**9, note="0: lr_decay per epoch"),
    "train.lr_final_fraction": number_in(0, 1),
    "solver.restart": integer_in(1, 10_000),
    "train.target_metric": number_in(0),
    "data.data_seed": integer_in(0, 2**63 - 1),
    **{k: number_in(positive=True) for k in ("physics.nu", "physics.dt", "physics.length")},
    **{k: integer_in(1, 1_000_000) for k in ("data.train", "data.validation", "data.validation_rollout", "net.width",
                                              "net.depth", "net.hidden", "net.blocks", "train.steps_per_epoch")},
}
_MAX_GRID_POINTS = 2**24


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "a boolean"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, (list, tuple)):
        return "a list"
    return "a string"


def _is_choice_list(default: Any) -> bool:
    return isinstance(default, (list, tuple)) and len(default) > 0 and all(isinstance(d, str) for d in default)


def _same_type(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, (list, tuple)):
        if _is_choice_list(default):  # e.g. physics.obstacles: any non-empty selection
            return isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) for v in value)
        return isinstance(value, list) and all(_same_type(v, d) for v, d in zip(value, default)) \
            and len(value) == len(default)
    return isinstance(value, type(default))


def validate_config(exp: Experiment, cfg: dict[str, Any]) -> None:
    """Check every key of a resolved config against the experiment's defaults; raise ConfigError.

    Unknown keys (with a "did you mean"), missing keys and values of the wrong type (an integer
    where the default is one, a finite number where it is a float, a list of the default's length)
    fail, then the shared ranges above; ``validate_common`` and each ``build`` check the rest.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(cfg).__name__}.")
    if cfg.get("experiment", exp.name) != exp.name:
        raise ConfigError(f"config key 'experiment' has value {cfg['experiment']!r}; allowed: {exp.name!r}.")
    defaults = flatten(exp.config(cfg.get("size", "cpu")))
    given = flatten(cfg)
    for key in given:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}.{hint} Run `pdeaccel experiments {exp.name}` to list "
                              "the keys.")
    for key, default in defaults.items():
        if key not in given:
            raise ConfigError(f"config key {key!r} is missing (default {default!r}).")
        value = given[key]
        # null means "off" for an optional float (train.target_metric, prdp.ema_window)
        if value is None and key in ("train.target_metric", "prdp.ema_window", "prdp.initial_checkpoint"):
            continue
        require(_same_type(value, default), key, value, _type_name(default)
                + (" (finite)" if isinstance(default, float) else "")
                + (" of strings, not empty" if _is_choice_list(default)
                   else f" of {len(default)} finite numbers" if isinstance(default, (list, tuple)) else ""))
    check_ranges({k: v for k, v in given.items() if v is not None}, {**SHARED_RANGES, **exp.ranges})
    p = cfg.get("physics", {})
    if "n" in p:
        points = p["n"] ** p.get("ndim", 1)
        require(points <= _MAX_GRID_POINTS, "physics.n", p["n"],
                f"at most {_MAX_GRID_POINTS} grid points in all (physics.n ** physics.ndim)")


def validate_common(cfg: dict[str, Any]) -> None:
    """Checks every experiment shares (solver, training, PRDP keys); raises ConfigError."""
    s = cfg["solver"]
    require(s["method"] in METHODS, "solver.method", s["method"], ", ".join(METHODS))
    require(s["grad"] in GRAD_MODES, "solver.grad", s["grad"], ", ".join(GRAD_MODES))
    require(s["rtol_converged"] > 0, "solver.rtol_converged", s["rtol_converged"], "a number > 0")
    t = cfg["train"]
    require(isinstance(t["epochs"], int) and t["epochs"] >= 1, "train.epochs", t["epochs"], "an integer >= 1")
    require(isinstance(t["batch_size"], int) and t["batch_size"] >= 1, "train.batch_size", t["batch_size"],
            "an integer >= 1")
    require(t["lr"] > 0, "train.lr", t["lr"], "a number > 0")
    require(0 < t["lr_decay"] <= 1, "train.lr_decay", t["lr_decay"], "a number in (0, 1]")
    require(t["optimizer"] in ("adam", "adam-fused", "sgd"), "train.optimizer", t["optimizer"], "adam, adam-fused, sgd")
    require(isinstance(cfg["seed"], int), "seed", cfg["seed"], "an integer")
    prdp_config(cfg)  # PRDPConfig validates its own keys
    if "picard" in cfg:
        pc = cfg["picard"]
        require(isinstance(pc["k0"], int) and pc["k0"] >= 1, "picard.k0", pc["k0"], "an integer >= 1")
        require(isinstance(pc["delta_k"], int) and pc["delta_k"] >= 1, "picard.delta_k", pc["delta_k"],
                "an integer >= 1")
        require(isinstance(pc["converged"], int) and pc["converged"] >= pc["k0"], "picard.converged",
                pc["converged"], f"an integer >= picard.k0 ({pc['k0']})")


# keys of the ``prdp`` config section that configure the run around the controller, not
# PRDPConfig itself:
# * ``k_converged``: ``"measured"`` (K_ε = the iterations our solver needs to reach
#   ``solver.rtol_converged`` on the training data) or an integer as text, e.g. ``"25"`` (the
#   paper's fixed K_ε: the converged baseline runs exactly that many iterations);
# * ``initial_validation``: validate the untrained network once before the first epoch and put
#   that metric at the head of the controller's history (the reference code does: its EMA
#   starts at the untrained error, and with ``initial_checkpoint: null`` that error is ck).
PRDP_RUN_KEYS = ("k_converged", "initial_validation")


def k_converged_setting(cfg: dict[str, Any]) -> int | None:
    """The fixed K_ε of ``prdp.k_converged`` (an integer), or None for ``"measured"``."""
    value = cfg.get("prdp", {}).get("k_converged", "measured")
    if value == "measured":
        return None
    text = str(value).strip()
    require(text.isdigit() and int(text) >= 1, "prdp.k_converged", value,
            "'measured' or a positive integer such as '25' (the paper's fixed K_ε)")
    return int(text)


def prdp_config(cfg: dict[str, Any]) -> PRDPConfig:
    section = {k: v for k, v in cfg["prdp"].items() if k not in PRDP_RUN_KEYS}
    require(isinstance(cfg["prdp"].get("initial_validation", False), bool), "prdp.initial_validation",
            cfg["prdp"].get("initial_validation"), "true, false")
    k_converged_setting(cfg)
    try:
        return PRDPConfig(**section)
    except (TypeError, ValueError) as exc:
        # PRDPConfig names the field ("PRDPConfig.tau_step must ..."); say it as the config key
        raise ConfigError(f"config section 'prdp': {str(exc).replace('PRDPConfig.', 'prdp.')}") from None


def measure_k_converged(step: Callable[[torch.Tensor, SolverConfig], torch.Tensor], states: torch.Tensor,
                        solver: SolverConfig, rtol: float) -> int:
    """K_ε: the iterations the solver needs to reach ``rtol`` on representative inputs."""
    log = IterationLog()
    with torch.no_grad():
        step(states, solver.replace(max_iters=None, rtol=rtol, atol=0.0, monitor=log))
    return max(1, log.max_per_solve)
