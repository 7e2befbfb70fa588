"""Matrix-free linear operators acting on batched tensors.

An operator maps a tensor of shape ``[batch, *shape]`` to one of the same shape, sample by sample.
It is given by its action (``matvec``), and optionally by its transpose action (``rmatvec``), its
diagonal (needed by Jacobi iteration and Jacobi preconditioning) and whether it is symmetric.
The operator may close over tensors that require grad (a diffusivity, the state an advection
operator is linearised at); :func:`pdeaccel.linalg.solve` differentiates through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LinearOperator:
    """A square linear operator given by its action.

    Args:
        matvec: ``x -> A x`` on ``[batch, *shape]`` tensors; must be linear in ``x``.
        rmatvec: ``y -> Aᵀ y``. If omitted, the transpose is taken from ``matvec`` by automatic
            differentiation (one vector-Jacobian product per application, ≈2× a matvec), or is
            ``matvec`` itself when ``symmetric`` is true.
        diagonal: the diagonal of A, a tensor broadcastable to ``[batch, *shape]`` or a callable
            returning one.
        symmetric: A = Aᵀ (conjugate gradients needs a symmetric positive-definite operator).
        shape: optional: the trailing axes A acts on, e.g. ``grid.shape`` for a stencil operator on
            ``[batch, channel, *grid.shape]`` fields. :func:`~pdeaccel.linalg.solve` then refuses a
            right-hand side whose trailing axes differ (a field of another grid) with a clear error.
    """

    matvec: Matvec
    rmatvec: Matvec | None = None
    diagonal: torch.Tensor | Callable[[], torch.Tensor] | None = None
    symmetric: bool = False
    shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.shape is not None:
            try:
                self.shape = tuple(int(n) for n in self.shape)
            except (TypeError, ValueError):
                raise TypeError(f"LinearOperator shape must be a tuple of axis lengths, got {self.shape!r}.") from None

    def check_input(self, x: torch.Tensor, name: str = "b") -> None:
        """Raise ValueError if ``x``'s trailing axes are not :attr:`shape` (when the shape is known)."""
        if self.shape is None:
            return
        k = len(self.shape)
        if x.dim() <= k or tuple(x.shape[x.dim() - k:]) != self.shape:
            raise ValueError(f"{name} has shape {list(x.shape)}, but the operator acts on [batch, ..., "
                             f"{', '.join(map(str, self.shape))}] tensors (trailing axes {self.shape}); "
                             "is it a field of another grid?")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x)

    def get_diagonal(self) -> torch.Tensor | None:
        d = self.diagonal
        return d() if callable(d) else d

    def transpose(self) -> "LinearOperator":
        """The operator Aᵀ (same diagonal, same symmetry)."""
        if self.symmetric:
            return self
        if self.rmatvec is not None:
            return LinearOperator(self.rmatvec, self.matvec, self.diagonal, False, self.shape)
        return LinearOperator(_autograd_transpose(self.matvec), self.matvec, self.diagonal, False, self.shape)


def _autograd_transpose(matvec: Matvec) -> Matvec:
    """Aᵀy = ∇ₓ⟨y, A x⟩ for linear A: a vector-Jacobian product at any point (we use x = y)."""

    def rmatvec(y: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = y.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(matvec(x), x, grad_outputs=y.detach())
        return g

    return rmatvec


def as_operator(A, *, symmetric: bool | None = None, diagonal=None) -> LinearOperator:
    """Accept a :class:`LinearOperator` or a plain matvec callable."""
    if isinstance(A, LinearOperator):
        return A
    if callable(A):
        return LinearOperator(A, diagonal=diagonal, symmetric=bool(symmetric))
    raise TypeError(
        f"A must be a LinearOperator or a callable x -> A x, got {type(A).__name__}. "
        "Wrap a dense matrix M as LinearOperator(lambda x: (M @ x.flatten(1).T).T.reshape(x.shape))."
    )
