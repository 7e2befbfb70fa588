"""Simulators a controller differentiates through, with one interface (``bind(env, probe)`` → a
:class:`Bound` stepper with ``rest()``, ``step(state)``, ``sample_dt``), and the checkpointed rollout
(:func:`simulate`)."""

from __future__ import annotations


import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from .._checks import integer
from ..linalg import SolverConfig
from ..neural_flow import PotentialState, velocity_from_potential
from ..physics.flow import FlowEnvironment
from ..physics.incompressible import FlowState, MACFlowSolver
from .environment import Probe

Velocity = tuple[torch.Tensor, ...]
State = tuple[torch.Tensor, ...]


class Bound:
    """A simulator bound to one environment (one set of control values).

    ``rest()`` is the fluid at rest as a tuple of tensors; ``step(state)`` advances one call
    (``samples_per_call`` probe samples, ``sample_dt`` apart) and returns ``(state, probes [B, k])``;
    ``snapshot(state)`` is the newest velocity (first sample), its solid-cell mask and the spacing."""

    samples_per_call: int = 1
    steps_per_call: int = 1  # fine steps of env.dt per call
    sample_dt: float = 1.0

    def rest(self) -> State: ...
    def step(self, state: State) -> tuple[State, torch.Tensor]: ...
    def snapshot(self, state: State) -> tuple[Velocity, np.ndarray, float]: ...


class NumericalSimulator:
    """The differentiable numerical solver: :class:`MACFlowSolver` with ``substeps`` sub-steps of
    ``env.dt/substeps`` per sampled step, in ``dtype``, third-order upwind advection, pressure by
    deflated CG to ``rtol`` (implicit gradients: one adjoint CG solve per solve)."""

    kind = "numerical"

    def __init__(self, substeps: int, *, dtype: torch.dtype = torch.float64, rtol: float = 1e-6,
                 advection: str = "upwind3") -> None:
        self.substeps = integer("substeps", substeps, minimum=1)
        self.dtype = dtype
        self.rtol = float(rtol)
        self.advection = advection

    def describe(self) -> str:
        return (f"MACFlowSolver ({self.advection}, {str(self.dtype).replace('torch.', '')}, {self.substeps} sub-steps "
                f"per Δt, CG rtol {self.rtol:g}, implicit gradients)")

    def bind(self, env: FlowEnvironment, probe: Probe) -> "_NumericalBound":
        return _NumericalBound(self, env, probe)


class _NumericalBound(Bound):
    def __init__(self, sim: NumericalSimulator, env: FlowEnvironment, probe: Probe) -> None:
        env = env.to(dtype=sim.dtype)
        self.env = env
        self.sub = sim.substeps
        self.solver = MACFlowSolver(env.replace(dt=env.dt / sim.substeps), advection=sim.advection,
                                    pressure_solver=SolverConfig(method="cg", rtol=sim.rtol))
        self.mask = probe.mask(env)
        self.sample_dt = env.dt
        self.ndim = env.ndim

    def rest(self) -> State:
        s = self.solver.initial_state()
        return (*s.velocity, s.pressure, torch.zeros_like(s.pressure))

    def step(self, state: State) -> tuple[State, torch.Tensor]:
        nd = self.ndim
        s = FlowState(tuple(state[:nd]), state[nd])
        # the previous pressure increment is only CG's first guess (implicit gradients do not
        # depend on it); passing it in keeps a checkpointed recomputation identical to the forward
        self.solver._last_increment = state[nd + 1].detach()
        for _ in range(self.sub):
            s = self.solver.step(s)
        guess = self.solver._last_increment.detach()
        return (*s.velocity, s.pressure, guess), Probe.value(s.velocity[1], self.mask)[:, None]

    def snapshot(self, state: State) -> tuple[Velocity, np.ndarray, float]:
        u = tuple(c[:1].detach() for c in state[:self.ndim])
        return u, (self.env.fluid[0, 0] == 0).numpy(), self.env.spacing[0]


class LearnedSimulator:
    """A learned flow model of :mod:`pdeaccel.flow_model` (vanilla or NeuralStagger).

    ``space``/``time`` (NeuralStagger only): simulate ``space`` times coarser in space and ``time``
    times coarser in time with the sub-solvers of
    :meth:`~pdeaccel.stagger.StaggeredFlowSolver.resolution_indices` alone (probe on the coarse
    grid, sampled every ``time·Δt``); (1, 1) is the full resolution. The model's parameters are
    frozen (``requires_grad_(False)``): only the controls get gradients."""

    kind = "learned"

    def __init__(self, model: torch.nn.Module, *, space: int = 1, time: int = 1, name: str = "learned") -> None:
        self.model = model.eval().requires_grad_(False)
        self.space, self.time = int(space), int(time)
        self.name = name
        staggered = hasattr(model, "resolution_indices")
        if (self.space, self.time) != (1, 1):
            if not staggered:
                raise ValueError("only a NeuralStagger (staggered) model simulates at a coarser resolution; "
                                 f"got space={space}, time={time} for a {type(model).__name__}.")
            model.resolution_indices(self.space, self.time)  # validates
        self.dtype = next(model.parameters()).dtype

    def describe(self) -> str:
        extra = f", {self.space}× coarser in space, {self.time}× in time" if (self.space, self.time) != (1, 1) else ""
        return f"{self.name} ({type(self.model).__name__}{extra})"

    def bind(self, env: FlowEnvironment, probe: Probe) -> Bound:
        env = env.to(dtype=self.dtype)
        if (self.space, self.time) == (1, 1):
            return _FullBound(self.model, env, probe)
        return _CoarseBound(self.model, env, probe, self.space, self.time)


