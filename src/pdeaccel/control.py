"""Optimal flow control through differentiable flow simulators (Wandel et al. 2021's demonstration,
reused by NeuralStagger): steer the vortex-shedding frequency behind an obstacle with a boundary
control (the inflow speed, a cylinder's rotation) by back-propagating through a window of time
steps of a learned solver or of the numerical one.

The pieces, independent of any named problem (those live in :mod:`pdeaccel.experiments.control`):

* :func:`spectral_frequency` — a differentiable estimate of a signal's dominant frequency: the
  centroid of its power spectrum in a band around the spectral peak (see there).
* :class:`ControlledEnvironment` — a :class:`~pdeaccel.physics.flow.FlowEnvironment`
  whose prescribed face velocities are an affine function of named scalar controls, so the
  environment (and everything a simulator derives from it) is differentiable in them.
* Simulators with one interface (``bind(env, probe)`` → a stepper with ``rest()``, ``step(state)``,
  ``sample_dt``): :class:`NumericalSimulator` (the differentiable
  :class:`~pdeaccel.physics.incompressible.MACFlowSolver`; its pressure solves go through
  :func:`pdeaccel.linalg.solve` with implicit gradients, so back-propagation costs one adjoint solve
  per solve whatever the iteration count) and :class:`LearnedSimulator` (any flow model of
  :mod:`pdeaccel.flow_model`; a NeuralStagger model also at a coarser resolution it offers, through
  a subset of its sub-solvers).
* :func:`simulate` — a rollout that records the probe, with gradient checkpointing over chunks of
  steps (:func:`torch.utils.checkpoint.checkpoint`), so the memory of back-propagation through a
  window of W steps is that of one chunk plus W/chunk states.
* :func:`optimise` — Adam on the controls, minimising ``(f − f_target)²``; every iteration runs the
  warm-up from rest without gradient and then the window with gradient, so the objective is a
  fixed function of the controls (the dependence of the window's first state on the controls is
  not differentiated, as in the paper's setup).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from .linalg import SolverConfig
from .neural_flow import PotentialState, velocity_from_potential
from .physics.flow import FlowEnvironment
from .physics.incompressible import FlowState, MACFlowSolver
from .stencils import mac_face_shape

Velocity = tuple[torch.Tensor, ...]
State = tuple[torch.Tensor, ...]


# ------------------------------------------------------------------------------ frequency estimate
def power_spectrum(signal: torch.Tensor, dt: float, pad: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``(frequencies, power)`` of ``signal`` (``[..., N]``): mean removed, Hann-windowed and
    zero-padded to ``pad·N`` samples (a finer frequency grid, no finer resolution)."""
    if signal.shape[-1] < 4:
        raise ValueError(f"a spectrum needs at least 4 samples, got {signal.shape[-1]}.")
    if not (isinstance(pad, int) and pad >= 1):
        raise ValueError(f"pad must be an integer >= 1, got {pad!r}.")
    n = signal.shape[-1]
    x = signal - signal.mean(dim=-1, keepdim=True)
    window = torch.hann_window(n, periodic=False, dtype=signal.dtype, device=signal.device)
    spec = torch.fft.rfft(x * window, n=pad * n)
    power = spec.real ** 2 + spec.imag ** 2
    freqs = torch.fft.rfftfreq(pad * n, d=dt, dtype=signal.dtype, device=signal.device)
    return freqs, power


