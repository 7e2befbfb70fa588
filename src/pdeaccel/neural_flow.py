"""The physics-constrained neural flow solver (vanilla; Wandel et al., ICLR 2021 and the 3D
follow-up): a U-Net that advances a vector potential and a pressure by one time step in a
:class:`~pdeaccel.physics.flow.FlowEnvironment`, trained without simulation data by the
residuals of :mod:`pdeaccel.losses`.

State: the vector potential ``a`` on MAC grid nodes (2D: one scalar on cell corners; 3D: three
edge components, packed into one ``[B, 3, *node_shape]`` array whose unused entries are zero) and
the cell pressure ``p``. The velocity is the discrete curl of ``a``, so ``∇·u = 0`` holds to
round-off in every cell whatever the network outputs.

Network input (all fields zero-padded to the node shape ``N_d + 1`` per bounded axis): the
normalised potential, pressure and face velocities, the fluid mask, per axis the prescribed-face
mask and the prescribed values on it, and in 3D also μ and ρ as constant fields (they vary per
environment there). Output: increments of ``a`` and ``p``; the new state is bounded,
``a ← A·tanh((a + Δa − mean)/A)``, so a diverging prediction can never produce unbounded or
non-finite values in a training pool (gauge: ``a`` and ``p`` are defined up to constants, which
are removed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .grid import Grid
from .nets import UNet
from .physics.flow import FlowEnvironment
from .stencils import mac_curl, mac_potential_shape

Velocity = tuple[torch.Tensor, ...]


@dataclass
class PotentialState:
    """``potential`` ``[B, P, *node_shape(grid)]`` (P = 1 in 2D, 3 in 3D) and ``pressure`` ``[B, 1, *cells]``."""

    potential: torch.Tensor
    pressure: torch.Tensor

    def detach(self) -> "PotentialState":
        return PotentialState(self.potential.detach(), self.pressure.detach())


def node_shape(grid: Grid) -> tuple[int, ...]:
    """The common array shape of potential, pressure and faces: ``N + 1`` on bounded axes."""
    return tuple(n + (0 if b == "periodic" else 1) for n, b in zip(grid.shape, grid.boundary))


def potential_components(grid: Grid) -> int:
    return 1 if grid.ndim == 2 else 3


def potential_mask(grid: Grid, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``[1, P, *node_shape]``: 1 where a packed potential entry is a real unknown."""
    shape = node_shape(grid)
    P = potential_components(grid)
    mask = torch.zeros((1, P) + shape, dtype=dtype, device=device)
    for c in range(P):
        sub = mac_potential_shape(grid, None if grid.ndim == 2 else c)
        mask[(0, c) + tuple(slice(0, n) for n in sub)] = 1.0
    return mask


def velocity_from_potential(potential: torch.Tensor, grid: Grid) -> Velocity:
    """Face velocities ``u = ∇ × a`` of a packed potential (divergence-free by construction)."""
    if grid.ndim == 2:
        return mac_curl(_crop(potential[:, :1], mac_potential_shape(grid)), grid)
    comps = tuple(_crop(potential[:, c:c + 1], mac_potential_shape(grid, c)) for c in range(3))
    return mac_curl(comps, grid)


def fluid_node_mask(env: FlowEnvironment) -> torch.Tensor:
    """``[B, 1, *node_shape]``: 1 on nodes whose every adjacent cell is fluid. A potential that
    vanishes off these nodes has a curl that is zero on every face touching a non-fluid cell, so
    it changes no prescribed (wall, obstacle, in/outflow) face."""
    grid = env.grid
    fluid = env.fluid.to(torch.float32)
    # pad one solid layer on each bounded axis (space outside the grid is a wall), then a node is
    # fluid when the min over its 2^d neighbouring cells is 1
    pad: list[int] = []
    for a in reversed(range(grid.ndim)):
        pad += [0, 0] if grid.boundary[a] == "periodic" else [1, 1]
    x = F.pad(fluid, pad, value=0.0)
    for a in range(grid.ndim):
        d = a + 2
        if grid.boundary[a] == "periodic":
            x = torch.minimum(x, torch.roll(x, 1, dims=d))
        else:
            n = x.shape[d]
            x = torch.minimum(x.narrow(d, 0, n - 1), x.narrow(d, 1, n - 1))
    return x.to(env.fluid.dtype)


