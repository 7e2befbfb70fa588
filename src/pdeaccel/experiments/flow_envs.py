"""The environments the flow experiments train and validate on: a random channel with one
obstacle per pool slot (:func:`sample_spec`, :func:`build_environment`), moving obstacles'
motion between steps (:func:`move_spec`), the held-out obstacles of the benchmark
(:func:`held_out_spec`, :func:`held_out_environment`) and developed numerical states that warm a
pool (:func:`developed_states`). The channel, its inflow and the obstacle kinds are described in
:mod:`pdeaccel.experiments.flow`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..neural_flow import PotentialState, potential_of
from ..physics.flow import FlowEnvironment, Obstacle, channel

OBSTACLE_KINDS = {2: ("box", "cylinder", "magnus", "moving"), 3: ("box", "cylinder", "sphere", "moving")}
# where a moving obstacle's centre may go (fractions of length, height, depth; and at least its
# radius plus two cells from every wall); it bounces off the edges
MOVING_REGION = ((0.1, 0.7), (0.25, 0.75), (0.25, 0.75))

def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=gen, dtype=torch.float64))


def sample_spec(physics: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
    """A random environment description (JSON-able) from the training distribution."""
    L, H = float(physics["length"]), float(physics["height"])
    kinds = physics["obstacles"]
    kind = kinds[int(torch.randint(len(kinds), (), generator=gen))]
    spec: dict[str, Any] = {"kind": kind, "inflow": _uniform(gen, physics["inflow_min"], physics["inflow_max"]),
                            "center": [_uniform(gen, 0.15 * L, 0.45 * L), _uniform(gen, 0.3 * H, 0.7 * H)]}
    if physics["ndim"] == 3:
        spec["center"].append(_uniform(gen, 0.3 * H, 0.7 * H))
        spec["mu"] = _uniform(gen, *physics["mu_range"])
        spec["rho"] = _uniform(gen, *physics["rho_range"])
    if kind == "box":
        spec["size"] = [_uniform(gen, 0.1 * H, 0.35 * H) for _ in range(physics["ndim"])]
    else:
        spec["radius"] = _uniform(gen, 0.08 * H, 0.2 * H)
    if kind == "magnus":
        # tangential surface speed ω·r up to magnus_max·U, either sense
        spec["omega"] = _uniform(gen, -1.0, 1.0) * physics["magnus_max"] * spec["inflow"] / spec["radius"]
    if kind == "moving":
        # a cylinder (3D: a sphere) translating at up to move_max·U in a random direction
        direction = torch.randn(physics["ndim"], generator=gen, dtype=torch.float64)
        speed = _uniform(gen, 0.0, physics["move_max"]) * spec["inflow"]
        spec["velocity"] = [float(x) for x in speed * direction / direction.norm().clamp(min=1e-12)]
        spec["center"] = [min(max(c, lo), hi) for c, (lo, hi) in
                          zip(spec["center"], (_moving_bounds(physics, spec["radius"], a) for a in range(physics["ndim"])))]
    return spec


def _moving_bounds(physics: dict[str, Any], radius: float, axis: int) -> tuple[float, float]:
    """Where a moving obstacle's centre may be along ``axis``: inside :data:`MOVING_REGION` and
    with two cells of fluid between it and every wall (a rigid body whose cells touch a wall has
    part of its surface covered, and its prescribed faces would no longer balance)."""
    extent = (physics["length"], physics["height"], physics["height"])[axis]
    lo, hi = (f * extent for f in MOVING_REGION[axis])
    lo, hi = max(lo, radius + 2.0), min(hi, extent - radius - 2.0)
    return (lo, hi) if lo <= hi else (0.5 * extent, 0.5 * extent)


def move_spec(physics: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The spec one time step later: a moving obstacle's centre advances by ``velocity·dt`` and
    bounces (the velocity component reverses) off the edges of :data:`MOVING_REGION`. Specs
    without a velocity are returned unchanged (the same object)."""
    if "velocity" not in spec:
        return spec
    center, velocity = list(spec["center"]), list(spec["velocity"])
    for a in range(len(center)):
        lo, hi = _moving_bounds(physics, spec["radius"], a)
        c = center[a] + velocity[a] * physics["dt"]
        if c < lo or c > hi:
            c = 2 * (lo if c < lo else hi) - c
            velocity[a] = -velocity[a]
        center[a] = min(max(c, lo), hi)
    return {**spec, "center": center, "velocity": velocity}