def spectral_frequency(signal: torch.Tensor, dt: float, *, pad: int = 8, band: float = 2.0,
                       min_frequency: float = 0.0) -> torch.Tensor:
    """Differentiable dominant frequency of ``signal`` (``[..., N]``, sampled every ``dt``).

    The centroid ``Σ f·P(f) / Σ P(f)`` of the power spectrum of :func:`power_spectrum` (mean
    removed, Hann window, zero-padded ``pad``×) over the band ``|f − f_peak| ≤ band/(N·dt)``
    around its peak ``f_peak`` (above ``min_frequency``, and never the zero frequency). With the
    default ``band = 2`` the band is the Hann window's main lobe, so for a sinusoid the band holds
    the whole peak and the centroid is its centre — between the bins, unlike the arg-max — while
    harmonics, the mean and slow drifts outside the band do not pull it. The peak's position is
    chosen without gradient; inside the band the estimate is a smooth function of the signal
    (a shifted sinusoid moves its peak, and the centroid with it: ``∂f̂/∂f ≈ 1``). Its bias for a
    clean sinusoid is below the resolution ``1/(N·dt)`` (tested), and it comes from the tail of
    the mirror peak at ``−f`` when fewer than about three periods fit in the signal.
    """
    if not (band > 0):
        raise ValueError(f"band must be positive (in units of 1/(N·dt)), got {band!r}.")
    n = signal.shape[-1]
    freqs, power = power_spectrum(signal, dt, pad)
    allowed = (freqs > max(min_frequency, 0.0)).to(power.dtype)
    k = torch.argmax(power.detach() * allowed, dim=-1, keepdim=True)
    f_peak = freqs[k]  # [..., 1]
    in_band = ((freqs - f_peak).abs() <= band / (n * dt)).to(power.dtype) * allowed
    weight = power * in_band
    total = weight.sum(-1)
    return (weight * freqs).sum(-1) / total.clamp(min=torch.finfo(power.dtype).tiny)


def peak_share(signal: torch.Tensor, dt: float, *, pad: int = 8, band: float = 2.0) -> float:
    """The fraction of the (windowed) signal's spectral power within the band around its peak:
    near 1 for a clean oscillation, small for noise or a drift."""
    freqs, power = power_spectrum(signal.detach().reshape(-1, signal.shape[-1])[:1], dt, pad)
    power = power[0]
    power[0] = 0.0
    k = int(torch.argmax(power))
    n = signal.shape[-1]
    in_band = (freqs - freqs[k]).abs() <= band / (n * dt)
    return float(power[in_band].sum() / power.sum().clamp(min=1e-300))


# ------------------------------------------------------------------------------ controlled environment
class ControlledEnvironment:
    """``env(θ)``: an environment whose prescribed face velocities are affine in named controls,
    ``face_velocity(θ) = offset + Σ_k θ_k · basis_k``, everything else (masks, μ, ρ, Δt) fixed.

    Build it with :meth:`from_builder` from any function that makes the environment of given
    control values (e.g. a channel's inflow speed, a cylinder's angular velocity): the basis is
    read off by differences, and the builder is checked to be affine in each control.
    ``bounds`` (per control, ``(lo, hi)``) are the values the optimiser may use.
    """

    def __init__(self, base: FlowEnvironment, offset: Sequence[torch.Tensor], basis: Mapping[str, Sequence[torch.Tensor]],
                 reference: Mapping[str, float], bounds: Mapping[str, tuple[float, float]] | None = None) -> None:
        if not basis:
            raise ValueError("a controlled environment needs at least one control.")
        self.base = base
        self.offset = tuple(offset)
        self.basis = {k: tuple(v) for k, v in basis.items()}
        self.names = tuple(self.basis)
        self.reference = {k: float(reference[k]) for k in self.names}
        self.bounds = {k: tuple(float(b) for b in (bounds or {}).get(k, (-math.inf, math.inf))) for k in self.names}
        for k, (lo, hi) in self.bounds.items():
            if not lo < hi:
                raise ValueError(f"control {k!r}: bounds must be (lo, hi) with lo < hi, got {(lo, hi)}.")

    @classmethod
    def from_builder(cls, build: Callable[[Mapping[str, float]], FlowEnvironment], reference: Mapping[str, float],
                     bounds: Mapping[str, tuple[float, float]] | None = None) -> "ControlledEnvironment":
        """``build(values)`` → the environment of those control values; ``reference``: values at
        which it is read off (and the default starting point)."""
        ref = {k: float(v) for k, v in reference.items()}
        base = build(ref)
        f0 = base.face_velocity
        basis, offset = {}, [f.clone() for f in f0]
        for k in ref:
            unit = max(1.0, abs(ref[k]))
            one = build({**ref, k: ref[k] + unit}).face_velocity
            two = build({**ref, k: ref[k] + 2 * unit}).face_velocity
            b = tuple((a - c) / unit for a, c in zip(one, f0))
            # affine: the second difference vanishes
            for d, (x0, x1, x2) in enumerate(zip(f0, one, two)):
                err = float((x2 - 2 * x1 + x0).abs().max())
                scale = max(float(x1.abs().max()), float(x0.abs().max()), 1e-30)
                if err > 1e-5 * scale:
                    raise ValueError(f"the environment's face velocities are not affine in control {k!r} "
                                     f"(second difference {err:.3g} on axis {d}).")
            basis[k] = b
            offset = [o - ref[k] * bd for o, bd in zip(offset, b)]
        return cls(base, offset, basis, ref, bounds)

    def face_velocity(self, controls: Mapping[str, torch.Tensor | float]) -> Velocity:
        out = []
        for d, off in enumerate(self.offset):
            v = off
            for k in self.names:
                c = controls[k]
                c = c.to(off.dtype) if isinstance(c, torch.Tensor) else float(c)
                v = v + c * self.basis[k][d]
            out.append(v)
        return tuple(out)

    def __call__(self, controls: Mapping[str, torch.Tensor | float]) -> FlowEnvironment:
        missing = [k for k in self.names if k not in controls]
        if missing:
            raise ValueError(f"missing control value(s) {', '.join(missing)}; controls: {', '.join(self.names)}.")
        return self.base.replace(face_velocity=self.face_velocity(controls))


