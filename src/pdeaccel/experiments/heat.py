"""PRDP paper: heat emulator learning in 1D, 2D and 3D (network then implicit solver, Jacobi).

Implicit Euler (BTCS) with homogeneous Dirichlet walls, ``νΔt/h² ≈ 0.96`` (νΔt = 0.001,
h = 1/31 in 1D, as in the paper), initial conditions from random truncated sine series with 5
modes and amplitudes U(−1, 1). The network predicts u₁ from u₀, the solver steps it to u₂, and
the loss compares with the reference u₂; validation is the network's own 2-step rollout nMSE.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..grid import Grid
from ..linalg import SolverConfig
from ..nets import build_net
from ..physics import HeatStepper
from ..physics.initial_conditions import random_fourier
from ..train.tasks import EmulatorTask
from .data import cached_trajectories, rollout
from .registry import Built, Experiment, measure_k_converged, register, validate_common

_BASE: dict[str, Any] = {
    "seed": 0,
    "physics": {"ndim": 1, "n": 30, "nu_dt": 0.001, "scheme": "implicit_euler", "modes": 5},
    "data": {"train": 200, "validation": 10, "validation_rollout": 2, "data_seed": 1234},
    "net": {"name": "mlp", "width": 64, "depth": 3, "hidden": 16, "blocks": 2},
    "solver": {"method": "jacobi", "grad": "implicit", "rtol_converged": 1e-5},
    "prdp": {"k0": 1, "delta_k": 1, "k_max": 200, "tau_step": 0.98, "tau_stop": 0.9,
             "ema_window": 8, "lookback": 3},
    "train": {"epochs": 100, "batch_size": 25, "lr": 1e-3, "lr_decay": 0.98, "optimizer": "adam"},
}


def _variant(**changes: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(_BASE)
    for section, values in changes.items():
        cfg[section].update(values)
    return cfg


def build_heat(cfg: dict[str, Any]) -> Built:
    validate_common(cfg)
    p, d, s = cfg["physics"], cfg["data"], cfg["solver"]
    ndim, n = p["ndim"], p["n"]
    if ndim not in (1, 2, 3):
        from ..config import ConfigError
        raise ConfigError(f"config key 'physics.ndim' has value {ndim!r}; allowed: 1, 2, 3.")
    grid = Grid((n,) * ndim, extent=1.0, boundary="dirichlet")
    h = grid.spacing[0]
    # only νΔt matters for BTCS; choose Δt = 1 so ν = νΔt
    stepper = HeatStepper(grid, nu=p["nu_dt"], dt=1.0, scheme=p["scheme"])
    reference_solver = SolverConfig(method="cg", rtol=1e-10, max_iters=None)

    def generate(count: int, steps: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        u0 = random_fourier(grid, count, modes=p["modes"], generator=gen, dtype=torch.float64)
        traj = rollout(lambda u: stepper(u, reference_solver), u0, steps, desc=f"heat-{ndim}d reference")
        return traj.float()

    gen_cfg = {"physics": p, "n_train": d["train"], "n_val": d["validation"], "rollout": d["validation_rollout"],
               "seed": d["data_seed"], "version": 1}
    train = cached_trajectories(f"heat{ndim}d-train", {**gen_cfg, "split": "train"},
                                lambda: generate(d["train"], 2, d["data_seed"]))
    validation = cached_trajectories(f"heat{ndim}d-val", {**gen_cfg, "split": "val"},
                                     lambda: generate(d["validation"], d["validation_rollout"], d["data_seed"] + 1))

    torch.manual_seed(cfg["seed"])
    net_cfg = cfg["net"]
    if net_cfg["name"] == "mlp":
        net = build_net("mlp", in_features=grid.numel, out_features=grid.numel, width=net_cfg["width"],
                        depth=net_cfg["depth"], out_shape=(1,) + grid.shape)
    else:
        net = build_net("resnet", ndim=ndim, in_channels=1, out_channels=1, hidden=net_cfg["hidden"],
                        blocks=net_cfg["blocks"], padding_mode="zeros")
    solver = SolverConfig(method=s["method"], grad=s["grad"], rtol=s["rtol_converged"])
    task = EmulatorTask(net, stepper, train, validation, batch_size=cfg["train"]["batch_size"])
    k_eps = measure_k_converged(stepper, train[:, 1], solver, s["rtol_converged"])
    return Built(task, solver, solver.replace(max_iters=None), k_eps,
                 {"courant_like": p["nu_dt"] / h ** 2, "grid": list(grid.shape)})


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
                    train={"epochs": 70}) for size in ("cpu", "paper")},
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
