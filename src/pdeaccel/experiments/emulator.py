"""Shared construction of network-then-solver emulator experiments (heat, Burgers).

Reference trajectories come from the experiment's own stepper run with a converged solver in
float64 (cached on disk); the network is an MLP on the flattened field or a conv ResNet.

Options (each a config key; missing keys take the first value):

* ``solver.initial_guess``: ``prediction`` (ours: the solve starts from the network's
  prediction û₁, a warm start) or ``zero`` (the paper's: K Jacobi sweeps from x₀ = 0, so K = 1 is
  one sweep ``D⁻¹ b`` and every K is well-posed).
* ``data.generator``: ``sine`` (ours: Σ a_k Π sin(k_d π x_d), zero on the walls) or ``paper``
  (the reference code's ``RandomTruncatedFourierSeries``: Σ_n a sin(2πnx) + b cos(2πnx) in 1D; in 2D
  for each n the four products of sin/cos(2πnx)·sin/cos(2πny), the fourth written
  sin(2πnx)·cos(2πnx) in the reference code and kept so here; evaluated on the interior points).
* ``validation.metric``: ``ours`` or ``paper`` (see :class:`~pdeaccel.train.tasks.EmulatorTask`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..config import ConfigError
from ..grid import Grid
from ..linalg import SolverConfig
from ..nets import build_net
from ..physics.initial_conditions import random_fourier
from ..train.budgets import LINEAR, PICARD, Budgets
from ..train.tasks import EmulatorTask
from .data import cached_trajectories, rollout
from .registry import Built, measure_k_converged, validate_common


def paper_fourier(grid: Grid, count: int, modes: int, generator: torch.Generator) -> torch.Tensor:
    """The reference code's random truncated Fourier series on the interior points of ``grid``
    (1D and 2D; amplitudes U(−1, 1), no offset), ``[count, 1, *grid.shape]`` in float64."""
    if grid.ndim not in (1, 2):
        raise ConfigError(f"data.generator=paper exists for 1D and 2D (the reference code's); this grid is {grid.ndim}D.")
    n = grid.shape[0]
    x = torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)
    k = torch.arange(1, modes + 1, dtype=torch.float64)
    arg = 2 * torch.pi * k[:, None] * x[None, :]  # [modes, n]
    s, c = torch.sin(arg), torch.cos(arg)
    if grid.ndim == 1:
        a = torch.rand(count, 2, modes, generator=generator, dtype=torch.float64) * 2 - 1
        u = a[:, 0] @ s + a[:, 1] @ c
        return u[:, None]
    a = torch.rand(count, 4, modes, generator=generator, dtype=torch.float64) * 2 - 1
    u = (torch.einsum("bm,mx,my->bxy", a[:, 0], s, s) + torch.einsum("bm,mx,my->bxy", a[:, 1], c, c)
         + torch.einsum("bm,mx,my->bxy", a[:, 2], c, s)
         # the reference code's fourth term: sin(2πn x)·cos(2πn x) (x twice), constant along y
         + torch.einsum("bm,mx->bx", a[:, 3], s * c)[:, :, None].expand(count, n, n))
    return u[:, None]

Stepper = Callable[..., torch.Tensor]  # (u, solver, **options) -> u_next


def build_emulator(cfg: dict[str, Any], name: str, grid: Grid, stepper: Stepper, reference_solver: SolverConfig,
                   amplitude: float = 1.0, picard_converged: int | None = None) -> Built:
    """The emulator task of ``stepper`` (``(u, solver, **options) -> u_next``) and its K_ε.

    With ``picard_converged`` the task also declares the ``picard`` budget (passed to the stepper
    as ``picard_iterations``), and the reference data come from that many Picard iterations.
    """
    validate_common(cfg)
    p, d, s, net_cfg = cfg["physics"], cfg["data"], cfg["solver"], cfg["net"]
    if d["validation_rollout"] < 1 or d["train"] < 1 or d["validation"] < 1:
        raise ConfigError("config keys 'data.train', 'data.validation' and 'data.validation_rollout' must be >= 1.")

    form = d.get("generator", "sine")
    initial_guess = s.get("initial_guess", "prediction")
    metric = cfg.get("validation", {}).get("metric", "ours")

    def generate(count: int, steps: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        if form == "paper":
            u0 = amplitude * paper_fourier(grid, count, p["modes"], gen)
        else:
            u0 = random_fourier(grid, count, modes=p["modes"], amplitude=amplitude, generator=gen, dtype=torch.float64)
        return rollout(lambda u: stepper(u, reference_solver, **reference_options), u0, steps,
                       desc=f"{name} reference").float()

    reference_options = {} if picard_converged is None else {"picard_iterations": picard_converged}
    gen_cfg = {"name": name, "physics": p, "n_train": d["train"], "n_val": d["validation"],
               "rollout": d["validation_rollout"], "seed": d["data_seed"], "version": 1,
               "reference_nonlinear_iters": picard_converged}  # the cache key's name predates the picard budget
    if form != "sine":  # the sine generator's cache keys stay as they were
        gen_cfg["generator"] = form
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
    solver = SolverConfig(method=s["method"], grad=s["grad"], rtol=s["rtol_converged"], restart=s.get("restart", 20),
                          compile=s.get("compile", False))
    def train_stepper(u: torch.Tensor, solver: SolverConfig, **options: Any) -> torch.Tensor:
        if initial_guess == "zero":  # the solve starts from 0
            options["x0"] = torch.zeros_like(u)
        return stepper(u, solver, **options)

    def step(u: torch.Tensor, budgets: Budgets) -> torch.Tensor:
        return train_stepper(u, budgets.linear_solver(solver), **budgets.stepper_options())

    budgets = (LINEAR,) if picard_converged is None else (LINEAR, PICARD)
    task = EmulatorTask(net, step, train, validation, batch_size=cfg["train"]["batch_size"], metric=metric,
                        budgets=budgets)
    k_eps = measure_k_converged(train_stepper, train[:, 1], solver, s["rtol_converged"])
    return Built(task, k_eps, {"grid": list(grid.shape)})
