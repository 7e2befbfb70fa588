"""Physics-constrained neural flow solvers around obstacles (Wandel et al. 2021; the vanilla
solver NeuralStagger accelerates), trained on a pool of random environments without data.

Environments: a channel along x with no-slip walls (``physics.height`` cells across, unit cell
width as in the paper), a prescribed parabolic in- and outflow profile of mean speed
``U ~ U(inflow_min, inflow_max)`` (Wandel et al.'s in/outflow cells), and one obstacle: a box, a
cylinder, a rotating cylinder ("magnus", surface speed up to ``magnus_max·U``) or a moving
cylinder ("moving": translating at up to ``move_max·U``, bouncing inside the channel; see
:func:`move_spec`), at a random place and size. In 3D the channel has a square cross-section,
the obstacle is a box, a cylinder along z, a sphere or a moving sphere, and μ and ρ are sampled
per environment (and given to the network).
Fluid parameters follow the paper: μ = 0.1, ρ = 4, Δt = 4 (grid units). The loss's advection term is
third-order upwind by default (``loss.advection=central`` is the paper's; see the config comment).

Held-out environments for the benchmark (:func:`held_out_environment`): ``"cylinder"``,
``"box"`` and ``"moving"`` with fixed shapes, positions and motion not drawn in training.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

from ..config import Allowed, ConfigError, check_ranges, flag, integer_in, number_in, one_of, require
from ..flow_model import MODEL_KINDS, build_flow_model
from ..neural_flow import random_potential_perturbation
from ..physics.flow import FlowEnvironment
from ..train import io
from ..train.pool import FlowPool
from ..train.tasks import FlowPoolTask
from .registry import Built, Experiment, register
# the environments live in flow_envs; these names stay importable from here
from .flow_envs import (MOVING_REGION, OBSTACLE_KINDS, HELD_OUT, _moving_bounds, build_environment,  # noqa: F401
                        developed_states, held_out_environment, held_out_spec, move_spec, sample_spec)

_CPU_2D: dict[str, Any] = {
    "seed": 0,
    # dt = 1 (the paper's is 4, kept at --size paper): at cpu budgets (15k optimiser steps) the network
    # learns a shedding wake at Δt = 1 and converges to the symmetric steady wake at Δt = 4
    # (benchmarks/results/flow.md, "recipes")
    "physics": {"ndim": 2, "length": 64, "height": 32, "mu": 0.1, "rho": 4.0, "dt": 1.0,
                "inflow_min": 0.2, "inflow_max": 1.0, "obstacles": ["box", "cylinder", "magnus", "moving"],
                "magnus_max": 1.0, "move_max": 0.3, "mu_range": [0.1, 0.1], "rho_range": [4.0, 4.0]},
    # perturb: peak speed (× the environment's inflow) of the random divergence-free perturbation
    # added to one random pool state every perturb_every steps (0: never); see train/pool.py
    # warm_fraction: share of resets that start from a developed numerical state (a bank of warm_bank
    # environments run for warm_time time units with MACFlowSolver; 2D only) instead of rest
    # young: the first `young` slots are also reset round-robin every young_reset_every steps, so the
    # start-up from rest is trained on as often as the developed wake (see train/pool.py)
    "pool": {"size": 64, "reset_every": 100, "seed": 1234, "perturb": 0.0, "perturb_every": 0,
             "warm_fraction": 0.0, "warm_bank": 8, "warm_time": 400.0, "young": 0, "young_reset_every": 0},
    # the flow-model kind (pdeaccel.flow_model): "vanilla", or "staggered" (NeuralStagger) with spatial
    # stride s per axis and temporal stride T (window); (s, T) = (1, 1) staggered is the vanilla solver.
    # mirror: (2D, vanilla) a step exactly equivariant under y → H − y (neural_flow.NeuralFlowSolver)
    # gauge (staggered, s > 1): "walls" pins every sub-field's potential on the outer walls to the
    # values the inflow fixes (2D), "free" leaves the levels to the loss (3D; see pdeaccel.stagger)
    # offset_input (staggered, shared weights): whether the shared network is told its offset and time slot
    "model": {"kind": "vanilla", "stride": 1, "window": 1, "shared_weights": False, "mirror": False,
              "gauge": "walls", "offset_input": True},
    # init_from: a flow run directory whose newest checkpoint's weights start this run ("" = random init)
    "net": {"hidden": 16, "levels": 3, "kernel_size": 3, "init_from": ""},
    # upwind3 is our design (the paper's loss is "central"): the exact minimiser of the central-difference
    # loss at Δt = 4 is 17% off the resolved reference after one step and oscillates ahead of the
    # outflow (cell Reynolds number 40); with upwind3 it is 0.6% off (benchmarks/results/flow.md)
    # unroll: model calls per optimiser step, back-propagated through, the residual judged at each
    "loss": {"beta": 20.0, "theta": 0.5, "advection": "upwind3", "unroll": 1},
    "data": {"validation": 4, "validation_steps": 20, "validation_seed": 4321},
    "train": {"epochs": 150, "steps_per_epoch": 100, "batch_size": 8, "lr": 1e-3, "lr_decay": 0.985,
              "optimizer": "adam"},
}


#: what each key of a flow config may hold (the relations between keys are checked in validate_flow)
FLOW_RANGES: dict[str, Allowed] = {
    "physics.ndim": one_of(2, 3),
    "physics.length": integer_in(8, note="cells"), "physics.height": integer_in(8, note="cells"),
    **{f"physics.{k}": number_in(positive=True) for k in ("mu", "rho", "dt", "inflow_min", "inflow_max")},
    "physics.move_max": number_in(0, 2, note="a moving obstacle's top speed / inflow"),
    "pool.size": integer_in(1), "pool.reset_every": integer_in(0, note="0: never reset"),
    "pool.perturb": number_in(0, 10, note="peak perturbation speed / inflow; 0: off"),
    "pool.perturb_every": integer_in(0, note="0: never perturb"),
    "pool.warm_fraction": number_in(0, 1), "pool.warm_bank": integer_in(1, 256),
    "pool.warm_time": number_in(0, 1e5, positive=True, note="time units"),
    "pool.young": integer_in(0, note="0: no young slots"), "pool.young_reset_every": integer_in(0),
    "loss.unroll": integer_in(1, 32),
    "model.stride": integer_in(1, 8, note="the spatial stride s, the same on every axis"),
    "model.window": integer_in(1, 16, note="the temporal stride T"),
    "model.shared_weights": flag(), "model.mirror": flag(), "model.gauge": one_of("walls", "free"),
    "model.offset_input": flag(),
    "net.levels": integer_in(1, 6), "net.kernel_size": integer_in(1), "net.hidden": integer_in(1),
    "loss.beta": number_in(positive=True), "loss.theta": number_in(0, 1, note="0.5: IMEX"),
    "loss.advection": one_of("central", "upwind", "upwind2", "upwind3"),
    "train.epochs": integer_in(1), "train.steps_per_epoch": integer_in(1), "train.batch_size": integer_in(1),
    "train.lr": number_in(positive=True), "train.lr_decay": number_in(0, 1, positive=True),
    "train.optimizer": one_of("adam", "adam-fused", "sgd"),
    "data.validation": integer_in(1), "data.validation_steps": integer_in(1),
}


def _paper_2d() -> dict[str, Any]:
    cfg = copy.deepcopy(_CPU_2D)
    cfg["physics"].update({"length": 300, "height": 100, "dt": 4.0})
    cfg["pool"].update({"size": 1000, "reset_every": 1})
    cfg["net"].update({"hidden": 20, "levels": 4})  # ≈1.7M parameters, the paper's U-Net
    cfg["data"].update({"validation": 8, "validation_steps": 100})
    cfg["train"].update({"epochs": 200, "steps_per_epoch": 500, "batch_size": 100, "lr": 1e-3, "lr_decay": 0.99})
    return cfg


def _cpu_3d() -> dict[str, Any]:
    cfg = copy.deepcopy(_CPU_2D)
    cfg["physics"].update({"ndim": 3, "length": 24, "height": 12, "obstacles": ["box", "cylinder", "sphere", "moving"],
                           "mu_range": [0.05, 0.2], "rho_range": [1.0, 4.0], "dt": 4.0})
    cfg["pool"].update({"size": 16, "reset_every": 16})
    cfg["net"].update({"hidden": 8, "levels": 2})
    cfg["model"]["gauge"] = "free"  # a 3D vector potential has no single wall level
    cfg["data"].update({"validation": 2, "validation_steps": 10})
    cfg["train"].update({"epochs": 10, "steps_per_epoch": 50, "batch_size": 4, "lr_decay": 0.97})
    return cfg


def _paper_3d() -> dict[str, Any]:
    cfg = _cpu_3d()
    cfg["physics"].update({"length": 128, "height": 64})  # 128 × 64 × 64, as in the paper
    cfg["pool"].update({"size": 256, "reset_every": 1})
    cfg["net"].update({"hidden": 20, "levels": 4})
    cfg["data"].update({"validation": 4, "validation_steps": 50})
    cfg["train"].update({"epochs": 100, "steps_per_epoch": 500, "batch_size": 8})
    return cfg


# ------------------------------------------------------------------------------ build
def validate_flow(cfg: dict[str, Any]) -> None:
    """Every key against :data:`FLOW_RANGES`, then the relations between keys."""
    check_ranges(cfg, FLOW_RANGES)
    p, pc, m, n = cfg["physics"], cfg["pool"], cfg["model"], cfg["net"]
    require(p["inflow_min"] <= p["inflow_max"], "physics.inflow_min", p["inflow_min"],
            f"a number in (0, physics.inflow_max={p['inflow_max']}]")
    kinds = OBSTACLE_KINDS[p["ndim"]]
    require(isinstance(p["obstacles"], list) and len(p["obstacles"]) > 0 and all(k in kinds for k in p["obstacles"]),
            "physics.obstacles", p["obstacles"], f"a non-empty list of {', '.join(kinds)}")
    for key in ("mu_range", "rho_range"):
        r = p[key]
        require(isinstance(r, list) and len(r) == 2 and all(isinstance(x, (int, float)) for x in r)
                and 0 < r[0] <= r[1] < math.inf, f"physics.{key}", r, "[lo, hi] with 0 < lo <= hi")
    require(pc["warm_fraction"] == 0 or p["ndim"] == 2, "pool.warm_fraction", pc["warm_fraction"],
            "0 in 3D (a developed numerical state is turned into a potential in 2D only)")
    require(pc["young"] <= pc["size"], "pool.young", pc["young"],
            f"an integer in [0, pool.size={pc['size']}] (0: no young slots)")
    require((pc["young"] > 0) == (pc["young_reset_every"] > 0), "pool.young_reset_every", pc["young_reset_every"],
            "an integer > 0 when pool.young > 0, and 0 when pool.young = 0")
    require(m["kind"] in MODEL_KINDS, "model.kind", m["kind"], ", ".join(sorted(MODEL_KINDS)))
    if not m.get("offset_input", True):
        require(m["kind"] == "staggered" and m["shared_weights"], "model.offset_input", m["offset_input"],
                "true unless model.kind=staggered with model.shared_weights=true (separate networks know their offset)")
    if m.get("gauge", "walls") == "walls" and m["kind"] == "staggered" and m["stride"] > 1:
        require(p["ndim"] == 2, "model.gauge", m["gauge"],
                "free in 3D (the walls gauge pins a 2D stream function; a 3D vector potential has no single wall level)")
    if m.get("mirror", False):
        require(p["ndim"] == 2 and m["kind"] == "vanilla", "model.mirror", m["mirror"],
                "false unless physics.ndim=2 and model.kind=vanilla (the reflection-equivariant step is 2D, vanilla)")
    if m["kind"] == "vanilla":
        require(m["stride"] == 1 and m["window"] == 1, "model.stride/model.window", (m["stride"], m["window"]),
                "1 and 1 for model.kind=vanilla (use model.kind=staggered to decompose the solver)")
    coarse = math.ceil(p["height"] / m["stride"])
    require(2 ** n["levels"] <= coarse, "net.levels", n["levels"],
            f"2**levels <= physics.height / model.stride ({coarse}) so the U-Net's coarsest level has a cell")
    require(n["kernel_size"] % 2 == 1, "net.kernel_size", n["kernel_size"], "an odd integer")


def build_model(cfg: dict[str, Any]) -> torch.nn.Module:
    """The flow model of the config's ``model.kind``, with input/output scales derived from the
    physics (speeds ~ inflow_max, potential ~ the channel's volume flux, pressure ~ ρU²)."""
    p = cfg["physics"]
    U = float(p["inflow_max"])
    rho = float(max(p["rho"], p["rho_range"][1]) if p["ndim"] == 3 else p["rho"])
    H = float(p["height"])
    scales = {"velocity_scale": U, "potential_scale": U * H / 4, "pressure_scale": rho * U * U,
              "potential_bound": 10 * U * H, "pressure_bound": 50 * rho * U * U}
    return build_flow_model(p["ndim"], cfg.get("model", {"kind": "vanilla"}), cfg["net"], scales)


def _warm_start(model: torch.nn.Module, cfg: dict[str, Any]) -> None:
    """Continue from another flow run's weights (e.g. a longer training at a new learning rate)."""
    source = Path(cfg["net"]["init_from"])
    found = io.latest_valid_checkpoint(source / "checkpoints") if source.is_dir() else None
    if found is None:
        raise ConfigError(f"net.init_from={str(source)!r}: no intact checkpoint there; give a flow-2d/flow-3d "
                          "run directory.")
    try:
        model.load_state_dict(found[1]["task"]["net"])
    except (KeyError, RuntimeError) as exc:
        raise ConfigError(f"net.init_from={str(source)!r}: its network does not match net.hidden/levels/"
                          f"kernel_size and physics.ndim of this run ({str(exc).splitlines()[0]}).") from None


def build_flow(cfg: dict[str, Any]) -> Built:
    validate_flow(cfg)
    p, d = cfg["physics"], cfg["data"]
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg)
    if cfg["net"]["init_from"]:
        _warm_start(model, cfg)
    pc = cfg["pool"]
    pool = FlowPool(pc["size"], lambda g: sample_spec(p, g), lambda s: build_environment(p, s),
                    model, pc["reset_every"], seed=pc["seed"], move=lambda s: move_spec(p, s),
                    perturb=lambda spec, env, g: random_potential_perturbation(env, pc["perturb"] * spec["inflow"], g),
                    perturb_every=pc["perturb_every"] if pc["perturb"] > 0 else 0,
                    warm=lambda specs, g: developed_states(p, specs, pc["warm_time"], model),
                    warm_fraction=pc["warm_fraction"], warm_bank=pc["warm_bank"],
                    young=pc["young"], young_reset_every=pc["young_reset_every"])
    gen = torch.Generator().manual_seed(d["validation_seed"])
    validation_env = FlowEnvironment.stack([build_environment(p, sample_spec(p, gen)) for _ in range(d["validation"])])
    lo, t = cfg["loss"], cfg["train"]
    task = FlowPoolTask(model, pool, validation_env, steps_per_epoch=t["steps_per_epoch"],
                        batch_size=t["batch_size"], beta=lo["beta"], theta=lo["theta"], advection=lo["advection"],
                        validation_steps=d["validation_steps"], unroll=lo["unroll"])
    return Built(task, info={"grid": list(validation_env.grid.shape),
                             "parameters": sum(q.numel() for q in model.parameters())})


