"""NeuralStagger's sub-solvers spread over the processes of a group: which process runs which
sub-solvers (:func:`member_shares`, :class:`SubSolverPlacement`) and the one collective a call
needs, an all-gather of every member's new sub-fields (:func:`gather_shares`), differentiable
with the gradient each sub-solver's owner needs (:class:`_GatherShares`).

Used by :meth:`pdeaccel.stagger.StaggeredFlowSolver.distributed_forward` and by the training
loop across ranks (:mod:`pdeaccel.train.distributed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class SubState:
    """The sub-fields of a window that a set of sub-solvers owns: ``potential[j]`` is
    ``[B, P, *sub_nodes]`` and ``pressure[j]`` ``[B, 1, *sub_cells]`` of sub-solver ``indices[j]``."""

    indices: tuple[int, ...]
    potential: list[torch.Tensor]
    pressure: list[torch.Tensor]


def member_shares(sub_solvers: int, members: int) -> tuple[tuple[int, ...], ...]:
    """The sub-solvers each of ``members`` processes runs: round-robin (``m, m + members, …``), so
    the shares differ in size by at most one."""
    return tuple(tuple(range(m, sub_solvers, members)) for m in range(members))


@dataclass(frozen=True)
class SubSolverPlacement:
    """The sub-solvers of one model split over the members of a process group.

    ``shares[m]`` are the sub-solvers member ``m`` runs, ``member`` is this process, and
    ``all_gather(flat)`` returns every member's equally long 1-D tensor in member order (a
    collective over the group; :mod:`pdeaccel.train.distributed` wraps it with its timeout and
    failure handling).
    """

    shares: tuple[tuple[int, ...], ...]
    member: int
    all_gather: Callable[[torch.Tensor], list[torch.Tensor]]

    def check(self, sub_solvers: int) -> None:
        owned = sorted(j for share in self.shares for j in share)
        if owned != list(range(sub_solvers)):
            raise ValueError(f"a placement must give each of the {sub_solvers} sub-solvers to exactly one member; "
                             f"got shares {[list(s) for s in self.shares]}.")
        if not 0 <= self.member < len(self.shares):
            raise ValueError(f"member {self.member} is not one of the {len(self.shares)} members of the placement.")


class _GatherShares(torch.autograd.Function):
    """All-gather of the members' new sub-fields whose backward sends nothing.

    Every member of the group computes the loss from the same gathered window (identical
    inputs, the same operations), so the gradient arriving at the gathered tensor is the same on
    every member, and a member's own rows already carry the whole gradient of its sub-solvers'
    outputs: the loss's direct dependence plus, in an unrolled loss, the dependence through the
    next call, which reads sub-field ``j`` only in sub-solver ``j`` (on the same member). Summing
    the members' gradients instead (the backward of ``torch.distributed.nn.all_gather``) would
    count the direct part once per member, and dividing the loss by the number of members to
    compensate would shrink the part through the next call, which only the owner computes. The
    trainer then sums the parameter gradients over the members, each sub-solver's exactly once.
    """

    @staticmethod
    def forward(ctx, flat: torch.Tensor, member: int, all_gather) -> torch.Tensor:  # noqa: D102
        ctx.member = member
        return torch.stack(all_gather(flat.contiguous()))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad[ctx.member], None, None



def gather_shares(new: SubState, placement: SubSolverPlacement, potential_shape: torch.Size,
                  pressure_shape: torch.Size, like: torch.Tensor) -> SubState:
    """Every member's new sub-fields, from this member's ``new`` (its share of the sub-solvers):
    each member sends one flat buffer of its sub-fields, padded to the largest share so the
    buffers are equally long, and reads everyone's back (one all-gather). ``like`` gives the
    buffer's dtype and device (a member may own no sub-solvers when there are more members)."""
    p_size, q_size = math.prod(potential_shape), math.prod(pressure_shape)
    width = max(len(sh) for sh in placement.shares) * (p_size + q_size)
    parts = [t.flatten() for pair in zip(new.potential, new.pressure) for t in pair]
    zeros = like.new_zeros(width - sum(t.numel() for t in parts))
    flat = torch.cat(parts + [zeros]) if parts else zeros
    gathered = _GatherShares.apply(flat, placement.member, placement.all_gather)
    indices, pots, press = [], [], []
    for m, share in enumerate(placement.shares):
        buf = gathered[m]
        for n, j in enumerate(share):
            base = n * (p_size + q_size)
            indices.append(j)
            pots.append(buf[base:base + p_size].reshape(potential_shape))
            press.append(buf[base + p_size:base + p_size + q_size].reshape(pressure_shape))
    return SubState(tuple(indices), pots, press)
