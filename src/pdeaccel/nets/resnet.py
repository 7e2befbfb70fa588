"""Shape-preserving convolutional ResNet in 1D/2D/3D (PRDP's Heat 3D, Burgers and NS nets)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

import torch
from torch import nn

from .._checks import integer
from ._common import check_conv_args, check_input, conv, make_activation

# The PRDP paper's Navier–Stokes correction net C_θ (2 velocity channels in and out, 64 hidden
# channels, "≈222k parameters"): 3 blocks of two 3×3 convolutions give
# 3·2·(64·64·9 + 64) + (2·64 + 64) + (64·2 + 2) = 221,890 parameters.
# Usage: ``ConvResNet(**PRDP_NS_CORRECTION)`` or ``build_net("resnet", **PRDP_NS_CORRECTION)``.
PRDP_NS_CORRECTION: Mapping[str, object] = MappingProxyType(
    {"ndim": 2, "in_channels": 2, "out_channels": 2, "hidden": 64, "blocks": 3, "kernel_size": 3,
     "padding_mode": "circular", "activation": "gelu"}
)


class _ResidualBlock(nn.Module):
    """``h ↦ σ(h + conv₂(σ(conv₁(h))))`` — the classic (post-activation, norm-free) block."""

    def __init__(self, ndim: int, channels: int, kernel_size: int, padding_mode: str,
                 activation: str, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.conv1 = conv(ndim, channels, channels, kernel_size, padding_mode, device, dtype)
        self.conv2 = conv(ndim, channels, channels, kernel_size, padding_mode, device, dtype)
        self.act1 = make_activation(activation)
        self.act2 = make_activation(activation)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act2(h + self.conv2(self.act1(self.conv1(h))))


class ConvResNet(nn.Module):
    """Convolutional ResNet that maps ``[B, in_channels, *space]`` to ``[B, out_channels, *space]``.

    ::

        h_0 = L x                                    (lift: pointwise 1×…×1 convolution)
        h_b = σ(h_{b-1} + K_{b,2} σ(K_{b,1} h_{b-1}))   b = 1 … blocks
        y   = P h_blocks                             (projection: pointwise convolution)

    ``K`` are stride-1 convolutions with ``kernel_size`` (odd) and ``kernel_size // 2`` padding of
    kind ``padding_mode``, so every spatial size is preserved. With ``"circular"`` padding each
    layer commutes with periodic shifts, so the whole net is exactly translation-equivariant on a
    periodic grid: ``net(roll(x, s)) == roll(net(x), s)``. The pointwise lift/projection follow the
    PRDP reference (pdequinox ``ClassicResNet``); all convolutions have biases. Parameters::

        (in·hidden + hidden) + blocks·2·(hidden²·kᵈ + hidden) + (hidden·out + out)

    The PRDP NS correction net is :data:`PRDP_NS_CORRECTION` (221,890 parameters).

    Args:
        ndim: number of spatial axes (1, 2 or 3).
        in_channels, out_channels: channels of the input and output fields.
        hidden: channels inside the residual blocks.
        blocks: number of residual blocks (0 leaves lift→projection, a pointwise linear map).
        kernel_size: odd spatial kernel size of the block convolutions.
        padding_mode: ``"circular"`` (periodic grids), ``"zeros"``, ``"replicate"`` or ``"reflect"``.
        activation: ``"relu"``, ``"tanh"``, ``"gelu"`` or ``"silu"``.
        device, dtype: where and in which precision the parameters live (float32 by default).
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        out_channels: int,
        hidden: int = 32,
        blocks: int = 4,
        kernel_size: int = 3,
        padding_mode: str = "circular",
        activation: str = "gelu",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.ndim, self.in_channels, self.out_channels = check_conv_args(
            ndim, in_channels, out_channels, hidden, kernel_size, padding_mode, activation)
        integer("blocks", blocks, minimum=0)

        self.lift = conv(ndim, in_channels, hidden, 1, padding_mode, device, dtype)
        self.blocks = nn.Sequential(*(
            _ResidualBlock(ndim, hidden, kernel_size, padding_mode, activation, device, dtype)
            for _ in range(blocks)
        ))
        self.project = conv(ndim, hidden, out_channels, 1, padding_mode, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.ndim, self.in_channels, "ConvResNet")
        return self.project(self.blocks(self.lift(x)))