_PAPER = {"net": "U-Net", "steps_per_second_gpu": 311}
# keys added since the first flow runs, with the values that keep those runs' behaviour on --resume
_ADDED_KEYS = {"model.kind": "vanilla", "model.stride": 1, "model.window": 1, "model.shared_weights": False,
               "model.mirror": False, "pool.warm_fraction": 0.0, "pool.warm_bank": 8, "pool.warm_time": 400.0,
               "pool.young": 0, "pool.young_reset_every": 0, "loss.unroll": 1, "model.gauge": "free",
               "model.offset_input": True}



register(Experiment(
    "flow-2d", "physics-constrained neural flow solver, 2D channel with obstacles (trained without data)",
    {"cpu": copy.deepcopy(_CPU_2D), "paper": _paper_2d()}, build_flow, _PAPER, budgets=(),
    added_keys=_ADDED_KEYS, ranges=FLOW_RANGES))
register(Experiment(
    "flow-3d", "physics-constrained neural flow solver, 3D channel with obstacles, μ and ρ per environment",
    {"cpu": _cpu_3d(), "paper": _paper_3d()}, build_flow, _PAPER, budgets=(), added_keys=_ADDED_KEYS, ranges=FLOW_RANGES))


# NeuralStagger settings of benchmarks/stagger.py: (ndim, spatial stride s, temporal stride T). Each is
# the flow experiment of its dimension with model.kind=staggered; "s1t1" is the vanilla solver
# through the staggered code path.
STAGGER_SETTINGS = {"flow-2d-s1t1": (2, 1, 1), "flow-2d-s2t1": (2, 2, 1), "flow-2d-s4t1": (2, 4, 1),
                    "flow-2d-s2t2": (2, 2, 2), "flow-2d-s4t2": (2, 4, 2), "flow-2d-s1t4": (2, 1, 4),
                    "flow-3d-s2t1": (3, 2, 1)}


