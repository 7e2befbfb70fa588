"""A differentiable estimate of a signal's dominant frequency (the shedding frequency a controller steers)."""

from __future__ import annotations


import torch


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
