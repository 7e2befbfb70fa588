"""U-Net in 1D/2D/3D for the physics-constrained flow solver (Wandel et al.; NeuralStagger)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import integer
from ._common import check_conv_args, check_input, conv, make_activation

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}
# F.pad's name for each conv padding mode.
_PAD_MODE = {"circular": "circular", "zeros": "constant", "replicate": "replicate", "reflect": "reflect"}


class _DoubleConv(nn.Module):
    """``h ↦ σ(K₂ σ(K₁ h))`` with shape-preserving convolutions (no normalisation)."""

    def __init__(self, ndim: int, c_in: int, c_mid: int, c_out: int, kernel_size: int,
                 padding_mode: str, activation: str,
                 device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            conv(ndim, c_in, c_mid, kernel_size, padding_mode, device, dtype),
            make_activation(activation),
            conv(ndim, c_mid, c_out, kernel_size, padding_mode, device, dtype),
            make_activation(activation),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(h)


class UNet(nn.Module):
    """U-Net mapping ``[B, in_channels, *space]`` to ``[B, out_channels, *space]``.

    With ``L = levels`` and widths ``c_l = hidden·2^l`` (l < L), the bottleneck keeping ``c_{L-1}``::

        e_0 = D(x)                       D: two conv+σ layers (stride 1, shape-preserving)
        e_l = D(maxpool₂(e_{l-1}))       l = 1 … L      (e_l has c_l channels, e_L has c_{L-1})
        d_L = e_L
        d_l = D([up₂(d_{l+1}), e_l])     l = L-1 … 0    (concatenate skip; D: 2c_l → c_l → c_{l-1})
        y   = P d_0                      P: pointwise convolution to out_channels

    ``up₂`` is parameter-free ×2 linear interpolation (bi-/trilinear); with ``"circular"`` padding
    it wraps around (periodic interpolation), otherwise edge values are held. This is the layout
    of the U-Net Wandel et al. use (4 levels, hidden width 20, bilinear upsampling). Theirs,
    built on the common milesial Pytorch-UNet, has batch normalisation; ours has none, so a
    sample's output never depends on the rest of its batch. In 2D
    with ``hidden=20, levels=4`` it has 1,686,180 + 180·in_channels + 21·out_channels parameters
    (1,686,783 for 3 in / 3 out channels) — their "≈1.7M".

    Sizes not divisible by ``2^levels`` are padded (with ``padding_mode``, split evenly between
    both ends, the odd cell at the end) up to the next multiple and the output is cropped back,
    so any spatial size ``≥ 2^levels`` works (``≥ 2^levels·(kernel_size//2 + 1)`` with
    ``"reflect"``, ``≥ 2^levels·(kernel_size//2)`` with ``"circular"``, because the coarsest
    level must be wide enough to wrap or mirror the convolution's halo). On a periodic grid use sizes divisible by ``2^levels``: then the
    circular net is exactly equivariant under shifts by multiples of ``2^levels``; padding a
    non-divisible periodic field breaks that at the seam.

    Args:
        hidden: channels at the finest level (doubled at each coarser level).
        levels: number of ×2 downsamplings.
        kernel_size: odd spatial kernel size of every non-pointwise convolution.
        ndim, in_channels, out_channels, padding_mode, activation, device, dtype: as for
            :class:`~pdeaccel.nets.ConvResNet`.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, hidden: int = 20, levels: int = 4,
                 kernel_size: int = 3, padding_mode: str = "zeros", activation: str = "relu", *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.ndim, self.in_channels, self.out_channels = check_conv_args(
            ndim, in_channels, out_channels, hidden, kernel_size, padding_mode, activation)
        self.levels = integer("levels", levels, minimum=1)
        self.padding_mode = padding_mode
        self.kernel_size = kernel_size
        # Wrapping needs halo <= size and mirroring halo < size at the coarsest level.
        halo = kernel_size // 2
        self._coarsest_cells = {"circular": max(halo, 1), "reflect": halo + 1}.get(padding_mode, 1)

        def double(c_in: int, c_mid: int, c_out: int) -> _DoubleConv:
            return _DoubleConv(ndim, c_in, c_mid, c_out, kernel_size, padding_mode, activation,
                               device, dtype)

        width = [hidden * 2**l for l in range(levels)]
        self.encoder = nn.ModuleList([double(in_channels, width[0], width[0])])
        for l in range(1, levels + 1):
            c_out = width[min(l, levels - 1)]
            self.encoder.append(double(width[l - 1], c_out, c_out))
        # decoder[l] produces d_l; stored finest first.
        self.decoder = nn.ModuleList(
            double(2 * width[l], width[l], width[max(l - 1, 0)]) for l in range(levels)
        )
        self.project = conv(ndim, width[0], out_channels, 1, padding_mode, device, dtype)

    def _upsample(self, h: torch.Tensor) -> torch.Tensor:
        mode = _LINEAR_MODE[self.ndim]
        if self.padding_mode != "circular":
            return F.interpolate(h, scale_factor=2, mode=mode, align_corners=False)
        # One wrapped ghost cell per side makes the interpolation periodic; the ghost cells
        # become two fine cells per side, cropped away.
        up = F.interpolate(F.pad(h, (1, 1) * self.ndim, mode="circular"), scale_factor=2,
                           mode=mode, align_corners=False)
        return up[(slice(None), slice(None)) + (slice(2, -2),) * self.ndim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.ndim, self.in_channels, "UNet")
        multiple = 2**self.levels
        space = x.shape[2:]
        if any(n < multiple * self._coarsest_cells for n in space):
            raise ValueError(
                f"UNet(levels={self.levels}, kernel_size={self.kernel_size}, "
                f"padding_mode={self.padding_mode!r}) needs every spatial size >= "
                f"{multiple * self._coarsest_cells} ({self._coarsest_cells} cell(s) at the coarsest "
                f"level, which is 2**levels = {multiple} times coarser), got spatial shape {tuple(space)}."
            )
        pads = [(-n) % multiple for n in space]
        if any(pads):
            # F.pad lists (before, after) pairs starting from the last axis.
            pad_arg: list[int] = []
            for p in reversed(pads):
                pad_arg += [p // 2, p - p // 2]
            mode = _PAD_MODE[self.padding_mode]
            x = F.pad(x, pad_arg, mode=mode)

        pool = _MAX_POOL[self.ndim]
        skips = [self.encoder[0](x)]
        for block in self.encoder[1:]:
            skips.append(block(pool(skips[-1], 2)))
        h = skips.pop()
        for l in reversed(range(self.levels)):
            h = self.decoder[l](torch.cat([self._upsample(h), skips[l]], dim=1))
        y = self.project(h)

        if any(pads):
            y = y[(slice(None), slice(None)) + tuple(slice(p // 2, p // 2 + n) for p, n in zip(pads, space))]
        return y