class _FullBound(Bound):
    def __init__(self, model, env: FlowEnvironment, probe: Probe) -> None:
        self.model, self.env = model, env
        self.mask = probe.mask(env)
        self.steps_per_call = self.samples_per_call = int(getattr(model, "steps_per_call", 1))
        self.sample_dt = env.dt
        self.keys = tuple(sorted(model.pack(model.initial_state(env))))

    def rest(self) -> State:
        packed = self.model.pack(self.model.initial_state(self.env))
        return tuple(packed[k] for k in self.keys)

    def step(self, state: State) -> tuple[State, torch.Tensor]:
        old = self.model.unpack(dict(zip(self.keys, state)))
        new = self.model(old, self.env)
        fine = self.model.trajectory(old, new)[1:]
        probes = [Probe.value(velocity_from_potential(f.potential, self.env.grid)[1], self.mask) for f in fine]
        packed = self.model.pack(new)
        return tuple(packed[k] for k in self.keys), torch.stack(probes, 1)

    def snapshot(self, state: State) -> tuple[Velocity, np.ndarray, float]:
        latest = self.model.latest(self.model.unpack(dict(zip(self.keys, state))))
        u = velocity_from_potential(latest.potential[:1].detach(), self.env.grid)
        return u, (self.env.fluid[0, 0] == 0).numpy(), self.env.spacing[0]


class _CoarseBound(Bound):
    """A subset of a NeuralStagger model's sub-solvers: a simulation on a coarser lattice."""

    def __init__(self, model, env: FlowEnvironment, probe: Probe, space: int, time: int) -> None:
        self.model, self.env, self.space = model, env, space
        self.indices = tuple(model.resolution_indices(space, time))
        self.views = model.sub_views(env)
        self.grid = model.coarse_grid(env.grid, space)
        self.mask = probe.coarse_mask(env, space, self.grid)
        self.steps_per_call = model.window
        self.samples_per_call = model.window // time
        self.sample_dt = env.dt * time
        self.count = len(self.indices)

    def rest(self) -> State:
        sub = self.model.decompose_state(self.model.initial_state(self.env), self.env, self.indices)
        return tuple(sub.potential) + tuple(sub.pressure)

    def _sub(self, state: State):
        from ..stagger_placement import SubState

        return SubState(self.indices, list(state[:self.count]), list(state[self.count:]))

    def step(self, state: State) -> tuple[State, torch.Tensor]:
        new = self.model.step_subset(self._sub(state), self.views)
        lattice = self.model.lattice_states(new, self.env, self.space)
        probes = [Probe.value(velocity_from_potential(s.potential, self.grid)[1], self.mask) for s in lattice]
        return tuple(new.potential) + tuple(new.pressure), torch.stack(probes, 1)

    def snapshot(self, state: State) -> tuple[Velocity, np.ndarray, float]:
        latest: PotentialState = self.model.lattice_states(self._sub(state), self.env, self.space)[-1]
        u = velocity_from_potential(latest.potential[:1].detach(), self.grid)
        fluid = self.env.fluid[0, 0, ::self.space, ::self.space][:self.grid.shape[0], :self.grid.shape[1]]
        return u, (fluid == 0).numpy(), self.grid.extent[0] / self.grid.shape[0]


# ------------------------------------------------------------------------------ rollouts
def simulate(bound: Bound, state: State, calls: int, *, checkpoint_every: int = 0) -> tuple[State, torch.Tensor]:
    """``calls`` steps of a bound simulator from ``state``; returns the new state and the probe
    samples ``[B, calls·samples_per_call]``. With gradients enabled and ``checkpoint_every = k > 0``
    the steps run in checkpointed chunks of k (activations of a chunk are recomputed during the
    backward pass; the non-reentrant variant, so gradients also reach tensors the simulator
    closes over, i.e. the controlled environment)."""
    if calls < 0:
        raise ValueError(f"calls must be >= 0, got {calls}.")
    probes: list[torch.Tensor] = []

    def chunk(n: int):
        def run(*s: torch.Tensor):
            out = []
            for _ in range(n):
                s, p = bound.step(s)
                out.append(p)
            return (*s, torch.cat(out, 1))
        return run

    done = 0
    use_ckpt = checkpoint_every > 0 and torch.is_grad_enabled()
    while done < calls:
        n = min(checkpoint_every, calls - done) if use_ckpt else calls - done
        if use_ckpt:
            result = checkpoint(chunk(n), *state, use_reentrant=False)
        else:
            result = chunk(n)(*state)
        state, p = tuple(result[:-1]), result[-1]
        probes.append(p)
        done += n
    if not probes:
        ref = state[0]
        return state, torch.zeros((ref.shape[0], 0), dtype=ref.dtype, device=ref.device)
    return state, torch.cat(probes, 1)