# ------------------------------------------------------------------------------ probes
@dataclass(frozen=True)
class Probe:
    """The observable: the mean cross-stream (y) velocity over the y-faces whose centres lie
    strictly inside the rectangle ``x0 < x < x1``, ``y0 < y < y1`` (physical coordinates) and are
    free (between two fluid cells) — the probe of :func:`pdeaccel.experiments.flow_eval.probe_window`."""

    x0: float
    x1: float
    y0: float
    y1: float

    def mask(self, env: FlowEnvironment) -> torch.Tensor:
        """``[B, 1, *y-face shape]`` on the environment's own grid."""
        x, y = env.face_coordinates(1)[:2]
        inside = (x > self.x0) & (x < self.x1) & (y > self.y0) & (y < self.y1)
        return inside.to(env.fluid.dtype) * env.face_free[1]

    def coarse_mask(self, env: FlowEnvironment, space: int, grid) -> torch.Tensor:
        """The same window on a grid ``space`` times coarser (cells ``space·i`` of the fine one;
        the same origin): a coarse y-face is free when both its coarse cells are fluid."""
        hc = [L / n for n, L in zip(grid.shape, grid.extent)]
        shape = mac_face_shape(grid, 1)
        xs = (torch.arange(shape[0], dtype=env.fluid.dtype) + 0.5) * hc[0] - env.origin[0]
        ys = torch.arange(shape[1], dtype=env.fluid.dtype) * hc[1] - env.origin[1]
        x, y = torch.meshgrid(xs, ys, indexing="ij")
        inside = (x > self.x0) & (x < self.x1) & (y > self.y0) & (y < self.y1)
        fluid = env.fluid[:, :, ::space, ::space][:, :, :grid.shape[0], :grid.shape[1]]
        lo = torch.nn.functional.pad(fluid, (1, 0))  # cell j−1 (outside the grid: solid)
        hi = torch.nn.functional.pad(fluid, (0, 1))  # cell j
        free = lo * hi
        return inside.to(env.fluid.dtype) * free

    @staticmethod
    def value(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B]``: the mean of ``v`` over the mask."""
        return (v * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1.0)


# ------------------------------------------------------------------------------ simulators
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
        if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
            raise ValueError(f"substeps must be a positive integer, got {substeps!r}.")
        self.substeps = substeps
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
        from .stagger import SubState

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


# ------------------------------------------------------------------------------ optimisation
@dataclass
class ControlSettings:
    """``warmup``: fine steps from rest without gradient; ``window``: fine steps back-propagated
    through (their probe samples make the signal); ``iterations``: the most Adam steps;
    ``tolerance``: stop once ``|f − f_target| ≤ tolerance·f_target`` (0: never early);
    ``checkpoint_every``: simulator calls per checkpointed chunk (0: no checkpointing);
    ``pad``/``band``: of :func:`spectral_frequency`; ``cross_decay``: the learning rate is
    multiplied by it whenever the frequency crosses the target (the gradient changes sign), so
    Adam, whose step is about ``lr`` whatever the gradient's size, closes in on the target like a
    bisection instead of circling it (1: a constant learning rate)."""

    warmup: int = 200
    window: int = 200
    iterations: int = 8
    lr: float = 0.15
    betas: tuple[float, float] = (0.0, 0.9)
    tolerance: float = 0.02
    checkpoint_every: int = 10
    pad: int = 8
    band: float = 2.0
    cross_decay: float = 0.5

    def __post_init__(self) -> None:
        for key in ("warmup", "window", "iterations", "checkpoint_every", "pad"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key in ("window", "pad") else 0):
                raise ValueError(f"{key} must be an integer >= {1 if key in ('window', 'pad') else 0}, got {v!r}.")
        if not (self.lr > 0 and self.band > 0 and self.tolerance >= 0 and 0 < self.cross_decay <= 1):
            raise ValueError("lr and band must be positive, tolerance non-negative and cross_decay in (0, 1].")


@dataclass
class Evaluation:
    """One rollout at fixed controls: the frequency estimate (a tensor, with its graph when
    evaluated with gradient), the window's probe signal, the last state and timings."""

    frequency: torch.Tensor
    signal: np.ndarray
    sample_dt: float
    state: State
    bound: Bound
    warmup_seconds: float
    window_seconds: float
    share: float


