"""Argument checks and small layer factories shared by the network architectures."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .._checks import ArgumentError, choice, integer

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

# "circular" is the one to use on periodic grids: it makes every convolution commute with rolls.
PADDING_MODES = ("circular", "zeros", "replicate", "reflect")

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def make_activation(name: str) -> nn.Module:
    return ACTIVATIONS[choice("activation", name, ACTIVATIONS)]()


def check_conv_args(ndim: object, in_channels: object, out_channels: object, hidden: object,
                    kernel_size: object, padding_mode: object, activation: object) -> tuple[int, int, int]:
    """Check the arguments the convolutional nets share before anything is built; returns
    ``(ndim, in_channels, out_channels)`` as plain ints."""
    ndim = integer("ndim", ndim, minimum=1, maximum=3)
    in_channels = integer("in_channels", in_channels, minimum=1)
    out_channels = integer("out_channels", out_channels, minimum=1)
    integer("hidden", hidden, minimum=1)
    if integer("kernel_size", kernel_size, minimum=1) % 2 == 0:
        raise ArgumentError(f"kernel_size must be odd so the net preserves shape, got {kernel_size}.")
    choice("padding_mode", padding_mode, PADDING_MODES)
    make_activation(activation)
    return ndim, in_channels, out_channels


def conv(
    ndim: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    padding_mode: str,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> nn.Module:
    """A stride-1 convolution with ``kernel_size // 2`` padding: shape-preserving for odd kernels."""
    return _CONV[ndim](
        in_channels, out_channels, kernel_size, padding=kernel_size // 2,
        padding_mode=padding_mode, device=device, dtype=dtype,
    )


def check_input(x: torch.Tensor, ndim: int, channels: int, net: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{net} expects a torch.Tensor, got {type(x).__name__}.")
    if x.ndim != ndim + 2 or x.shape[1] != channels:
        raise ValueError(
            f"{net} expects input of shape [batch, {channels}, {', '.join(['n'] * ndim)}] "
            f"({ndim} spatial axes), got {tuple(x.shape)}."
        )
