"""NeuralStagger (Huang et al., ICML 2023): a physics-constrained neural flow solver split in space
(stride s per axis) and time (stride T) into s^d·T coarse sub-solvers, trained jointly with the
vanilla full-resolution physics loss.

State: a *window* of T consecutive full-resolution states ``u_t … u_{t+T-1}``
(:class:`WindowState`, potential ``[B, T, P, *nodes]`` and pressure ``[B, T, 1, *cells]``).
Sub-solver ``(o, k)`` maps ``D_o(u_{t+k})`` and the environment sub-sampled at offset ``o`` to
``D_o(u_{t+k+T})`` (:mod:`pdeaccel.decompose`); one call of all of them advances T fine steps.
Each sub-solver reads only its own sub-field, so the s^d·T chains are independent at inference:
any subset of them is a simulation at the corresponding resolution (one alone: s times coarser
in space, T in time), and all together, reassembled, the full resolution.

What is ours (*design*; the paper's text and code are not public):
- A sub-solver's input is the vanilla solver's input channels computed on its sub-grid: its
  sub-field of the potential and pressure, the velocity as the discrete curl of that potential
  on the grid s times coarser (spacing s·h), and the sub-sampled fluid mask, prescribed-face
  masks and values (and μ, ρ in 3D). With s = 1 this is exactly the vanilla input.
- Node arrays (N + 1 long) and cell arrays (N) are zero-padded at the high end so that every
  sub-field has ``ceil(N/s)`` cells and one more node (:func:`~pdeaccel.decompose.staggered_shapes`);
  padded entries are masked out of the state and cropped after reassembly.
- Gauge: the vanilla solver removes the mean of the potential and pressure after each step. A
  sub-solver can only see its own sub-field, and the velocity on a fine face between two
  sub-fields is the difference of their levels. Forcing every sub-field's *potential* mean to
  zero would fix those offsets arbitrarily (neighbouring sub-fields' means differ by about the
  mean flow), so the potential's mean is removed only when a sub-field is the whole field
  (s = 1). For s > 1 in 2D (``gauge="walls"``, the default) every sub-field's potential is pinned
  on the channel's outer walls and inflow column to the values the inflow alone fixes there
  (:func:`~pdeaccel.neural_flow.wall_potential`: 0 on the low wall, the volume flux on the high
  one): an environment property every sub-solver is given, so the sub-solvers stay independent,
  and the walls' no-slip and no-penetration hold between sub-fields by construction. Without it
  (``gauge="free"``, the first design, and 3D, where the vector potential's gauge is not one
  constant) the tanh bound keeps the levels bounded and only the loss ties neighbouring
  sub-fields together; each sub-field's wall level then drifts on its own, which is what made the
  first staggered models striped (benchmarks/results/stagger.md). The *pressure*'s mean is removed per
  sub-field: neighbouring sub-fields' pressure means differ only by the mean pressure gradient
  times one cell (about 1e-3 of ρU² in the cpu channel), and without it each sub-field's level
  drifts on its own into a checkerboard of pressure gradients.
- Within one window the environment is the one at the window's start (moving obstacles advance
  T steps per call).
- The first window is T copies of the fluid at rest (s = 1 or the free gauge), or under the walls
  gauge, where rest is not representable, T copies of the inflow profile carried down the channel.
- Sub-solvers with s > 1 start from a zero output layer (no change predicted), so training does
  not start from the stripes of each untrained network's different constant output.
- Weights: separate per sub-solver (default), or one shared network with the offset and the
  time index as extra constant input channels (``shared_weights``), or one shared network that is
  not told its offset (``offset_input=False``): every sub-solver is then literally the same map,
  so the sub-fields of a smooth flow (shifted samples of one field) get shifted samples of one
  update, and no sub-solver can learn a bias of its own offset, which no other could see.

(s, T) = (1, 1) is the vanilla solver through this same code path: same input, same network,
same update, bit for bit (``tests/test_stagger.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ._checks import integer
from .decompose import as_stride, assemble, decompose, offsets, staggered_shapes
from .grid import Grid
from .nets import UNet
from .neural_flow import (FieldView, PotentialState, Velocity, advance_fields, encode_fields,
                          input_channels, node_shape, potential_mask, scales_and_bounds,
                          velocity_from_potential, inflow_potential, wall_potential)
from .physics.flow import FlowEnvironment
# the placement of sub-solvers over processes; member_shares and SubSolverPlacement stay importable from here
from .stagger_placement import SubSolverPlacement, SubState, gather_shares, member_shares  # noqa: F401


@dataclass
class WindowState:
    """T consecutive full-resolution states: potential ``[B, T, P, *nodes]``, pressure ``[B, T, 1, *cells]``."""

    potential: torch.Tensor
    pressure: torch.Tensor

    def at(self, k: int) -> PotentialState:
        return PotentialState(self.potential[:, k], self.pressure[:, k])

    def detach(self) -> "WindowState":
        return WindowState(self.potential.detach(), self.pressure.detach())


class StaggeredFlowSolver(nn.Module):
    """s^d·T coarse sub-solvers that together advance a window of T full-resolution states.

    Args:
        ndim: 2 or 3.
        stride: spatial stride s (one integer, or one per axis).
        window: temporal stride T.
        hidden, levels, kernel_size: each sub-solver's U-Net.
        shared_weights: one network for all sub-solvers, with the offset and time index as inputs.
        offset_input: with shared weights, whether the network is given the offset and time index
            (``False``: the same map for every sub-solver; see the module docstring).
        gauge: ``"walls"`` (2D: pin every sub-field's potential on the outer walls) or ``"free"``
            (see the module docstring); default walls in 2D, free in 3D; irrelevant for s = 1,
            which gauges as the vanilla solver.
        velocity_scale, potential_scale, pressure_scale, potential_bound, pressure_bound: as for
            :class:`~pdeaccel.neural_flow.NeuralFlowSolver`.

    Sub-solver ``j`` is ``(offsets(stride)[j % S], j // S)`` with ``S = ∏ s``: offset first,
    then the time slot ``k``.
    """

    def __init__(self, ndim: int, stride: int | Sequence[int] = 2, window: int = 1, hidden: int = 20,
                 levels: int = 4, kernel_size: int = 3, *, shared_weights: bool = False, offset_input: bool = True,
                 gauge: str | None = None,
                 velocity_scale: float = 1.0, potential_scale: float = 10.0, pressure_scale: float = 1.0,
                 potential_bound: float = 1000.0, pressure_bound: float = 100.0) -> None:
        super().__init__()
        self.scales, self.bounds = scales_and_bounds(
            ndim, velocity_scale=velocity_scale, potential_scale=potential_scale, pressure_scale=pressure_scale,
            potential_bound=potential_bound, pressure_bound=pressure_bound)
        window = integer("window (the temporal stride T)", window, minimum=1)
        self.ndim = ndim
        self.P = 1 if ndim == 2 else 3
        self.stride = as_stride(stride, ndim)
        self.window = window
        self.steps_per_call = window
        self.offsets = offsets(self.stride)
        self.shared_weights = bool(shared_weights)
        if not offset_input and not self.shared_weights:
            raise ValueError("offset_input=False needs shared_weights=True (separate networks know their offset "
                             "by construction).")
        self.offset_input = bool(offset_input)
        self.remove_mean = math.prod(self.stride) == 1  # see the module docstring (gauge)
        gauge = ("walls" if ndim == 2 else "free") if gauge is None else gauge
        if gauge not in ("walls", "free"):
            raise ValueError(f"gauge must be 'walls' or 'free', got {gauge!r}.")
        if gauge == "walls" and ndim != 2 and not self.remove_mean:
            raise ValueError("gauge='walls' pins a 2D stream function; a 3D vector potential has no single wall "
                             "level, so use gauge='free' in 3D.")
        self.gauge = gauge
        self.anchor_walls = gauge == "walls" and not self.remove_mean
        self.in_channels = input_channels(ndim) + (ndim + 1 if self.shared_weights and self.offset_input else 0)
        count = 1 if shared_weights else len(self.offsets) * window
        self.nets = nn.ModuleList(UNet(ndim, self.in_channels, self.P + 1, hidden=hidden, levels=levels,
                                       kernel_size=kernel_size, padding_mode="zeros") for _ in range(count))
        self.placement: SubSolverPlacement | None = None  # every sub-solver runs in this process
        if not self.remove_mean:
            # the sub-fields' levels carry the velocity between them (see the gauge note above): an
            # untrained network's constant output, different per sub-solver, would start training
            # from a striped flow, so every sub-solver starts by predicting no change
            for net in self.nets:
                nn.init.zeros_(net.project.weight)
                nn.init.zeros_(net.project.bias)

    @property
    def sub_solvers(self) -> int:
        return len(self.offsets) * self.window

    def config(self) -> dict:
        return {"ndim": self.ndim, "stride": list(self.stride), "window": self.window,
                "shared_weights": self.shared_weights, "offset_input": self.offset_input, "gauge": self.gauge,
                **{f"{k}_scale": v for k, v in self.scales.items()},
                **{f"{k}_bound": v for k, v in self.bounds.items()}}

    # ------------------------------------------------------------------ the flow-model interface
    def initial_state(self, env: FlowEnvironment) -> WindowState:
        """T copies of the fluid at rest; under the walls gauge, where rest is not representable
        (the walls carry the inflow's flux), T copies of the inflow profile carried down the
        channel (:func:`~pdeaccel.neural_flow.inflow_potential`), pressure 0."""
        B, T = env.batch_size, self.window
        dtype = next(self.parameters()).dtype
        dev = env.fluid.device
        potential = torch.zeros((B, T, self.P) + node_shape(env.grid), dtype=dtype, device=dev)
        if self.anchor_walls:
            potential[:] = inflow_potential(env).to(dtype).unsqueeze(1)
        return WindowState(potential, torch.zeros((B, T, 1) + env.grid.shape, dtype=dtype, device=dev))

    def latest(self, state: WindowState) -> PotentialState:
        return state.at(self.window - 1)

    def velocity(self, state: WindowState, env: FlowEnvironment) -> Velocity:
        """Face velocities of the newest state of the window."""
        return velocity_from_potential(self.latest(state).potential, env.grid)

    def trajectory(self, old: WindowState, new: WindowState) -> list[PotentialState]:
        """``u_{t+T-1}, u_{t+T}, …, u_{t+2T-1}``: every consecutive pair involves a prediction."""
        return [self.latest(old)] + [new.at(k) for k in range(self.window)]

    def from_trajectory(self, states: list[PotentialState]) -> WindowState:
        """The window of the last T of ``states`` (consecutive full-resolution states)."""
        if len(states) < self.window:
            raise ValueError(f"a window needs {self.window} consecutive states, got {len(states)}.")
        last = states[-self.window:]
        return WindowState(torch.stack([s.potential for s in last], 1), torch.stack([s.pressure for s in last], 1))

    def pack(self, state: WindowState) -> dict[str, torch.Tensor]:
        return {"potential": state.potential, "pressure": state.pressure}

    def unpack(self, tensors: dict[str, torch.Tensor]) -> WindowState:
        return WindowState(tensors["potential"], tensors["pressure"])

    def forward(self, state: WindowState, env: FlowEnvironment) -> WindowState:
        """All sub-solvers, reassembled: the next window at full resolution (with a placement,
        :meth:`split_sub_solvers`, only this process's share runs here)."""
        if self.placement is not None:
            return self._placed_forward(state, env, self.placement)
        self._check(state, env)
        views = self.sub_views(env)
        sub = self.decompose_state(state, env)
        new = self.step_subset(sub, views)
        return self.assemble_state(new, env)

    # ------------------------------------------------------------------ sub-solvers
    def sub_grid(self, grid: Grid) -> Grid:
        """The grid a sub-solver runs on: ``ceil(N/s)`` cells of size ``s·h`` per axis."""
        cells = tuple(math.ceil(n / s) for n, s in zip(grid.shape, self.stride))
        # spacing s·h whatever the boundary kind (a dirichlet axis of c unknowns spans c + 1 spacings)
        extent = tuple((c + (b == "dirichlet")) * s * h
                       for c, s, h, b in zip(cells, self.stride, grid.spacing, grid.boundary))
        return Grid(cells, extent=extent, boundary=grid.boundary)

    def _shapes(self, grid: Grid) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return staggered_shapes(grid.shape, self.stride, [b == "periodic" for b in grid.boundary])

    def sub_views(self, env: FlowEnvironment) -> list[FieldView]:
        """The environment as each spatial offset's sub-solvers see it (one view per offset)."""
        grid = env.grid
        cells_p, nodes_p = self._shapes(grid)
        sub = self.sub_grid(grid)
        dtype = env.fluid.dtype
        fluid = decompose(env.fluid, self.stride, cells_p)
        masks = [decompose(m.to(dtype), self.stride, nodes_p) for m in env.face_mask]
        values = [decompose(v, self.stride, nodes_p) for v in env.face_velocity]
        pmask = decompose(potential_mask(grid, dtype, env.fluid.device), self.stride, nodes_p)
        anchors = [None] * len(self.offsets), [None] * len(self.offsets)
        if self.anchor_walls:
            mask, value = wall_potential(env)
            anchors = (decompose(mask.to(dtype), self.stride, nodes_p).unbind(1),
                       decompose(value.to(dtype), self.stride, nodes_p).unbind(1))
        return [FieldView(sub, fluid[:, j], tuple(m[:, j] for m in masks), tuple(v[:, j] for v in values),
                          env.mu, env.rho, pmask[:, j], anchors[0][j], anchors[1][j])
                for j in range(len(self.offsets))]

    def decompose_state(self, state: WindowState, env: FlowEnvironment,
                        indices: Sequence[int] | None = None) -> SubState:
        """Each sub-solver's own sub-field of the window (all of them, or ``indices``)."""
        cells_p, nodes_p = self._shapes(env.grid)
        S = len(self.offsets)
        indices = tuple(range(self.sub_solvers)) if indices is None else tuple(indices)
        pots = [decompose(state.potential[:, k], self.stride, nodes_p) for k in range(self.window)]
        press = [decompose(state.pressure[:, k], self.stride, cells_p) for k in range(self.window)]
        return SubState(indices, [pots[j // S][:, j % S] for j in indices], [press[j // S][:, j % S] for j in indices])

    def assemble_state(self, sub: SubState, env: FlowEnvironment) -> WindowState:
        """The full-resolution window from every sub-solver's sub-field."""
        if sorted(sub.indices) != list(range(self.sub_solvers)):
            raise ValueError("assembling a full-resolution window needs every sub-solver's sub-field; "
                             f"got {len(sub.indices)} of {self.sub_solvers}.")
        S = len(self.offsets)
        order = {j: n for n, j in enumerate(sub.indices)}
        nodes, cells = node_shape(env.grid), env.grid.shape
        pots, press = [], []
        for k in range(self.window):
            slot = [order[k * S + o] for o in range(S)]
            pots.append(assemble(torch.stack([sub.potential[n] for n in slot], 1), self.stride, nodes))
            press.append(assemble(torch.stack([sub.pressure[n] for n in slot], 1), self.stride, cells))
        return WindowState(torch.stack(pots, 1), torch.stack(press, 1))

    def step_subset(self, sub: SubState, views: list[FieldView]) -> SubState:
        """Advance the sub-solvers in ``sub`` by one call (T fine steps); each reads only its own
        sub-field and its offset's view of the environment."""
        S = len(self.offsets)
        if not sub.indices:  # a process with no sub-solvers of its own (more ranks than sub-solvers)
            return SubState((), [], [])
        if self.shared_weights:
            return self._step_shared(sub, views)
        pots, press = [], []
        for j, a, p in zip(sub.indices, sub.potential, sub.pressure):
            view = views[j % S]
            out = self.nets[j](encode_fields(a, p, view, self.scales, self.ndim))
            new = advance_fields(a, p, out, view, self.scales, self.bounds, self.remove_mean, True)
            pots.append(new.potential)
            press.append(new.pressure)
        return SubState(sub.indices, pots, press)

    def _step_shared(self, sub: SubState, views: list[FieldView]) -> SubState:
        """One batched call of the shared network over every sub-solver in ``sub``."""
        S = len(self.offsets)
        inputs, cat_views = [], []
        for j, a, p in zip(sub.indices, sub.potential, sub.pressure):
            view = views[j % S]
            x = encode_fields(a, p, view, self.scales, self.ndim)
            if self.offset_input:
                code = [float(o) / s for o, s in zip(self.offsets[j % S], self.stride)] + [float(j // S) / self.window]
                tags = torch.tensor(code, dtype=x.dtype, device=x.device).reshape((1, -1) + (1,) * self.ndim)
                x = torch.cat([x, tags.expand((x.shape[0], -1) + tuple(x.shape[2:]))], 1)
            inputs.append(x)
            cat_views.append(view)
        out = self.nets[0](torch.cat(inputs, 0)).split(inputs[0].shape[0], 0)
        pots, press = [], []
        for o, a, p, view in zip(out, sub.potential, sub.pressure, cat_views):
            new = advance_fields(a, p, o, view, self.scales, self.bounds, self.remove_mean, True)
            pots.append(new.potential)
            press.append(new.pressure)
        return SubState(sub.indices, pots, press)

    # ------------------------------------------------------------------ multi-resolution
    def resolution_indices(self, space: int = 1, time: int = 1) -> list[int]:
        """The sub-solvers that simulate ``space`` times coarser in space (per axis) and ``time``
        times coarser in time: the offsets that are multiples of ``space`` and the time slots
        ``k`` with ``(k + 1) % time == 0``. ``space`` must divide every stride, ``time`` the window;
        (1, 1) is every sub-solver (full resolution); (s, T) is one sub-solver alone."""
        if any(si % space for si in self.stride) or space < 1:
            raise ValueError(f"a spatial coarsening of {space} must divide the stride {self.stride}; "
                             f"allowed: {', '.join(str(r) for r in range(1, min(self.stride) + 1) if all(si % r == 0 for si in self.stride))}.")
        if time < 1 or self.window % time:
            raise ValueError(f"a temporal coarsening of {time} must divide the window T = {self.window}; "
                             f"allowed: {', '.join(str(q) for q in range(1, self.window + 1) if self.window % q == 0)}.")
        S = len(self.offsets)
        spatial = [i for i, o in enumerate(self.offsets) if all(oi % space == 0 for oi in o)]
        return [k * S + i for k in range(self.window) if (k + 1) % time == 0 for i in spatial]

    def coarse_grid(self, grid: Grid, space: int) -> Grid:
        """The grid of a simulation ``space`` times coarser than ``grid`` (the full one for 1)."""
        keep = self.stride
        self.stride = (space,) * self.ndim
        try:
            return self.sub_grid(grid)
        finally:
            self.stride = keep

    def lattice_states(self, sub: SubState, env: FlowEnvironment, space: int) -> list[PotentialState]:
        """The states of a coarse simulation (:meth:`resolution_indices`), one per simulated time
        slot in order: the selected sub-fields assembled onto the grid ``space`` times coarser."""
        S = len(self.offsets)
        inner = tuple(si // space for si in self.stride)
        coarse = self.coarse_grid(env.grid, space)
        by_slot: dict[int, list[int]] = {}
        for n, j in enumerate(sub.indices):
            by_slot.setdefault(j // S, []).append(n)
        out = []
        for k in sorted(by_slot):
            members = by_slot[k]
            pot = torch.stack([sub.potential[n] for n in members], 1)
            pres = torch.stack([sub.pressure[n] for n in members], 1)
            out.append(PotentialState(assemble(pot, inner, node_shape(coarse)), assemble(pres, inner, coarse.shape)))
        return out

    # ------------------------------------------------------------------ across processes
    def rank_indices(self, rank: int, world: int) -> list[int]:
        """The sub-solvers process ``rank`` of ``world`` runs (:func:`member_shares`)."""
        return list(member_shares(self.sub_solvers, world)[rank])

    def split_sub_solvers(self, placement: "SubSolverPlacement | None") -> None:
        """From now on every call runs only this process's share of the sub-solvers and gathers
        the others' outputs over ``placement`` (``None``: all of them here again). The training
        loop (:mod:`pdeaccel.train.distributed`) places a model this way; every member of the
        group must then call the model in lock-step and, in training, back-propagate the same
        loss of the gathered window (see :class:`~pdeaccel.stagger_placement._GatherShares`)."""
        if placement is not None:
            placement.check(self.sub_solvers)
        self.placement = placement

    def distributed_forward(self, state: WindowState, env: FlowEnvironment, group=None) -> WindowState:
        """:meth:`forward` with the sub-solvers spread over the processes of a ``torch.distributed``
        group (gloo on CPU, nccl on GPU): each rank runs only its own sub-solvers
        (:meth:`rank_indices`) on its own sub-fields; the only communication is one all-gather of
        the new sub-fields, so that every rank holds the full-resolution window. With fewer
        sub-solvers than ranks some ranks idle. Differentiable (see :meth:`split_sub_solvers`)."""
        import torch.distributed as dist

        rank, world = dist.get_rank(group), dist.get_world_size(group)

        def all_gather(flat: torch.Tensor) -> list[torch.Tensor]:
            out = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(out, flat, group=group)
            return out

        placement = SubSolverPlacement(tuple(tuple(self.rank_indices(r, world)) for r in range(world)), rank,
                                       all_gather)
        return self._placed_forward(state, env, placement)

    def _placed_forward(self, state: WindowState, env: FlowEnvironment,
                        placement: "SubSolverPlacement") -> WindowState:
        self._check(state, env)
        mine = placement.shares[placement.member]
        new = self.step_subset(self.decompose_state(state, env, mine), self.sub_views(env))
        probe = self.decompose_state(state, env, [0])
        gathered = gather_shares(new, placement, probe.potential[0].shape, probe.pressure[0].shape, state.potential)
        return self.assemble_state(gathered, env)

    def sub_velocity(self, potential: torch.Tensor, view: FieldView) -> Velocity:
        """A sub-solver's own (coarse) face velocities: the curl of its sub-field on its grid."""
        return velocity_from_potential(potential, view.grid)

    def _check(self, state: WindowState, env: FlowEnvironment) -> None:
        if env.ndim != self.ndim:
            raise ValueError(f"this solver is {self.ndim}D, the environment is {env.ndim}D.")
        expected = (env.batch_size, self.window, self.P) + node_shape(env.grid)
        if tuple(state.potential.shape) != expected:
            raise ValueError(f"state.potential must have shape {list(expected)} (a window of {self.window}), "
                             f"got {list(state.potential.shape)}.")
        expected_p = (env.batch_size, self.window, 1) + env.grid.shape
        if tuple(state.pressure.shape) != expected_p:
            raise ValueError(f"state.pressure must have shape {list(expected_p)}, got {list(state.pressure.shape)}.")
