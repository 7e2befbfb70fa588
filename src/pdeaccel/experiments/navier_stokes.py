"""PRDP paper: Navier–Stokes 2D neural-hybrid correction learning (coupled saddle-point solver).

Incompressible, periodic, L = 1, Δt = 0.1, ν = 1e-4, decaying turbulence from smoothed projected
white noise (RMS speed 0.1). Reference: our projection solver on a grid ``factor`` times finer
with Δt/factor, converged tightly, face-averaged down to the coarse grid (the paper used its
coupled solver at 96² for the reference). Model ``u_{t+1} = P_K(u_t) + C_θ(P_K(u_t))`` with a conv ResNet C_θ;
loss over ``unroll`` unrolled steps; validation: 5-step rollout nMSE with the converged coarse
solver. Solver: restarted GMRES(8), implicit gradients; K counts restart cycles (paper K_ε = 40).
The coarse step takes one Picard step (the paper's setting) unless ``picard.refine`` is set: then
PRDP refines the Picard count too, and the converged baseline and every validation run
``picard.converged`` Picard iterations.

Sizes: ``paper`` (48², the paper's ≈222k-parameter ResNet, 100 epochs; not run on this CPU) and
``paper-cpu`` (24², a small ResNet, 60 epochs) both use the reference code's training setting
(navier_stokes.ipynb): Adam 1e-3 with a cosine decay to 0.1× over the run, the controller's
history starting with the untrained hybrid's error (ck = 100), τ_step = 0.95, and its metric (the
5th rollout step's x-velocity error over that target's norm). ``cpu`` is ours: LR decayed 0.95 per
epoch, our metric (each step and both components, averaged over the 5 steps).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from tqdm.auto import trange

from ..config import integer_in, number_in, require
from ..linalg import SolverConfig
from ..nets import build_net
from ..physics.navier_stokes import NavierStokes2D, decaying_turbulence, downsample_velocity
from ..train.budgets import LINEAR, PICARD, Budgets
from ..train.tasks import CorrectionTask
from .data import cached_trajectories, show_progress
from .registry import Built, Experiment, measure_k_converged, register, validate_common

_CPU: dict[str, Any] = {
    "seed": 0,
    "physics": {"n": 24, "factor": 2, "nu": 1e-4, "dt": 0.1, "length": 1.0, "peak_wavenumber": 4.0, "rms_velocity": 0.1,
                "warmup_steps": 5},
    "data": {"train": 8, "train_steps": 6, "validation": 4, "validation_rollout": 5, "data_seed": 777},
    "validation": {"metric": "ours"},
    "net": {"hidden": 32, "blocks": 2},
    "solver": {"method": "gmres", "grad": "implicit", "rtol_converged": 1e-5, "restart": 8},
    "prdp": {"k0": 1, "delta_k": 1, "k_max": 100, "tau_step": 0.95, "tau_stop": 0.9,
             "ema_window": 6, "lookback": 3, "k_converged": "measured", "initial_validation": False},
    # refine the Picard count beside K (beyond the paper). converged = 4: on the training states
    # (solves at rtol_converged) the relative nonlinear residual is 1e-2, 7e-4, 6e-5, 1e-5 after
    # 1..4 Picard steps and stays at 1e-5, the linear tolerance, after that
    "picard": {"refine": False, "k0": 1, "delta_k": 1, "converged": 4},
    # lr_schedule: exponential (lr_decay per epoch) or cosine (to lr_final_fraction·lr over the run)
    "train": {"epochs": 30, "batch_size": 8, "lr": 1e-3, "lr_decay": 0.95, "lr_schedule": "exponential",
              "lr_final_fraction": 0.1, "optimizer": "adam", "unroll": 2},
}


def build_ns(cfg: dict[str, Any]) -> Built:
    validate_common(cfg)
    p, d, s = cfg["physics"], cfg["data"], cfg["solver"]
    require(isinstance(p["factor"], int) and p["factor"] >= 1, "physics.factor", p["factor"], "an integer >= 1")
    coarse = NavierStokes2D(p["n"], length=p["length"], nu=p["nu"], dt=p["dt"], method="coupled")
    # The reference is the projection scheme on a grid `factor` times finer with Δt/factor: as
    # accurate as the coupled one at tight tolerances, and ~20× cheaper to converge here (CG on the
    # pressure Poisson problem instead of unpreconditioned GMRES on the saddle-point system).
    fine = NavierStokes2D(p["n"] * p["factor"], length=p["length"], nu=p["nu"], dt=p["dt"] / p["factor"],
                          method="projection")
    momentum_solver = SolverConfig(method="bicgstab", rtol=1e-9)
    pressure_solver = SolverConfig(method="cg", rtol=1e-9)

    def generate(count: int, steps: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        u = decaying_turbulence(fine.n, count, generator=gen, peak_wavenumber=p["peak_wavenumber"],
                                rms_velocity=p["rms_velocity"],
                                dtype=torch.float64)
        pressure = torch.zeros_like(u[:, :1])

        def advance(u: torch.Tensor, pressure: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            for _ in range(p["factor"]):  # the fine solver takes `factor` steps per coarse step
                u, pressure = fine(u, momentum_solver, pressure=pressure, pressure_solver=pressure_solver)
            return u, pressure

        with torch.no_grad():
            for _ in trange(p["warmup_steps"], desc="ns-2d warm-up", leave=False, disable=not show_progress()):
                u, pressure = advance(u, pressure)
            states = [downsample_velocity(u, p["factor"])]
            for _ in trange(steps, desc="ns-2d reference", leave=False, disable=not show_progress()):
                u, pressure = advance(u, pressure)
                states.append(downsample_velocity(u, p["factor"]))
        return torch.stack(states, dim=1).float()

    gen_cfg = {"physics": p, "data": d, "version": 2}
    train = cached_trajectories("ns2d-train", {**gen_cfg, "split": "train"},
                                lambda: generate(d["train"], d["train_steps"], d["data_seed"]))
    validation = cached_trajectories("ns2d-val", {**gen_cfg, "split": "val"},
                                     lambda: generate(d["validation"], d["validation_rollout"], d["data_seed"] + 1))
    torch.manual_seed(cfg["seed"])
    net = build_net("resnet", ndim=2, in_channels=2, out_channels=2, hidden=cfg["net"]["hidden"],
                    blocks=cfg["net"]["blocks"], padding_mode="circular")
    # the hybrid starts as the plain coarse solver: a random correction of the flow's own size
    # would make the first epochs' rollouts meaningless
    torch.nn.init.zeros_(net.project.weight)
    torch.nn.init.zeros_(net.project.bias)

    def step(u: torch.Tensor, solver: SolverConfig, **options: Any) -> torch.Tensor:
        return coarse(u, solver, **options)[0]

    solver = SolverConfig(method=s["method"], grad=s["grad"], rtol=s["rtol_converged"], restart=s["restart"])

    def budgeted_step(u: torch.Tensor, budgets: Budgets) -> torch.Tensor:
        return step(u, budgets.linear_solver(solver), **budgets.stepper_options())

    # with picard.refine the Picard count is a budget too (validated converged: picard.converged)
    task = CorrectionTask(net, budgeted_step, train, validation, batch_size=cfg["train"]["batch_size"],
                          unroll=cfg["train"]["unroll"], metric=cfg.get("validation", {}).get("metric", "ours"),
                          budgets=(LINEAR, PICARD) if cfg["picard"]["refine"] else (LINEAR,))
    k_eps = measure_k_converged(step, train[:, 0], solver, s["rtol_converged"])
    return Built(task, k_eps, {"grid": [p["n"], p["n"]]})


def _paper_cpu() -> dict[str, Any]:
    cfg = copy.deepcopy(_CPU)
    cfg["validation"]["metric"] = "paper"
    cfg["prdp"]["initial_validation"] = True
    cfg["train"]["lr_schedule"] = "cosine"
    # 60 epochs (the paper: 100): at 30, PRDP's hybrid was still improving when training ended
    # (+37% final error against converged, 3 seeds); at 60 it ends within 4% (seed 0), see
    # benchmarks/results/prdp.md
    cfg["train"]["epochs"] = 60
    return cfg


def _paper() -> dict[str, Any]:
    cfg = _paper_cpu()
    cfg["physics"]["n"] = 48
    cfg["data"].update({"train": 50, "train_steps": 20, "validation": 10})
    cfg["net"].update({"hidden": 64, "blocks": 3})  # 221,890 parameters, the paper's ≈222k
    cfg["train"].update({"epochs": 100, "batch_size": 16})
    return cfg


_NS_DEVIATIONS = [
    "Reference data: our projection solver at twice the resolution and Δt/2, face-averaged (the paper: its coupled "
    "solver at 96²); initial flows from our smoothed projected noise (peak wavenumber 4, RMS 0.1), 5 warm-up steps.",
    "K_ε measured (GMRES(8) restart cycles to rtol 1e-5 on our system), not the paper's 40: the systems differ.",
    "LR: the cosine decay changes at epoch boundaries, not every step.",
]

#: what ns-2d's own keys may hold (shared keys: registry.SHARED_RANGES)
NS_RANGES = {"physics.factor": integer_in(1, 16), "physics.warmup_steps": integer_in(0, 100_000),
             "physics.rms_velocity": number_in(positive=True), "physics.peak_wavenumber": number_in(positive=True),
             "data.train_steps": integer_in(1, 1_000_000), "train.unroll": integer_in(1, 1_000_000)}

register(Experiment(
    "ns-2d", "Navier–Stokes 2D hybrid correction (conv ResNet after a coupled GMRES solver)",
    {"cpu": copy.deepcopy(_CPU), "paper-cpu": _paper_cpu(), "paper": _paper()}, build_ns,
    {"net": "ResNet", "k_converged": 40, "epochs": 100, "k_final": 14, "ic": 0.65, "pr": 0.16, "total": 0.81},
    budgets=(LINEAR, PICARD),  # the Picard count with picard.refine
    deviations={
        "paper": _NS_DEVIATIONS,
        "paper-cpu": ["24² coarse grid from a 48² reference, 8 training trajectories of 6 steps, a ResNet with 32 "
                      "channels and 2 blocks, batch 8, 60 epochs (the paper: 48² from 96², its 222k ResNet, 100 "
                      "epochs, batch 25), so that it fits this CPU", *_NS_DEVIATIONS],
        "cpu": ["ours: LR decayed 0.95 per epoch, our metric, history without the untrained error, 30 epochs "
                "(PRDP's final error +35%: the budget ends while its hybrid still improves); sizes as paper-cpu",
                *_NS_DEVIATIONS]},
    ranges=NS_RANGES))
