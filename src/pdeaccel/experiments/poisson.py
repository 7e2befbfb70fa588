"""PRDP paper: the Poisson inverse problem (1 and 3 parameters), Jacobi from a zero guess.

``u'' = −f_θ(x)`` on (0, 1) with ``u(0) = u(1) = 0``, 30 interior points, 3-point stencil;
``f_θ = θ sin(2πx)`` (or ``θ₁ sin 2πx + θ₂ sin 4πx + θ₃ sin 6πx``). Recover θ (reference 2, start
5) from the converged ``u_ref`` by plain gradient descent on ``‖u_K(θ) − u_ref‖² / 2N`` (lr 275),
the solve differentiated implicitly. Validation metric: relative parameter error. As in the
paper the comparison is at equal accuracy: both runs stop when the relative parameter error
reaches ``train.target_metric`` (``train.epochs`` is only the upper limit).

The ``cpu`` and ``paper`` sizes are the same, the paper's setting. Remaining deviation: K_ε is
measured (557 Jacobi iterations from zero to rtol 1e-5) instead of the paper's ≈600.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..config import require
from ..grid import Grid
from ..linalg import SolverConfig
from ..physics.poisson import solve_poisson, sine_series_source
from ..train.tasks import InverseTask
from .registry import Built, Experiment, measure_k_converged, register, validate_common

_BASE: dict[str, Any] = {
    "seed": 0,
    "physics": {"n": 30, "theta_true": [2.0], "theta_init": [5.0]},
    # rtol 1e-5 from a zero guess: K_ε = 557 Jacobi iterations (the paper's K_ε ≈ 600)
    "solver": {"method": "jacobi", "grad": "implicit", "rtol_converged": 1e-5},
    "prdp": {"k0": 25, "delta_k": 10, "k_max": 600, "tau_step": 0.92, "tau_stop": 0.9,
             "ema_window": 1, "lookback": 2},
    "train": {"epochs": 400, "batch_size": 1, "lr": 275.0, "lr_decay": 1.0, "optimizer": "sgd",
              "steps_per_epoch": 1, "target_metric": 1e-3},
}


def build_poisson_inverse(cfg: dict[str, Any]) -> Built:
    validate_common(cfg)
    p = cfg["physics"]
    theta_true = torch.tensor([p["theta_true"]], dtype=torch.float64)
    theta_init = torch.tensor([p["theta_init"]], dtype=torch.float64)
    require(theta_true.shape == theta_init.shape, "physics.theta_init", p["theta_init"],
            f"a list as long as physics.theta_true ({len(p['theta_true'])} entries)")
    require(isinstance(p["n"], int) and p["n"] >= 3, "physics.n", p["n"], "an integer >= 3")
    grid = Grid(p["n"], extent=1.0, boundary="dirichlet")

    def forward_map(theta: torch.Tensor, solver: SolverConfig) -> torch.Tensor:
        f = sine_series_source(theta, grid)
        return solve_poisson(f, grid, solver, x0=torch.zeros_like(f)).solution

    with torch.no_grad():
        observation = forward_map(theta_true, SolverConfig(method="cg", rtol=1e-12))
    s = cfg["solver"]
    solver = SolverConfig(method=s["method"], grad=s["grad"], rtol=s["rtol_converged"])
    task = InverseTask(lambda theta, budgets: forward_map(theta, budgets.linear_solver(solver)), observation,
                       theta_init, theta_true, steps_per_epoch=cfg["train"]["steps_per_epoch"])
    k_eps = measure_k_converged(forward_map, theta_init, solver, s["rtol_converged"])
    return Built(task, k_eps, {"parameters": theta_true.shape[1]})


def _three() -> dict[str, Any]:
    cfg = copy.deepcopy(_BASE)
    cfg["physics"].update({"theta_true": [2.0, -1.0, 0.5], "theta_init": [5.0, 1.0, -1.0]})
    # the sin 6πx response is 9² times weaker than sin 2πx's, so plain gradient descent at the
    # step size the first mode allows needs many more iterations to reach the target
    cfg["train"].update({"epochs": 400, "steps_per_epoch": 20, "target_metric": 1e-2})
    return cfg


_DEVIATIONS = ["K_ε measured (557 Jacobi iterations from zero to rtol 1e-5) instead of the paper's ≈600; the "
               "comparison is at equal accuracy (both runs stop at train.target_metric), as in the paper."]

register(Experiment(
    "poisson-inverse", "Poisson inverse problem, 1 parameter (θ sin 2πx), Jacobi from zero",
    {"cpu": copy.deepcopy(_BASE), "paper": copy.deepcopy(_BASE)}, build_poisson_inverse,
    {"net": "–", "k_converged": 600, "k_final": 600, "ic": 0.0, "pr": 0.30, "total": 0.30},
    deviations={"cpu": _DEVIATIONS, "paper": _DEVIATIONS},
))
register(Experiment(
    "poisson-inverse-3", "Poisson inverse problem, 3 parameters (sin 2πx, 4πx, 6πx), Jacobi from zero",
    {"cpu": _three(), "paper": _three()}, build_poisson_inverse,
    {"net": "–", "k_converged": 600, "k_final": 600, "ic": 0.0, "pr": 0.30, "total": 0.30},
    deviations={"cpu": _DEVIATIONS, "paper": _DEVIATIONS},
))
