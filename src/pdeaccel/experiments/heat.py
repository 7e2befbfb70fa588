"""PRDP paper: heat emulator learning in 1D, 2D and 3D (network then implicit solver, Jacobi).

Implicit Euler (BTCS) with homogeneous Dirichlet walls, ``νΔt/h² ≈ 0.96`` (νΔt = 0.001,
h = 1/31 in 1D, as in the paper), initial conditions from random truncated sine series with 5
modes and amplitudes U(−1, 1). The network predicts u₁ from u₀, the solver steps it to u₂, and
the loss compares with the reference u₂; validation is the network's own 2-step rollout nMSE.
"""

from __future__ import annotations

import copy
from typing import Any

from ..config import ConfigError
from ..grid import Grid
from ..linalg import SolverConfig
from ..physics import HeatStepper
from .emulator import build_emulator
from .registry import Built, Experiment, register

_BASE: dict[str, Any] = {
    "seed": 0,
    "physics": {"ndim": 1, "n": 30, "nu_dt": 0.001, "scheme": "implicit_euler", "modes": 5},
    "data": {"train": 200, "validation": 10, "validation_rollout": 2, "data_seed": 1234},
    "net": {"name": "mlp", "width": 64, "depth": 3, "hidden": 16, "blocks": 2},
    "solver": {"method": "jacobi", "grad": "implicit", "rtol_converged": 1e-5},
    # Even K only (the paper used K0 = ΔK = 1): the emulator must invert the K-step Jacobi map
    # û₁ ↦ x_K(û₁) = [A⁻¹ + G^K (I − A⁻¹)] û₁ (warm start x₀ = û₁, G the Jacobi iteration matrix). Its
    # eigenvalues 1/a + g^K (1 − 1/a) cross zero for odd K at νΔt/h² ≈ 0.96 (g reaches −0.66 in
    # 1D, −0.79 in 2D), so at K = 1 or 3 the training target is ill-posed and the network blew up
    # (heat-1d: validation 4.3 at K = 2 after 8 epochs at K = 1; final error 1.8× the converged
    # one). For even K every eigenvalue is positive.
    "prdp": {"k0": 2, "delta_k": 2, "k_max": 200, "tau_step": 0.98, "tau_stop": 0.9,
             "ema_window": 8, "lookback": 3},
    # guard_factor: the divergence guard's loss-explosion ratio (inf turns that test off; see
    # benchmarks/prdp_guard.py for K = 1, where implicit gradients make training diverge)
    "train": {"epochs": 100, "batch_size": 25, "lr": 1e-3, "lr_decay": 0.98, "optimizer": "adam",
              "guard_factor": 1000.0},
}


def _variant(**changes: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(_BASE)
    for section, values in changes.items():
        cfg[section].update(values)
    return cfg


def build_heat(cfg: dict[str, Any]) -> Built:
    p = cfg["physics"]
    if p["ndim"] not in (1, 2, 3):
        raise ConfigError(f"config key 'physics.ndim' has value {p['ndim']!r}; allowed: 1, 2, 3.")
    grid = Grid((p["n"],) * p["ndim"], extent=1.0, boundary="dirichlet")
    # only νΔt enters BTCS; Δt = 1 makes ν = νΔt
    stepper = HeatStepper(grid, nu=p["nu_dt"], dt=1.0, scheme=p["scheme"])
    return build_emulator(cfg, f"heat{p['ndim']}d", grid, stepper, SolverConfig(method="cg", rtol=1e-10))


register(Experiment(
    "heat-1d", "Heat 1D emulator (MLP 30→30), Jacobi, implicit gradients",
    {"cpu": _variant(), "paper": _variant()},
    build_heat,
    {"net": "MLP", "k_eps": 25, "epochs": 100, "k_final": 10, "ic": 0.60, "pr": 0.19, "total": 0.79,
     "wall_conv_s": 3.25, "wall_prdp_s": 3.1},
))

register(Experiment(
    "heat-2d", "Heat 2D emulator (MLP on a 30×30 grid), Jacobi, unrolled gradients",
    {size: _variant(physics={"ndim": 2}, solver={"grad": "unrolled"},
                    prdp={"tau_step": 0.9, "ema_window": 6, "lookback": 3},
                    train={"epochs": 70, "lr": 3e-3}) for size in ("cpu", "paper")},
    build_heat,
    {"net": "MLP", "k_eps": 43, "epochs": 70, "k_final": 12, "ic": 0.72, "pr": 0.14, "total": 0.86,
     "wall_conv_s": 2.8, "wall_prdp_s": 2.15},
))

register(Experiment(
    "heat-3d", "Heat 3D emulator (conv ResNet), Jacobi, implicit gradients",
    {"cpu": _variant(physics={"ndim": 3, "n": 12}, net={"name": "resnet", "hidden": 16, "blocks": 2},
                     data={"train": 100}, train={"epochs": 40, "batch_size": 20},
                     prdp={"tau_step": 0.95, "ema_window": 6}),
     "paper": _variant(physics={"ndim": 3, "n": 32}, net={"name": "resnet", "hidden": 32, "blocks": 4},
                       prdp={"tau_step": 0.95, "ema_window": 6})},
    build_heat,
    {"net": "ResNet", "k_eps": 29, "epochs": 100, "k_final": 11, "ic": 0.62, "pr": 0.18, "total": 0.80,
     "wall_conv_s": 55.0, "wall_prdp_s": 11.5},
))
