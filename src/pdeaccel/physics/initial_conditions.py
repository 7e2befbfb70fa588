"""Families of random initial conditions that respect a grid's boundary kinds."""

from __future__ import annotations

import itertools
import math

import torch

from .._checks import integer, real
from ..grid import Grid


def random_fourier(
    grid: Grid,
    batch: int,
    modes: int = 5,
    amplitude: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random truncated Fourier series, ``[batch, 1, *grid.shape]``.

    ``u(x) = Σ_{k ∈ {1..M}^d} a_k Π_d φ_d(k_d, x_d)`` with amplitudes ``a_k ~ U(−a, a)`` and,
    per axis of length L,

    * Dirichlet: ``φ = sin(kπx/L)`` (a sine series: zero on both walls),
    * periodic:  ``φ = sin(2πkx/L + ψ)`` with a random phase ``ψ ~ U(0, 2π)`` per term and axis
      (so both sines and cosines appear; the field is periodic and has zero mean),
    * Neumann:   ``φ = cos(kπx/L)`` (zero normal derivative on both walls).

    In 1D with M = 5, a = 1 and a Dirichlet grid this is the PRDP paper's heat initial condition.
    There are M^d terms, so |u| can reach ``a·M^d``. Draws come from ``generator`` (CPU, in
    float64, amplitudes then phases) and do not depend on ``dtype`` or ``device``.

    Args:
        grid: the grid; ``modes`` must be resolvable on every axis (≤ N Dirichlet, ≤ N−1
            Neumann, < N/2 periodic).
        batch: number of samples.
        modes: M, the highest wavenumber per axis.
        amplitude: a > 0.
        generator: a CPU ``torch.Generator`` for reproducible draws.
        dtype, device: of the result.
    """
    _validate(grid, batch, modes, amplitude, generator, dtype)
    terms = list(itertools.product(range(1, modes + 1), repeat=grid.ndim))
    n_terms = len(terms)
    coeffs = (2 * torch.rand(batch, n_terms, generator=generator, dtype=torch.float64) - 1) * amplitude
    phases = 2 * math.pi * torch.rand(batch, n_terms, grid.ndim, generator=generator, dtype=torch.float64)
    wavenumbers = torch.tensor(terms, dtype=torch.float64)  # [n_terms, ndim]

    factors = []
    for axis, (length, kind) in enumerate(zip(grid.extent, grid.boundary)):
        x = grid.axis_coordinates(axis, torch.float64) / length
        k = wavenumbers[:, axis, None]  # [n_terms, 1]
        if kind == "periodic":
            values = torch.sin(2 * math.pi * k * x + phases[:, :, axis, None])  # [batch, n_terms, n]
        elif kind == "dirichlet":
            values = torch.sin(math.pi * k * x).expand(batch, -1, -1)
        else:
            values = torch.cos(math.pi * k * x).expand(batch, -1, -1)
        factors.append(values)
    letters = "ijl"[: grid.ndim]
    spec = "bt," + ",".join(f"bt{c}" for c in letters) + f"->b{letters}"
    field = torch.einsum(spec, coeffs, *factors)
    return field[:, None].to(dtype=dtype, device=device)


def _max_modes(kind: str, n: int) -> int:
    if kind == "dirichlet":
        return n
    if kind == "neumann":
        return n - 1
    return (n - 1) // 2  # periodic: 2k < n, so sin and cos of wavenumber k are both resolved


def _validate(grid, batch, modes, amplitude, generator, dtype) -> None:
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be a pdeaccel Grid, got {type(grid).__name__}.")
    batch, modes = integer("batch", batch, minimum=1), integer("modes", modes, minimum=1)
    for axis, (n, kind) in enumerate(zip(grid.shape, grid.boundary)):
        limit = _max_modes(kind, n)
        if modes > limit:
            raise ValueError(
                f"modes={modes} is more than axis {axis} ({kind}, {n} points) resolves; "
                f"at most {limit} there."
            )
    amplitude = real("amplitude", amplitude, positive=True)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}.")
