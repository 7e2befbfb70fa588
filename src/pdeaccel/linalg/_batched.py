"""Per-sample reductions for batched iterative solvers (every sample is its own linear system)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


# Above this many unknowns per sample a BLAS dot per sample beats the batched multiply-and-sum
# (which writes and re-reads a full-size temporary); below it the per-call overhead dominates.
_DOT_PER_SAMPLE_FROM = 16384


def bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a_i, b_i⟩ for every sample i: shape [batch]."""
    if a.shape == b.shape and a.is_contiguous() and b.is_contiguous():
        if a.shape[0] == 1:
            return torch.dot(a.reshape(-1), b.reshape(-1)).reshape(1)
        if a[0].numel() >= _DOT_PER_SAMPLE_FROM:
            return torch.stack([torch.dot(ai.reshape(-1), bi.reshape(-1)) for ai, bi in zip(a, b)])
    return (a * b).flatten(1).sum(1)


def sum_prod(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a_i, b_i⟩ per sample as one plain reduction: what the compiled path uses (the compiler
    fuses it with the operations producing ``a`` and ``b``; :func:`bdot` picks eager kernels)."""
    return (a * b).flatten(1).sum(1)


def bnorm(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(a.flatten(1), dim=1)


def bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a [batch] tensor so it broadcasts against ``like``."""
    return s.reshape((-1,) + (1,) * (like.dim() - 1))


def axpy(a: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, inplace: bool, value: float = 1.0) -> torch.Tensor:
    """``y + value·a·x`` with a per-sample ``a`` (shaped by :func:`bcast`); overwrites ``y`` if
    ``inplace``.

    One fused kernel either way. ``inplace`` is for solves nobody differentiates through (the
    implicit mode's forward and adjoint solves): no full-size temporary per update, which on a
    CPU is most of the cost of an iteration."""
    return y.addcmul_(a, x, value=value) if inplace else torch.addcmul(y, a, x, value=value)


def xpay(x: torch.Tensor, a: torch.Tensor, y: torch.Tensor, *, inplace: bool) -> torch.Tensor:
    """``x + a·y`` (a search-direction update ``p = z + βp``); overwrites ``y`` if ``inplace``."""
    return torch.addcmul(x, a, y, out=y) if inplace else torch.addcmul(x, a, y)


def precondition(inv_diag: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
    """``M⁻¹v`` for the Jacobi preconditioner ``M = diag(A)`` (``inv_diag = 1/diag(A)``); ``v``
    itself when there is none."""
    return v if inv_diag is None else inv_diag * v


def safe_div(num: torch.Tensor, den: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """num/den per sample, and 0 where den == 0 (breakdown) or where ``where`` is false (a
    stopped sample).

    The denominator is replaced *before* dividing, so autograd never sees 0/0 (a NaN gradient
    would otherwise leak through ``torch.where``)."""
    ok = den != 0
    if where is not None:
        ok = ok & where
    return torch.where(ok, num / torch.where(ok, den, 1.0), 0.0)


@dataclass
class Budget:
    """Stopping rule shared by every method.

    At most ``max_iters`` iterations. A sample stops once its residual norm is at or below
    ``threshold`` (0: never), or at the round-off level ``ε·‖r0‖`` of its dtype: below that an
    iteration changes nothing but noise, and differentiating such steps through underflowing
    scalars (unrolled mode) would turn the gradient into NaN. Stopped samples keep their x and
    r while the rest of the batch goes on. Only a positive tolerance (rtol or atol) makes the solve
    check for an early end (one host synchronisation per iteration); otherwise every sample counts
    K. The check follows the requested tolerance, not the threshold: with ``b = 0`` the threshold
    ``rtol·‖b‖`` is 0, and the solve must still stop at the round-off level instead of running out
    its budget (an implicit adjoint solve gets exactly such a zero cotangent for an unused output).
    """

    max_iters: int
    threshold: torch.Tensor  # [batch]
    stop_level: torch.Tensor  # [batch]: max(threshold, ε‖r0‖)
    checks_tolerance: bool

    @classmethod
    def build(cls, max_iters: int, threshold: torch.Tensor, r0: torch.Tensor, checks_tolerance: bool) -> "Budget":
        floor = torch.finfo(r0.dtype).eps * bnorm(r0.detach())
        return cls(max_iters, threshold, torch.maximum(threshold, floor), checks_tolerance)

    @staticmethod
    def start(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Before the first iteration: the per-sample counts (int64 zeros) and residual norms ‖r0‖."""
        return torch.zeros(r.shape[0], dtype=torch.int64, device=r.device), bnorm(r)

    def advance(self, res: torch.Tensor, iterations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Before an iteration: which samples take it, the updated counts, whether all have stopped."""
        active = res.detach() > self.stop_level
        if not self.checks_tolerance:
            return active, iterations + 1, False
        if not bool(active.any()):
            return active, iterations, True
        return active, iterations + active.long(), False


@dataclass
class MethodOutput:
    x: torch.Tensor
    iterations: torch.Tensor  # [batch] int64
    residual_norm: torch.Tensor  # [batch], of the last residual the method knows
