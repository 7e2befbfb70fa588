"""PRDP paper: Burgers 1D emulator learning (conv ResNet, network then implicit solver, GMRES).

Viscous Burgers ``u_t + ½(u²)_x = ν u_xx`` on the periodic unit interval; implicit Euler with
first-order upwind fluxes linearised at the previous state (one Picard step by default,
``physics.picard_iterations``), solved with restarted GMRES (the budget counts restart cycles).
Initial conditions: random truncated Fourier series. Validation: 5-step rollout nMSE of the
network alone.

The paper states the method (implicit Euler, upwinding linearised at the previous state, one
Picard step, GMRES, a conv ResNet, 5-step validation, K_ε ≈ 24, diverging for K < 4) but not the
grid, ν, Δt, GMRES restart, network size or LR schedule, and publishes no Burgers code. Sizes:

* ``paper`` / ``paper-cpu`` — the paper's method with the setting we first chose for it
  (Δt = 0.02, GMRES(2): K_ε = 6 restart cycles here), K0 = 4, ΔK = 1, the reference code's
  controller history (it starts with the untrained network's error, ck = 100); ``paper-cpu`` at
  n = 64 and 60 epochs, ``paper`` at n = 128, a larger ResNet and 100 epochs (not run on this CPU).
* ``cpu`` — ours, reconfigured: Δt = 0.05 and GMRES(1), which raises K_ε to 30 (each budget step
  one Arnoldi step, as fine-grained as the paper's K); the rest as ``paper-cpu``.
"""

from __future__ import annotations

import copy
from typing import Any

from ..config import integer_in, require
from ..grid import Grid
from ..linalg import SolverConfig
from ..physics.burgers import BurgersStepper
from ..train.budgets import LINEAR, PICARD
from .emulator import build_emulator
from .registry import Built, Experiment, register

_CPU: dict[str, Any] = {
    "seed": 0,
    # Δt = 0.05 (ours; the paper-cpu size keeps 0.02): advective CFL ≈ 3, diffusion number ≈ 0.6 at
    # n = 64, so the converged implicit step needs several times more GMRES(1) iterations than at
    # Δt = 0.02, which leaves PRDP a budget to refine (K_ε measured per run: benchmarks/results/prdp.md)
    "physics": {"n": 64, "nu": 0.003, "dt": 0.05, "modes": 3, "picard_iterations": 1},
    "data": {"train": 200, "validation": 10, "validation_rollout": 5, "data_seed": 4321},
    "validation": {"metric": "ours"},
    "net": {"name": "resnet", "width": 64, "depth": 3, "hidden": 24, "blocks": 3},
    # restart 1: the budget counts single Arnoldi steps, as fine-grained as the paper's K
    "solver": {"method": "gmres", "grad": "implicit", "rtol_converged": 1e-5, "restart": 1},
    "prdp": {"k0": 4, "delta_k": 1, "k_max": 100, "tau_step": 0.95, "tau_stop": 0.9,
             "ema_window": 6, "lookback": 3, "k_converged": "measured", "initial_validation": False},
    # refine the Picard count beside K (beyond the paper; off = one Picard step, the paper's setting)
    "picard": {"refine": False, "k0": 1, "delta_k": 1, "converged": 3},
    "train": {"epochs": 60, "batch_size": 25, "lr": 1e-3, "lr_decay": 0.97, "lr_decay_every": 0, "optimizer": "adam"},
}


def build_burgers(cfg: dict[str, Any]) -> Built:
    p = cfg["physics"]
    require(isinstance(p["n"], int) and p["n"] >= 4, "physics.n", p["n"], "an integer >= 4")
    grid = Grid(p["n"], extent=1.0, boundary="periodic")
    stepper = BurgersStepper(grid, nu=p["nu"], dt=p["dt"], picard_iterations=p["picard_iterations"])
    pc = cfg["picard"]
    # with the Picard budget refined, the data come from the converged nonlinear solve it approaches
    return build_emulator(cfg, "burgers1d", grid, stepper, SolverConfig(method="gmres", rtol=1e-10, restart=20),
                          picard_converged=pc["converged"] if pc["refine"] else None)


def _paper_cpu() -> dict[str, Any]:
    cfg = copy.deepcopy(_CPU)
    cfg["physics"]["dt"] = 0.02
    cfg["solver"]["restart"] = 2
    cfg["prdp"]["initial_validation"] = True
    return cfg


def _paper() -> dict[str, Any]:
    cfg = _paper_cpu()
    cfg["physics"]["n"] = 128
    cfg["train"]["epochs"] = 100
    cfg["net"].update({"hidden": 32, "blocks": 4})
    return cfg


_DEVIATIONS = [
    "The paper states neither grid, ν, Δt, GMRES restart, network size nor LR schedule and publishes no Burgers "
    "code: n, ν = 0.003, Δt = 0.02, GMRES(2), the ResNet, LR 1e-3 decayed 0.97 per epoch and τ_step = 0.95 are ours.",
    "K_ε measured (6 GMRES(2) restart cycles to rtol 1e-5), not the paper's 24: K counts our solver's cycles, so the "
    "paper's number does not transfer.",
    "Validation: our 5-step metric (each step by its own target, averaged); the paper's Burgers metric is not "
    "published.",
]


#: what burgers-1d's own keys may hold (shared keys: registry.SHARED_RANGES)
BURGERS_RANGES = {"physics.picard_iterations": integer_in(1, 1000)}

register(Experiment(
    "burgers-1d", "Burgers 1D emulator (conv ResNet), GMRES, implicit gradients",
    {"cpu": copy.deepcopy(_CPU), "paper-cpu": _paper_cpu(), "paper": _paper()}, build_burgers,
    {"net": "ResNet", "k_converged": 24, "epochs": 100, "k_final": 16, "ic": 0.33, "pr": 0.28, "total": 0.60,
     "conv_train_seconds": 29.0, "prdp_train_seconds": 26.5},
    budgets=(LINEAR, PICARD),  # the Picard count with picard.refine
    deviations={"paper": list(_DEVIATIONS),
                "paper-cpu": ["n = 64, a ResNet with 24 channels and 3 blocks, 60 epochs (paper size: n = 128, 32 "
                              "channels, 4 blocks, 100 epochs)", *_DEVIATIONS],
                "cpu": ["ours, reconfigured: Δt = 0.05 and GMRES(1) (K_ε = 30) instead of Δt = 0.02 and GMRES(2) "
                        "(K_ε = 6, where PRDP saved 17%); history without the untrained error", *_DEVIATIONS[:1]]},
    ranges=BURGERS_RANGES))