def evaluate(simulator, cenv: ControlledEnvironment, controls: Mapping[str, torch.Tensor | float], probe: Probe,
             settings: ControlSettings, *, grad: bool = False) -> Evaluation:
    """Warm-up from rest (no gradient), then the window (with gradient if ``grad``, checkpointed)."""
    t0 = time.perf_counter()
    with torch.set_grad_enabled(grad):
        bound = simulator.bind(cenv(controls), probe)
    state = bound.rest()
    with torch.no_grad():
        state, _ = simulate(bound, state, math.ceil(settings.warmup / bound.steps_per_call))
    state = tuple(s.detach() for s in state)
    t1 = time.perf_counter()
    with torch.set_grad_enabled(grad):
        calls = math.ceil(settings.window / bound.steps_per_call)
        state, probes = simulate(bound, state, calls, checkpoint_every=settings.checkpoint_every if grad else 0)
        signal = probes[0, :math.ceil(settings.window / bound.steps_per_call) * bound.samples_per_call]
        f = spectral_frequency(signal.to(torch.float64), bound.sample_dt, pad=settings.pad, band=settings.band)
    t2 = time.perf_counter()
    return Evaluation(f, signal.detach().double().numpy().copy(), bound.sample_dt, state, bound, t1 - t0, t2 - t1,
                      peak_share(signal.double(), bound.sample_dt, pad=settings.pad, band=settings.band))


@dataclass
class ControlRun:
    """What :func:`optimise` did: per iteration the controls, the frequency, the objective, the
    gradient and the seconds (forward + backward and in total); the best controls (smallest
    |f − f_target| seen); the first and the last window's signals."""

    target: float
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    best_frequency: float = math.nan
    first_signal: np.ndarray | None = None
    last_signal: np.ndarray | None = None
    sample_dt: float = 1.0
    converged: bool = False
    stop_reason: str = "iterations"
    seconds: float = 0.0
    best_evaluation: "Evaluation | None" = None