def _staggered(cfg: dict[str, Any], stride: int, window: int) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    # shared weights (offset and time slot as inputs): with separate weights the sub-solvers evolve
    # at different rates and the pool fills with striped flows that no sub-solver can see, so the
    # loss rises during training (benchmarks/results/stagger.md); model.shared_weights=false is
    # the separate-weights variant
    cfg["model"].update({"kind": "staggered", "stride": stride, "window": window, "shared_weights": True})
    if stride > 1:
        # each sub-solver's U-Net runs on a grid s times coarser: one level fewer per halving
        coarse = math.ceil(cfg["physics"]["height"] / stride)
        cfg["net"]["levels"] = max(1, min(cfg["net"]["levels"], int(math.log2(coarse))))
    return cfg


def _fine_s2t1() -> dict[str, Any]:
    """flow-2d-s2t1 on a grid twice as fine: 128×64 cells of the same size, obstacles twice as many
    cells across, μ doubled so every Reynolds number is the cpu channel's. Each sub-solver then runs
    on the vanilla cpu model's 64×32 grid: a simulation twice as fine as the vanilla's at a coarse
    sub-solver's cost (the paper's framing), and sub-fields that resolve the flow as well as the
    vanilla's grid does (at the cpu size a stride-2 sub-field sees the held-out cylinder 2.4 cells
    across, and its sub-solvers disagree by the flow they cannot resolve)."""
    cfg = _staggered(_CPU_2D, 2, 1)
    cfg["physics"].update({"length": 128, "height": 64, "mu": 0.2})
    return cfg


STAGGER_SETTINGS["flow-2d-s2t1-x2"] = (2, 2, 1)
for _name, (_ndim, _s, _T) in STAGGER_SETTINGS.items():
    if _name == "flow-2d-s2t1-x2":
        register(Experiment(
            _name, "NeuralStagger s=2, T=1 on a 128×64 channel (μ doubled: the cpu channel's Reynolds numbers); "
                   "every sub-solver runs on the vanilla cpu model's 64×32 grid",
            {"cpu": _fine_s2t1()}, build_flow, _PAPER, budgets=(), added_keys=_ADDED_KEYS, ranges=FLOW_RANGES))
        continue
    _base = (_CPU_2D, _paper_2d()) if _ndim == 2 else (_cpu_3d(), _paper_3d())
    register(Experiment(
        _name, f"NeuralStagger: the {_ndim}D flow solver split into s^d·T = {_s ** _ndim * _T} coarse sub-solvers "
               f"(stride s={_s}, window T={_T}), trained jointly with the vanilla physics loss",
        {"cpu": _staggered(_base[0], _s, _T), "paper": _staggered(_base[1], _s, _T)}, build_flow, _PAPER,
        budgets=(), added_keys=_ADDED_KEYS, ranges=FLOW_RANGES))
