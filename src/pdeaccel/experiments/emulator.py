"""Shared construction of network-then-solver emulator experiments (heat, Burgers).

Reference trajectories come from the experiment's own stepper run with a converged solver in
float64 (cached on disk); the network is an MLP on the flattened field or a conv ResNet.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..config import ConfigError
from ..grid import Grid
from ..linalg import SolverConfig
from ..nets import build_net
from ..physics.initial_conditions import random_fourier
from ..train.tasks import EmulatorTask
from .data import cached_trajectories, rollout
from .registry import Built, measure_k_converged, validate_common

Stepper = Callable[[torch.Tensor, SolverConfig], torch.Tensor]


def build_emulator(cfg: dict[str, Any], name: str, grid: Grid, stepper: Stepper, reference_solver: SolverConfig,
                   amplitude: float = 1.0) -> Built:
    validate_common(cfg)
    p, d, s, net_cfg = cfg["physics"], cfg["data"], cfg["solver"], cfg["net"]
    if d["validation_rollout"] < 1 or d["train"] < 1 or d["validation"] < 1:
        raise ConfigError("config keys 'data.train', 'data.validation' and 'data.validation_rollout' must be >= 1.")

    def generate(count: int, steps: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        u0 = random_fourier(grid, count, modes=p["modes"], amplitude=amplitude, generator=gen, dtype=torch.float64)
        return rollout(lambda u: stepper(u, reference_solver), u0, steps, desc=f"{name} reference").float()

    gen_cfg = {"name": name, "physics": p, "n_train": d["train"], "n_val": d["validation"],
               "rollout": d["validation_rollout"], "seed": d["data_seed"], "version": 1,
               "reference_nonlinear_iters": reference_solver.nonlinear_iters}
    field = (1,) + grid.shape
    train = cached_trajectories(f"{name}-train", {**gen_cfg, "split": "train"},
                                lambda: generate(d["train"], 2, d["data_seed"]),
                                shape=(d["train"], 3, *field), dtype=torch.float32)
    validation = cached_trajectories(f"{name}-val", {**gen_cfg, "split": "val"},
                                     lambda: generate(d["validation"], d["validation_rollout"], d["data_seed"] + 1),
                                     shape=(d["validation"], d["validation_rollout"] + 1, *field),
                                     dtype=torch.float32)

    torch.manual_seed(cfg["seed"])
    if net_cfg["name"] == "mlp":
        net = build_net("mlp", in_features=grid.numel, out_features=grid.numel, width=net_cfg["width"],
                        depth=net_cfg["depth"], out_shape=(1,) + grid.shape)
    elif net_cfg["name"] == "resnet":
        padding = "circular" if all(b == "periodic" for b in grid.boundary) else "zeros"
        net = build_net("resnet", ndim=grid.ndim, in_channels=1, out_channels=1, hidden=net_cfg["hidden"],
                        blocks=net_cfg["blocks"], padding_mode=padding)
    else:
        raise ConfigError(f"config key 'net.name' has value {net_cfg['name']!r}; allowed: mlp, resnet.")
    solver = SolverConfig(method=s["method"], grad=s["grad"], rtol=s["rtol_converged"], restart=s.get("restart", 20))
    task = EmulatorTask(net, stepper, train, validation, batch_size=cfg["train"]["batch_size"])
    k_eps = measure_k_converged(stepper, train[:, 1], solver, s["rtol_converged"])
    return Built(task, solver, solver.replace(max_iters=None), k_eps, {"grid": list(grid.shape)})
