"""random_fourier: its spectrum (scipy's DST/DCT/FFT) matches each axis's boundary kind."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from pdeaccel import Grid
from pdeaccel.physics import random_fourier


def spectrum(field: np.ndarray, grid: Grid) -> np.ndarray:
    """Coefficients in the basis each boundary kind calls for, axis by axis (index = wavenumber).

    DST-I vectors are sin(kπ(i+1)/(N+1)) (Dirichlet nodes), DCT-II vectors cos(kπ(i+½)/N)
    (Neumann cell centres, index 0 = the constant) and the FFT's are e^{2πiki/N} (periodic)."""
    out = field.astype(complex)
    for axis, kind in enumerate(grid.boundary):
        if kind == "dirichlet":
            coeffs = scipy.fft.dst(out.real, type=1, axis=axis, norm="forward") + 1j * scipy.fft.dst(
                out.imag, type=1, axis=axis, norm="forward")
            # DST-I index j holds wavenumber j+1: prepend an empty wavenumber-0 slot
            out = np.concatenate([np.zeros_like(np.take(coeffs, [0], axis=axis)), coeffs], axis=axis)
        elif kind == "neumann":
            out = scipy.fft.dct(out.real, type=2, axis=axis, norm="forward") + 1j * scipy.fft.dct(
                out.imag, type=2, axis=axis, norm="forward")
        else:
            out = scipy.fft.fft(out, axis=axis, norm="forward")
    return np.abs(out)


def allowed_mask(shape: tuple[int, ...], grid: Grid, modes: int) -> np.ndarray:
    """Where a series with wavenumbers 1..M per axis may put energy (periodic: ±k)."""
    mask = np.ones(shape, dtype=bool)
    for axis, (size, kind) in enumerate(zip(shape, grid.boundary)):
        k = np.arange(size)
        if kind == "periodic":
            k = np.minimum(k, size - k)  # FFT index N−k is wavenumber −k
        ok = (k >= 1) & (k <= modes)
        view = [1] * len(shape)
        view[axis] = size
        mask &= ok.reshape(view)
    return mask


GRIDS = [
    Grid(30, boundary="dirichlet"),
    Grid(16, extent=2.0, boundary="periodic"),
    Grid(12, boundary="neumann"),
    Grid((10, 16), extent=(1.0, 3.0), boundary=("dirichlet", "periodic")),
    Grid((8, 9, 12), boundary=("neumann", "dirichlet", "periodic")),
]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "-".join(g.boundary))
def test_spectrum_is_the_truncated_series_of_each_boundary_kind(grid):
    modes = 3
    u = random_fourier(grid, 4, modes=modes, amplitude=0.7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert u.shape == (4, 1, *grid.shape) and u.dtype == torch.float64
    for sample in u[:, 0].numpy():
        spec = spectrum(sample, grid)
        mask = allowed_mask(spec.shape, grid, modes)
        # sine series on Dirichlet axes (zero on the walls), cosines on Neumann, periodic modes 1..M:
        # nothing outside wavenumbers 1..M on any axis
        assert spec[~mask].max() < 1e-12 * spec.max()
        assert spec[mask].max() > 1e-3


def test_paper_heat_initial_condition_amplitudes_are_uniform_in_range():
    grid = Grid(30, boundary="dirichlet")
    u = random_fourier(grid, 400, modes=5, amplitude=1.0, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # DST-I of a sine series returns its amplitudes exactly (in units of the series' terms)
    amps = scipy.fft.dst(u[:, 0].numpy(), type=1, axis=-1, norm="forward") * 2
    a = amps[:, :5]
    assert np.abs(amps[:, 5:]).max() < 1e-12
    assert np.abs(a).max() <= 1.0
    # 2000 U(−1, 1) draws: mean ≈ 0 (σ/√n ≈ 0.013), variance ≈ 1/3
    assert abs(a.mean()) < 0.05 and abs(a.var() - 1 / 3) < 0.03


def test_periodic_field_continues_periodically():
    # a trigonometric polynomial of degree M < N/2 sampled on N nodes: its FFT interpolant
    # evaluated at x = L (node N) equals node 0
    grid = Grid(20, extent=1.5, boundary="periodic")
    u = random_fourier(grid, 3, modes=4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)[:, 0].numpy()
    coeffs = np.fft.rfft(u, axis=-1) / 20
    k = np.arange(coeffs.shape[-1])
    weights = np.where((k == 0) | (k == 10), 1, 2)
    at_length = (weights * coeffs * np.exp(2j * np.pi * k * 20 / 20)).real.sum(axis=-1)
    np.testing.assert_allclose(at_length, u[:, 0], atol=1e-12)
    np.testing.assert_allclose(u.mean(axis=-1), 0.0, atol=1e-12)


def test_reproducible_with_a_generator_and_independent_of_dtype():
    grid = Grid((6, 12), boundary=("dirichlet", "periodic"))
    a = random_fourier(grid, 2, generator=torch.Generator().manual_seed(7))
    b = random_fourier(grid, 2, generator=torch.Generator().manual_seed(7))
    c = random_fourier(grid, 2, generator=torch.Generator().manual_seed(8))
    d = random_fourier(grid, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert a.dtype == torch.float32 and d.dtype == torch.float64
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(a, d.float())


def test_without_generator_draws_differ():
    grid = Grid(16, boundary="periodic")
    assert not torch.equal(random_fourier(grid, 2, modes=3), random_fourier(grid, 2, modes=3))


def test_bad_inputs_raise_clear_errors():
    grid = Grid(8, boundary="periodic")
    with pytest.raises(TypeError, match="grid"):
        random_fourier((8,), 2)
    with pytest.raises(ValueError, match="batch"):
        random_fourier(grid, 0)
    with pytest.raises(ValueError, match="modes"):
        random_fourier(grid, 2, modes=0)
    with pytest.raises(ValueError, match=r"modes=4 is more than axis 0 \(periodic, 8 points\)"):
        random_fourier(grid, 2, modes=4)
    with pytest.raises(ValueError, match="amplitude"):
        random_fourier(grid, 2, modes=2, amplitude=-1.0)
    with pytest.raises(ValueError, match="amplitude"):
        random_fourier(grid, 2, modes=2, amplitude=float("inf"))
    with pytest.raises(TypeError, match="dtype"):
        random_fourier(grid, 2, modes=2, dtype=torch.int64)
    with pytest.raises(TypeError, match="generator"):
        random_fourier(grid, 2, modes=2, generator=7)
