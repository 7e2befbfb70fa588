"""Named, versioned experiment configurations and the registry that builds them.

An experiment is a nested config dict per size (``"cpu"``: runs on a laptop CPU in minutes;
``"paper"``: the paper's setting, for a GPU) and a ``build`` function that turns a resolved config
into a task plus its solver settings. Baselines are configurations (``--schedule``), not code.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..config import ConfigError, require
from ..linalg import METHODS, GRAD_MODES, SolverConfig
from ..prdp import PRDPConfig


@dataclass
class Built:
    """What an experiment's ``build`` returns."""

    task: Any
    solver: SolverConfig  # training solver; its budget is set by the schedule each epoch
    validation_solver: SolverConfig
    k_converged: int  # K_ε: iterations that converge the training solver (measured)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experiment:
    name: str
    description: str
    sizes: dict[str, dict[str, Any]]
    build: Callable[[dict[str, Any]], Built]
    paper: dict[str, Any]  # the paper's reported row, for the tables

    def config(self, size: str = "cpu") -> dict[str, Any]:
        if size not in self.sizes:
            raise ConfigError(f"experiment {self.name!r} has sizes {', '.join(self.sizes)}; got {size!r}.")
        cfg = copy.deepcopy(self.sizes[size])
        cfg["experiment"] = self.name
        cfg["size"] = size
        return cfg


EXPERIMENTS: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    EXPERIMENTS[exp.name] = exp
    return exp


def _load_all() -> None:
    from . import burgers, heat, navier_stokes, poisson  # noqa: F401  (registration side effect)


def get_experiment(name: str) -> Experiment:
    _load_all()
    if name not in EXPERIMENTS:
        close = difflib.get_close_matches(name, list(EXPERIMENTS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown experiment {name!r}.{hint} Available: {', '.join(sorted(EXPERIMENTS))}.")
    return EXPERIMENTS[name]


def list_experiments() -> list[Experiment]:
    _load_all()

    return [EXPERIMENTS[k] for k in sorted(EXPERIMENTS)]


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
    require(t["optimizer"] in ("adam", "sgd"), "train.optimizer", t["optimizer"], "adam, sgd")
    require(isinstance(cfg["seed"], int), "seed", cfg["seed"], "an integer")
    prdp_config(cfg)  # PRDPConfig validates its own keys
    if "picard" in cfg:
        pc = cfg["picard"]
        require(isinstance(pc["k0"], int) and pc["k0"] >= 1, "picard.k0", pc["k0"], "an integer >= 1")
        require(isinstance(pc["delta_k"], int) and pc["delta_k"] >= 1, "picard.delta_k", pc["delta_k"],
                "an integer >= 1")
        require(isinstance(pc["converged"], int) and pc["converged"] >= pc["k0"], "picard.converged",
                pc["converged"], f"an integer >= picard.k0 ({pc['k0']})")


def prdp_config(cfg: dict[str, Any]) -> PRDPConfig:
    try:
        return PRDPConfig(**cfg["prdp"])
    except (TypeError, ValueError) as exc:
        # PRDPConfig names the field ("PRDPConfig.tau_step must ..."); say it as the config key
        raise ConfigError(f"config section 'prdp': {str(exc).replace('PRDPConfig.', 'prdp.')}") from None


class IterationProbe:
    """A solver monitor that remembers the largest forward iteration count it saw."""

    def __init__(self) -> None:
        self.max_iterations = 0

    def __call__(self, direction: str, method: str, iterations: torch.Tensor) -> None:
        if direction == "forward":
            self.max_iterations = max(self.max_iterations, int(iterations.max()))


def measure_k_converged(step: Callable[[torch.Tensor, SolverConfig], torch.Tensor], states: torch.Tensor,
                        solver: SolverConfig, rtol: float) -> int:
    """K_ε: the iterations the solver needs to reach ``rtol`` on representative inputs."""
    probe = IterationProbe()
    with torch.no_grad():
        step(states, solver.replace(max_iters=None, rtol=rtol, atol=0.0, monitor=probe))
    return max(1, probe.max_iterations)