def random_potential_perturbation(env: FlowEnvironment, amplitude: float | torch.Tensor, generator: torch.Generator,
                                  correlation_cells: float = 6.0) -> torch.Tensor:
    """A smooth random potential whose curl is divergence-free, zero on every prescribed face
    and has peak speed ``amplitude`` (per sample): random noise on a grid ``correlation_cells``
    coarser, interpolated to the nodes and masked by :func:`fluid_node_mask`. Added to a
    training pool's states, it widens the states the network learns from beyond the symmetric
    flows a rollout from rest produces, without any simulation data."""
    grid = env.grid
    shape = node_shape(grid)
    B, P = env.batch_size, potential_components(grid)
    coarse = tuple(max(2, math.ceil(n / correlation_cells) + 1) for n in shape)
    noise = torch.randn((B, P) + coarse, generator=generator, dtype=torch.float64)
    mode = "bilinear" if grid.ndim == 2 else "trilinear"
    smooth = F.interpolate(noise, size=shape, mode=mode, align_corners=True).to(env.fluid.dtype)
    delta = smooth * fluid_node_mask(env) * potential_mask(grid, env.fluid.dtype, env.fluid.device)
    speed = torch.stack([c.abs().flatten(1).amax(1) for c in velocity_from_potential(delta, grid)]).amax(0)
    amp = torch.as_tensor(amplitude, dtype=delta.dtype).reshape(-1)
    scale = amp / speed.clamp(min=torch.finfo(delta.dtype).tiny)
    return delta * scale.reshape((-1,) + (1,) * (grid.ndim + 1))