def build_environment(physics: dict[str, Any], spec: dict[str, Any],
                      dtype: torch.dtype = torch.float32) -> FlowEnvironment:
    """The :class:`FlowEnvironment` of a spec (batch 1)."""
    ndim = physics["ndim"]
    kind = spec["kind"]
    if kind == "box":
        obstacle = Obstacle.box(spec["center"], spec["size"])
    elif kind in ("cylinder", "magnus"):
        obstacle = Obstacle.cylinder(spec["center"], spec["radius"], angular_velocity=spec.get("omega", 0.0))
    elif kind == "sphere":
        obstacle = Obstacle.sphere(spec["center"], spec["radius"])
    elif kind == "moving":
        make = Obstacle.cylinder if ndim == 2 else Obstacle.sphere
        obstacle = make(spec["center"], spec["radius"], velocity=spec["velocity"])
    else:
        raise ValueError(f"unknown obstacle kind {kind!r}; allowed: {', '.join(OBSTACLE_KINDS[ndim])}.")
    H = float(physics["height"])
    return channel(float(physics["length"]), H, int(physics["height"]), ndim=ndim, inflow_speed=spec["inflow"],
                   outflow="prescribed", obstacles=(obstacle,), mu=spec.get("mu", physics["mu"]),
                   rho=spec.get("rho", physics["rho"]), dt=physics["dt"], dtype=dtype)


HELD_OUT = ("cylinder", "box", "moving")


def held_out_spec(physics: dict[str, Any], kind: str, inflow: float | None = None) -> dict[str, Any]:
    """The benchmark's held-out domains: a cylinder of diameter 0.3·H at (0.25·L, 0.52·H) (off
    centre, so shedding starts without a perturbation), a square box of side 0.25·H there, and
    ("moving") a cylinder of diameter 0.24·H at (0.3·L, 0.5·H) moving across the channel at 0.3·U,
    bouncing between 0.25·H and 0.75·H."""
    L, H = float(physics["length"]), float(physics["height"])
    u = float(physics["inflow_max"]) if inflow is None else float(inflow)
    center = [0.25 * L, 0.52 * H] + ([0.5 * H] if physics["ndim"] == 3 else [])
    if kind == "cylinder":
        return {"kind": "cylinder", "inflow": u, "center": center, "radius": 0.15 * H}
    if kind == "box":
        return {"kind": "box", "inflow": u, "center": center, "size": [0.25 * H] * physics["ndim"]}
    if kind == "moving":
        velocity = [0.0, 0.3 * u] + ([0.0] if physics["ndim"] == 3 else [])
        return {"kind": "moving", "inflow": u, "center": [0.3 * L, 0.5 * H] + center[2:], "radius": 0.12 * H,
                "velocity": velocity}
    raise ValueError(f"held-out environments are {', '.join(HELD_OUT)}; got {kind!r}.")


def held_out_environment(physics: dict[str, Any], kind: str, inflow: float | None = None,
                         dtype: torch.dtype = torch.float32) -> FlowEnvironment:
    return build_environment(physics, held_out_spec(physics, kind, inflow), dtype)


def developed_states(physics: dict[str, Any], specs: list[dict[str, Any]], time: float,
                     model: torch.nn.Module) -> list[tuple[dict[str, Any], Any]]:
    """Developed flows for a warm pool: each spec run from rest for ``time`` time units with the
    numerical reference (MACFlowSolver, float64, sub-stepped to Courant 0.5; all specs as one
    batch), turned into the model's state (2D potential by column integration, pressure with
    its fluid mean removed). A moving obstacle is held still (it becomes a cylinder)."""
    from ..physics.incompressible import MACFlowSolver

    specs = [{**{k: v for k, v in s.items() if k != "velocity"}, "kind": "cylinder"} if s["kind"] == "moving" else s
             for s in specs]
    env = FlowEnvironment.stack([build_environment(physics, s, torch.float64) for s in specs])
    sub = reference_substeps(env)
    solver = MACFlowSolver(env.replace(dt=physics["dt"] / sub), advection="upwind3")
    steps = max(1, round(time / physics["dt"]))
    window = getattr(model, "steps_per_call", 1)
    state = solver.run(solver.initial_state(), (steps - window + 1) * sub)
    history = [state]
    for _ in range(window - 1):
        state = solver.run(state, sub)
        history.append(state)
    dtype = next(model.parameters()).dtype
    fluid = env.fluid
    out = []
    for b, spec in enumerate(specs):
        fine = []
        for st in history:
            u = tuple(c[b:b + 1] for c in st.velocity)
            p = st.pressure[b:b + 1] * fluid[b:b + 1]
            p = (p - p.sum() / fluid[b].sum().clamp(min=1.0)) * fluid[b:b + 1]
            fine.append(PotentialState(potential_of(u, env).to(dtype), p.to(dtype)))
        out.append((spec, model.from_trajectory(fine)))
    return out


def reference_substeps(env: FlowEnvironment, courant: float = 0.5) -> int:
    """Sub-steps per network step that keep the reference solver at ``courant`` for the peak
    prescribed speed (×1.5 for the overshoot around obstacles)."""
    peak = max(float(f.abs().max()) for f in env.face_velocity)
    return max(1, math.ceil(1.5 * peak * env.dt / (courant * min(env.spacing))))
