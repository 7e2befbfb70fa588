"""Periodic 2D velocity fields on the MAC grid of :class:`~pdeaccel.physics.navier_stokes.NavierStokes2D`:
the exact Taylor–Green vortex, random divergence-free fields for decaying turbulence, and the
face-averaged coarsening that keeps a field divergence-free."""

from __future__ import annotations

import math

import torch

from .._checks import integer, real


def _cells_and_batch(n, batch) -> tuple[int, int]:
    return (integer("n (cells per axis)", n, minimum=3), integer("batch", batch, minimum=1))


def taylor_green(n: int, length: float = 2.0 * math.pi, t: float = 0.0, nu: float = 0.0,
                 amplitude: float = 1.0, batch: int = 1,
                 dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The Taylor–Green vortex, an exact solution of the periodic Navier–Stokes equations.

    With ``k = 2π/L`` and ``F(t) = exp(−2νk²t)``::

        u =  U sin(kx) cos(ky) F(t),   v = −U cos(kx) sin(ky) F(t),
        p = (U²/4)(cos 2kx + cos 2ky) F(t)²,

    sampled on the MAC faces (``u`` at ``(i·h, (j+½)h)``, ``v`` at ``((i+½)h, j·h)``) and cell
    centres. The sampled velocity is discretely divergence-free to round-off, and for N > 2 the
    sampled pressure has zero mean. Returns ``(velocity [batch, 2, n, n], pressure [batch, 1, n, n])``.
    """
    n, batch = _cells_and_batch(n, batch)
    length = real("length", length, positive=True)
    t = real("t", t, minimum=0.0)
    nu = real("nu", nu, minimum=0.0)
    amplitude = real("amplitude", amplitude)
    h = length / n
    k = 2.0 * math.pi / length
    decay = math.exp(-2.0 * nu * k * k * t)
    nodes = torch.arange(n, dtype=torch.float64) * h
    centres = nodes + 0.5 * h
    xf, yc = torch.meshgrid(nodes, centres, indexing="ij")  # x-faces
    xc, yf = torch.meshgrid(centres, nodes, indexing="ij")  # y-faces
    u = amplitude * torch.sin(k * xf) * torch.cos(k * yc) * decay
    v = -amplitude * torch.cos(k * xc) * torch.sin(k * yf) * decay
    x, y = torch.meshgrid(centres, centres, indexing="ij")
    p = 0.25 * amplitude**2 * (torch.cos(2 * k * x) + torch.cos(2 * k * y)) * decay**2
    velocity = torch.stack([u, v])[None].expand(batch, 2, n, n).to(dtype).clone()
    pressure = p[None, None].expand(batch, 1, n, n).to(dtype).clone()
    return velocity, pressure


def decaying_turbulence(n: int, batch: int = 1, generator: torch.Generator | None = None,
                        smoothing: float = 4.0, peak_wavenumber: float = 4.0,
                        rms_velocity: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random divergence-free initial velocities for decaying 2D turbulence, ``[batch, 2, n, n]``.

    Gaussian white noise on the faces is smoothed in Fourier space by the radial filter
    ``a(κ) = (κ/κ_p)^s · exp((s/2)(1 − κ²/κ_p²))`` (κ the integer wavenumber magnitude, peak 1
    at ``κ_p = peak_wavenumber``, ``s = smoothing``: larger s, narrower band; ``a(0) = 0`` so
    there is no mean flow), projected onto discretely divergence-free MAC fields exactly (the
    periodic ``D``, ``G`` are diagonal in Fourier space), and scaled so each sample's RMS speed
    ``sqrt(mean(u² + v²))`` is ``rms_velocity``. The field does not depend on the box size.
    Drawn in float64 from ``generator`` (reproducible), then cast to ``dtype``.
    """
    n, batch = _cells_and_batch(n, batch)
    smoothing = real("smoothing", smoothing, positive=True)
    peak = real("peak_wavenumber", peak_wavenumber, positive=True)
    rms_velocity = real("rms_velocity", rms_velocity, positive=True)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}.")
    noise = torch.randn(batch, 2, n, n, generator=generator, dtype=torch.float64)
    kappa = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)  # integer wavenumbers
    kx, ky = torch.meshgrid(kappa, kappa, indexing="ij")
    ratio = torch.sqrt(kx * kx + ky * ky) / peak
    filt = ratio.pow(smoothing) * torch.exp(0.5 * smoothing * (1.0 - ratio * ratio))
    spectrum = torch.fft.fft2(noise) * filt
    # Fourier symbols (h = 1; the projection is scale invariant) of the forward differences
    # that D applies to faces; G = −Dᵀ has the conjugate symbol with a minus sign.
    theta = 2.0 * math.pi * kappa / n
    dx = (torch.exp(1j * theta) - 1.0)[:, None].expand(n, n)
    dy = (torch.exp(1j * theta) - 1.0)[None, :].expand(n, n)
    div = dx * spectrum[:, 0] + dy * spectrum[:, 1]
    laplace = -(dx.abs() ** 2 + dy.abs() ** 2)  # symbol of D G
    phi = div / torch.where(laplace == 0, torch.ones_like(laplace), laplace)
    # G φ has symbols −conj(d) φ
    spectrum = spectrum - torch.stack([-dx.conj() * phi, -dy.conj() * phi], dim=1)
    velocity = torch.fft.ifft2(spectrum).real
    rms = velocity.pow(2).sum(1).mean(dim=(1, 2)).sqrt()
    velocity = velocity * (rms_velocity / rms).reshape(-1, 1, 1, 1)
    return velocity.to(dtype)


def downsample_velocity(velocity: torch.Tensor, factor: int) -> torch.Tensor:
    """Coarsen a periodic MAC velocity ``[B, 2, N, N] -> [B, 2, N/f, N/f]`` by face averaging.

    Coarse x-face ``(I, J)`` coincides with fine x-face ``(f·I, ·)`` and covers the fine faces
    ``(f·I, f·J + m)``, ``m < f``; its value is their mean (the same flux), likewise for ``v``.
    The coarse divergence of a cell is then the sum of the fine divergences of its f×f sub-cells
    divided by f², so a discretely divergence-free field stays divergence-free.
    """
    if not isinstance(velocity, torch.Tensor):
        raise TypeError(f"velocity must be a torch.Tensor, got {type(velocity).__name__}.")
    if velocity.dim() != 4 or velocity.shape[1] != 2 or velocity.shape[2] != velocity.shape[3]:
        raise ValueError(f"velocity must have shape [batch, 2, N, N], got {list(velocity.shape)}.")
    factor = integer("factor", factor, minimum=1)
    n = velocity.shape[2]
    if n % factor != 0:
        raise ValueError(f"factor {factor} must divide the grid size N={n}.")
    u, v = velocity[:, 0], velocity[:, 1]
    m = n // factor
    u_coarse = u[:, ::factor, :].reshape(-1, m, m, factor).mean(-1)
    v_coarse = v[:, :, ::factor].reshape(-1, m, factor, m).mean(-2)
    return torch.stack([u_coarse, v_coarse], dim=1)