def pad_to_nodes(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Zero-pad a cell or face array at the high end of every axis to :func:`node_shape`."""
    target = node_shape(grid)
    pad: list[int] = []
    for a in reversed(range(grid.ndim)):
        pad += [0, target[a] - x.shape[a + 2]]
    return F.pad(x, pad)


def _crop(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return x[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)]


@dataclass
class FieldView:
    """What one network step reads of an environment, on the grid it runs on: the full grid for
    the vanilla solver, a coarse sub-grid (one offset of a staggered decomposition) for a
    NeuralStagger sub-solver. Masks and prescribed values are face arrays (vanilla) or arrays
    already padded to the node shape of ``grid`` (sub-grids); both are read the same way."""

    grid: Grid
    fluid: torch.Tensor  # [B, 1, *cells]
    face_mask: tuple[torch.Tensor, ...]
    face_velocity: tuple[torch.Tensor, ...]
    mu: torch.Tensor  # [B]
    rho: torch.Tensor  # [B]
    potential_mask: torch.Tensor  # [1 or B, P, *nodes]: 1 where a packed potential entry is an unknown
    # optional gauge (:func:`wall_potential`): where ``anchor_mask`` is 1 the new potential is set to
    # ``anchor_value`` ([1 or B, P, *nodes] each); None: no anchored nodes
    anchor_mask: torch.Tensor | None = None
    anchor_value: torch.Tensor | None = None

    @staticmethod
    def of(env: FlowEnvironment) -> "FieldView":
        return FieldView(env.grid, env.fluid, tuple(env.face_mask), tuple(env.face_velocity), env.mu, env.rho,
                         potential_mask(env.grid, env.fluid.dtype, env.fluid.device))


def encode_fields(potential: torch.Tensor, pressure: torch.Tensor, view: FieldView, scales: dict[str, float],
                  ndim: int) -> torch.Tensor:
    """The network's input channels (see the module docstring), on ``view.grid``."""
    grid = view.grid
    dtype = potential.dtype
    u = velocity_from_potential(potential, grid)
    fields = [potential / scales["potential"], pad_to_nodes(pressure / scales["pressure"], grid)]
    fields += [pad_to_nodes(ud / scales["velocity"], grid) for ud in u]
    fields.append(pad_to_nodes(view.fluid.to(dtype), grid))
    for m, U in zip(view.face_mask, view.face_velocity):
        m = m.to(dtype)
        fields += [pad_to_nodes(m, grid), pad_to_nodes(m * U.to(dtype) / scales["velocity"], grid)]
    if ndim == 3:
        ones = torch.ones_like(fields[1][:, :1])
        shape = (-1,) + (1,) * (grid.ndim + 1)
        fields += [ones * view.mu.to(dtype).reshape(shape), ones * view.rho.to(dtype).reshape(shape)]
    return torch.cat(fields, dim=1)


def advance_fields(potential: torch.Tensor, pressure: torch.Tensor, out: torch.Tensor, view: FieldView,
                   scales: dict[str, float], bounds: dict[str, float], remove_mean: bool,
                   remove_pressure_mean: bool = True) -> PotentialState:
    """The new state from the network's increments ``out`` (``[B, P + 1, *nodes]``): masked,
    gauge-fixed (the potential's mean removed with ``remove_mean``, the pressure's fluid mean with
    ``remove_pressure_mean``) and tanh-bounded."""
    grid = view.grid
    P = potential.shape[1]
    mask = view.potential_mask.to(out.dtype)
    A, Pb = bounds["potential"], bounds["pressure"]
    a = (potential + scales["potential"] * out[:, :P]) * mask
    if remove_mean:
        a = a - (a.flatten(2).sum(2) / mask.flatten(2).sum(2)).reshape(a.shape[:2] + (1,) * grid.ndim) * mask
    a = A * torch.tanh(a / A) * mask
    fluid = view.fluid.to(out.dtype)
    cells = tuple(slice(0, n) for n in grid.shape)
    p = (pressure + scales["pressure"] * out[(slice(None), slice(P, P + 1)) + cells]) * fluid
    if remove_pressure_mean:
        count = fluid.flatten(1).sum(1).clamp(min=1.0).reshape((-1,) + (1,) * (grid.ndim + 1))
        p = (p - p.flatten(1).sum(1).reshape(count.shape) / count) * fluid
    p = Pb * torch.tanh(p / Pb)
    if view.anchor_mask is not None:
        m = view.anchor_mask.to(a.dtype)
        a = a * (1.0 - m) + view.anchor_value.to(a.dtype) * m
    return PotentialState(a, p)


def wall_potential(env: FlowEnvironment) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2D stream function's values on a channel's outer walls, fixed by the inflow alone.

    Returns ``(mask, value)``, both ``[B, 1, *nodes]``: ``mask`` is 1 on every node that touches a
    non-fluid, non-outflow cell of the obstacle-free domain (``env.background``: the channel's frame
    — no-slip walls and the inflow column), and ``value`` there is ``a = h·Σ u_x`` summed up the
    inflow column's prescribed face velocities from the low-y wall (``a = 0`` on the low wall, the
    volume flux on the high wall, the inflow profile's integral along the inflow column). On these
    nodes every incident face is prescribed, so these are the values of *any* potential that meets
    the boundary conditions, up to one global constant, which this fixes (the gauge).

    Why (NeuralStagger): a staggered sub-solver sees only its own sub-field, so it cannot see the
    other sub-fields' levels; the velocity on a fine face between two sub-fields is the difference
    of their levels. Pinning every sub-field to the same wall values from the environment makes the
    walls' no-slip and no-penetration hold between sub-fields by construction.
    """
    if env.ndim != 2:
        raise ValueError("wall_potential is defined for 2D environments (a scalar stream function); "
                         "3D staggered models use model.gauge=free.")
    fluid = (env.background[0] if env.background is not None else env.fluid).to(env.fluid.dtype)
    B = env.batch_size
    fluid = fluid.expand((B,) + tuple(fluid.shape[1:]))
    outflow = env.outflow if env.outflow is not None else torch.zeros_like(fluid)
    frame = ((fluid == 0) & (outflow.expand_as(fluid) == 0)).to(fluid.dtype)
    # a node touches the (up to) four cells around it
    padded = torch.nn.functional.pad(frame, (1, 1, 1, 1))
    touch = torch.nn.functional.max_pool2d(padded, kernel_size=2, stride=1)
    return touch, inflow_potential(env) * touch


def inflow_potential(env: FlowEnvironment) -> torch.Tensor:
    """``[B, 1, *nodes]``: the 2D stream function of the inflow profile carried unchanged down the
    channel, ``a(x, y) = h·Σ_{y' < y} u_x(0, y')`` (obstacles ignored). It meets the walls' and the
    inflow's conditions (:func:`wall_potential`), so it is the start of a staggered rollout under
    the walls gauge, where the fluid at rest is not representable (the walls carry the flux)."""
    faces = env.background[1] if env.background is not None else tuple(env.face_velocity)
    ux = faces[0].to(env.fluid.dtype).expand((env.batch_size, 1) + tuple(faces[0].shape[2:]))
    carried = ux[:, :, :1, :].expand_as(ux)  # the outer inflow face of every cell row, down the channel
    return potential_of((carried, None), env)


def potential_of(velocity: Velocity, env: FlowEnvironment) -> torch.Tensor:
    """A 2D potential whose curl is ``velocity`` (divergence-free, with zero normal flux through
    the low-y boundary): ``a = Σ_y u_x·h`` up each grid column (only ``u_x`` is read)."""
    if env.ndim != 2:
        raise ValueError("potential_of is implemented for 2D velocities.")
    ux = velocity[0]
    a = torch.zeros((ux.shape[0], 1) + node_shape(env.grid), dtype=ux.dtype, device=ux.device)
    a[:, :, :, 1:] = env.spacing[1] * torch.cumsum(ux, dim=3)
    return a


def check_state(state: PotentialState, env: FlowEnvironment, P: int) -> None:
    expected = (env.batch_size, P) + node_shape(env.grid)
    if tuple(state.potential.shape) != expected:
        raise ValueError(f"state.potential must have shape {list(expected)}, got {list(state.potential.shape)}.")
    if tuple(state.pressure.shape) != tuple(env.fluid.shape):
        raise ValueError(f"state.pressure must have shape {list(env.fluid.shape)}, got {list(state.pressure.shape)}.")


def scales_and_bounds(ndim: int, **values: float) -> tuple[dict[str, float], dict[str, float]]:
    """Check a flow network's dimension and its ``velocity_scale``, ``potential_scale``,
    ``pressure_scale``, ``potential_bound`` and ``pressure_bound``; return them as the
    ``scales`` and ``bounds`` mappings the encoder and the update read."""
    if ndim not in (2, 3):
        raise ValueError(f"the neural flow solver is 2D or 3D, got ndim={ndim!r}.")
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and value > 0 and value < float("inf")):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return ({k: float(values[f"{k}_scale"]) for k in ("velocity", "potential", "pressure")},
            {k: float(values[f"{k}_bound"]) for k in ("potential", "pressure")})


def input_channels(ndim: int) -> int:
    """Potential, pressure, velocity per axis, fluid, mask and value per axis (+ μ, ρ in 3D)."""
    P = 1 if ndim == 2 else 3
    return P + 1 + ndim + 1 + 2 * ndim + (2 if ndim == 3 else 0)


class NeuralFlowSolver(nn.Module):
    """``(state, env) -> next state``: one time step ``env.dt`` of incompressible flow.

    Args:
        ndim: 2 or 3.
        hidden, levels, kernel_size: the U-Net (Wandel et al.: hidden 20, 4 levels, ≈1.7M
            parameters in 2D).
        velocity_scale: typical speed (inputs are divided by it).
        potential_scale, pressure_scale: typical sizes of ``a`` and ``p`` (inputs are divided
            by them; outputs are increments in these units).
        potential_bound, pressure_bound: the tanh bounds ``A``, ``P_max`` of the state.
        mirror: (2D) make the step exactly equivariant under the reflection y → H − y: the step is
            the mean of the network's step and the mirrored network step on the mirrored state and
            environment (group averaging over the reflection; both run as one batch). The
            numerical reference is equivariant, so a symmetric wake stays symmetric until the
            geometry's own asymmetry grows; a plain U-Net is not, and its own asymmetry starts the
            shedding about 300 time units early on the held-out cylinder (benchmarks/results/flow.md).

    It implements the flow-model interface (:class:`pdeaccel.flow_model.FlowModel`): one call
    advances one time step, and a pool stores its state as ``potential`` and ``pressure``.
    """

    steps_per_call = 1

    def __init__(self, ndim: int, hidden: int = 20, levels: int = 4, kernel_size: int = 3, *,
                 velocity_scale: float = 1.0, potential_scale: float = 10.0, pressure_scale: float = 1.0,
                 potential_bound: float = 1000.0, pressure_bound: float = 100.0, mirror: bool = False) -> None:
        super().__init__()
        if mirror and ndim != 2:
            raise ValueError(f"mirror=True (reflection-equivariant step) is implemented in 2D only; this solver is "
                             f"{ndim}D: leave model.mirror at false.")
        self.mirror = bool(mirror)
        self.scales, self.bounds = scales_and_bounds(
            ndim, velocity_scale=velocity_scale, potential_scale=potential_scale, pressure_scale=pressure_scale,
            potential_bound=potential_bound, pressure_bound=pressure_bound)
        self.ndim = ndim
        self.P = 1 if ndim == 2 else 3
        self.in_channels = input_channels(ndim)
        self.net = UNet(ndim, self.in_channels, self.P + 1, hidden=hidden, levels=levels,
                        kernel_size=kernel_size, padding_mode="zeros")

    def config(self) -> dict:
        return {"ndim": self.ndim, **{f"{k}_scale": v for k, v in self.scales.items()},
                **{f"{k}_bound": v for k, v in self.bounds.items()}}

    def initial_state(self, env: FlowEnvironment) -> PotentialState:
        """The fluid at rest: ``a = p = 0``."""
        B = env.batch_size
        dtype = next(self.parameters()).dtype
        shape = node_shape(env.grid)
        return PotentialState(torch.zeros((B, self.P) + shape, dtype=dtype, device=env.fluid.device),
                              torch.zeros((B, 1) + env.grid.shape, dtype=dtype, device=env.fluid.device))

    def velocity(self, state: PotentialState, env: FlowEnvironment) -> Velocity:
        return velocity_from_potential(state.potential, env.grid)

    def latest(self, state: PotentialState) -> PotentialState:
        """The newest full-resolution state (the state itself: it holds one)."""
        return state

    def trajectory(self, old: PotentialState, new: PotentialState) -> list[PotentialState]:
        """Consecutive full-resolution states from the newest of ``old`` to the newest of ``new``."""
        return [old, new]

    def from_trajectory(self, states: list[PotentialState]) -> PotentialState:
        """The model state whose newest full-resolution state is ``states[-1]``."""
        return states[-1]

    def pack(self, state: PotentialState) -> dict[str, torch.Tensor]:
        return {"potential": state.potential, "pressure": state.pressure}

    def unpack(self, tensors: dict[str, torch.Tensor]) -> PotentialState:
        return PotentialState(tensors["potential"], tensors["pressure"])

    def encode(self, state: PotentialState, env: FlowEnvironment) -> torch.Tensor:
        """The network's input channels (see the module docstring)."""
        if env.ndim != self.ndim:
            raise ValueError(f"this solver is {self.ndim}D, the environment is {env.ndim}D.")
        return encode_fields(state.potential, state.pressure, FieldView.of(env), self.scales, self.ndim)

    def forward(self, state: PotentialState, env: FlowEnvironment) -> PotentialState:
        check_state(state, env, self.P)
        view = FieldView.of(env)
        if not self.mirror:
            out = self.net(self.encode(state, env))
            return advance_fields(state.potential, state.pressure, out, view, self.scales, self.bounds,
                                  remove_mean=True)
        if env.ndim != 2:
            raise ValueError("a mirror-equivariant solver steps 2D environments only.")
        m_state, m_view = mirror_state(state), mirror_view(view)
        x = torch.cat([self.encode(state, env),
                       encode_fields(m_state.potential, m_state.pressure, m_view, self.scales, self.ndim)])
        out, m_out = self.net(x).chunk(2)
        new = advance_fields(state.potential, state.pressure, out, view, self.scales, self.bounds, remove_mean=True)
        back = mirror_state(advance_fields(m_state.potential, m_state.pressure, m_out, m_view, self.scales,
                                           self.bounds, remove_mean=True))
        # the mean of two bounded, masked, mean-free states is one too
        return PotentialState(0.5 * (new.potential + back.potential), 0.5 * (new.pressure + back.pressure))


def _flip_y(t: torch.Tensor) -> torch.Tensor:
    # every array is stored at its own size along y (cells ny, nodes and y-faces ny + 1), so one
    # flip maps cell j to ny − 1 − j and node j to ny − j: the same reflection y → H − y for both
    return torch.flip(t, dims=[-1])


def mirror_state(state: PotentialState) -> PotentialState:
    """The 2D state reflected in y → H − y: the stream function is odd (u even, v odd), the
    pressure even."""
    return PotentialState(-_flip_y(state.potential), _flip_y(state.pressure))


def mirror_view(view: FieldView) -> FieldView:
    """The 2D environment reflected in y → H − y (prescribed v changes sign)."""
    fm, fv = view.face_mask, view.face_velocity
    return FieldView(view.grid, _flip_y(view.fluid), (_flip_y(fm[0]), _flip_y(fm[1])),
                     (_flip_y(fv[0]), -_flip_y(fv[1])), view.mu, view.rho, _flip_y(view.potential_mask))
