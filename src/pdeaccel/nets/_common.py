"""Argument checks and small layer factories shared by the network architectures."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

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
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not supported; allowed: {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()


def check_positive_int(value: object, name: str) -> int:
    # bool is an int subclass; True as a width is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def check_ndim(ndim: object, allowed: tuple[int, ...]) -> int:
    if isinstance(ndim, bool) or ndim not in allowed:
        raise ValueError(f"ndim={ndim!r} is not supported; allowed: {', '.join(map(str, allowed))}.")
    return ndim  # type: ignore[return-value]


def check_padding_mode(mode: object) -> str:
    if mode not in PADDING_MODES:
        raise ValueError(f"padding_mode={mode!r} is not supported; allowed: {', '.join(PADDING_MODES)}.")
    return mode  # type: ignore[return-value]


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
