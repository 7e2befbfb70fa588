"""Per-sample reductions for batched iterative solvers (every sample is its own linear system)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a_i, b_i⟩ for every sample i: shape [batch]."""
    return (a * b).flatten(1).sum(1)


def bnorm(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(a.flatten(1), dim=1)


def bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a [batch] tensor so it broadcasts against ``like``."""
    return s.reshape((-1,) + (1,) * (like.dim() - 1))


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num/den, and 0 where den == 0 (breakdown or an already converged sample).

    The denominator is replaced *before* dividing, so autograd never sees 0/0 (a NaN gradient
    would otherwise leak through ``torch.where``)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


@dataclass
class Budget:
    """Stopping rule shared by every method: at most ``max_iters`` iterations, and stop a sample
    once its residual norm is at or below ``threshold`` (per sample; 0 means never)."""

    max_iters: int
    threshold: torch.Tensor  # [batch]

    @property
    def checks_tolerance(self) -> bool:
        return bool((self.threshold > 0).any())


@dataclass
class MethodOutput:
    x: torch.Tensor
    iterations: torch.Tensor  # [batch] int64
    residual_norm: torch.Tensor  # [batch], of the last residual the method knows