def optimise(simulator, cenv: ControlledEnvironment, initial: Mapping[str, float], target: float, probe: Probe,
             settings: ControlSettings, *, controls: Sequence[str] | None = None,
             callback: Callable[[dict[str, Any]], None] | None = None) -> ControlRun:
    """Adam on ``controls`` (default all of ``cenv.names``; the others stay at ``initial``) to bring
    the shedding frequency to ``target``: minimise ``(f − f_target)²``. Adam normalises the
    gradient's scale, so the step is about ``lr`` in the controls' own units; the learning rate is
    multiplied by ``settings.cross_decay`` each time the frequency crosses the target; after each
    step the controls are clipped to ``cenv.bounds``. Stops at ``settings.iterations`` objective
    evaluations, as soon as one is within ``settings.tolerance`` of the target, or when every
    control sits on a bound that the gradient pushes it beyond (``run.stop_reason``). The best
    evaluation (closest to the target) is kept in ``run.best_evaluation`` (detached)."""
    if not (target > 0 and math.isfinite(target)):
        raise ValueError(f"the target frequency must be a positive number, got {target!r}.")
    active = tuple(controls) if controls is not None else cenv.names
    unknown = [k for k in active if k not in cenv.names]
    if unknown:
        raise ValueError(f"unknown control(s) {', '.join(unknown)}; this problem has {', '.join(cenv.names)}.")
    params = {k: torch.tensor(float(initial[k]), dtype=torch.float64, requires_grad=k in active) for k in cenv.names}
    opt = torch.optim.Adam([params[k] for k in active], lr=settings.lr, betas=settings.betas)
    run = ControlRun(target=float(target))
    start = time.perf_counter()
    best_err = math.inf
    above: bool | None = None  # whether the last frequency was above the target
    for it in range(max(settings.iterations, 1)):
        t0 = time.perf_counter()
        opt.zero_grad()
        ev = evaluate(simulator, cenv, params, probe, settings, grad=True)
        f = ev.frequency
        loss = (f - target) ** 2
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        fv = float(f.detach())
        values = {k: float(params[k].detach()) for k in cenv.names}
        grads = {k: float(params[k].grad) if params[k].grad is not None else 0.0 for k in active}
        err = abs(fv - target)
        if math.isfinite(fv) and err < best_err:
            best_err, run.best, run.best_frequency = err, dict(values), fv
            ev.frequency = ev.frequency.detach()
            ev.state = tuple(x.detach() for x in ev.state)
            run.best_evaluation = ev
        if run.first_signal is None:
            run.first_signal = ev.signal
        run.last_signal, run.sample_dt = ev.signal, ev.sample_dt
        done = err <= settings.tolerance * target
        stuck = not done and all((values[k] <= cenv.bounds[k][0] and grads[k] > 0)
                                 or (values[k] >= cenv.bounds[k][1] and grads[k] < 0) for k in active)
        if above is not None and (fv > target) != above:
            for group in opt.param_groups:
                group["lr"] *= settings.cross_decay
        above = fv > target
        if not done and not stuck and it < settings.iterations - 1:
            opt.step()
            with torch.no_grad():
                for k in active:
                    lo, hi = cenv.bounds[k]
                    params[k].clamp_(lo, hi)
        t3 = time.perf_counter()
        row = {"iteration": it, **{f"control.{k}": v for k, v in values.items()}, "frequency": fv,
               "lr": opt.param_groups[0]["lr"],
               "loss": float(loss.detach()), **{f"grad.{k}": g for k, g in grads.items()},
               "df_dcontrol": (grads[active[0]] / (2 * (fv - target))) if fv != target else math.nan,
               "peak_share": ev.share, "warmup_seconds": ev.warmup_seconds,
               "window_forward_seconds": ev.window_seconds, "backward_seconds": t2 - t1,
               "gradient_seconds": ev.window_seconds + (t2 - t1), "seconds": t3 - t0}
        run.history.append(row)
        if callback is not None:
            callback(row)
        if done:
            run.converged, run.stop_reason = True, "converged"
            break
        if stuck:
            run.stop_reason = "at a bound"  # the target lies beyond it as far as the gradient says
            break
    run.seconds = time.perf_counter() - start
    return run
