"""Fully connected network on flattened fields (the PRDP paper's heat-equation emulators)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .._checks import ArgumentError, integer
from ._common import make_activation


class MLP(nn.Module):
    """Multi-layer perceptron acting on the whole flattened field.

    With ``h_0 = flatten(x)`` (everything after the batch axis, so ``[B, C, *space]`` becomes
    ``[B, C·∏space]``)::

        h_k = σ(W_k h_{k-1} + b_k),   k = 1 … depth        (each h_k has ``width`` entries)
        y   = W_{depth+1} h_depth + b_{depth+1}              (no activation on the output)

    so ``depth`` counts the hidden layers and the network has ``depth + 1`` linear layers
    (the convention of ``equinox.nn.MLP``, which the PRDP reference code uses). ``y`` is returned
    as ``[B, out_features]`` or, when ``out_shape`` is given, reshaped to ``[B, *out_shape]``.

    PRDP heat emulators: 1D ``MLP(30, 30, width=64, depth=3, out_shape=(1, 30))`` and 2D
    ``MLP(900, 900, out_shape=(1, 30, 30))`` (a 30×30 grid flattened).

    Args:
        in_features: number of entries per sample after flattening.
        out_features: number of outputs per sample.
        width: units per hidden layer.
        depth: number of hidden layers (``depth=0`` is a single affine map).
        activation: ``"relu"``, ``"tanh"``, ``"gelu"`` or ``"silu"``.
        out_shape: per-sample shape of the output, with ``∏out_shape == out_features``.
        device, dtype: where and in which precision the parameters live (float32 by default).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int = 64,
        depth: int = 3,
        activation: str = "relu",
        out_shape: Sequence[int] | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = integer("in_features", in_features, minimum=1)
        self.out_features = integer("out_features", out_features, minimum=1)
        integer("width", width, minimum=1)
        integer("depth", depth, minimum=0)
        if out_shape is not None:
            out_shape = tuple(integer("out_shape entry", n, minimum=1) for n in out_shape)
            if math.prod(out_shape) != out_features:
                raise ArgumentError(
                    f"out_shape={out_shape!r} must be positive integers whose product equals "
                    f"out_features={out_features}."
                )
        self.out_shape: tuple[int, ...] | None = out_shape

        sizes = [in_features] + [width] * depth + [out_features]
        layers: list[nn.Module] = []
        for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if k > 0:
                layers.append(make_activation(activation))
            layers.append(nn.Linear(n_in, n_out, device=device, dtype=dtype))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MLP expects a torch.Tensor, got {type(x).__name__}.")
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(
                f"MLP expects [batch, ...] input with {self.in_features} entries per sample, "
                f"got shape {tuple(x.shape)}."
            )
        y = self.layers(x.reshape(x.shape[0], self.in_features))
        if self.out_shape is not None:
            y = y.reshape(x.shape[0], *self.out_shape)
        return y
