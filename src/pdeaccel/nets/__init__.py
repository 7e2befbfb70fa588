"""Network architectures on ``[batch, channel, *space]`` fields: MLP, conv ResNet, U-Net.

The nets return unbounded outputs; bounding them (e.g. a scaled tanh, as Wandel et al. do for
their training pool) is the caller's business. Parameters are float32 unless ``dtype`` is given;
float64 works throughout.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .mlp import MLP
from .resnet import PRDP_NS_CORRECTION, ConvResNet
from .unet import UNet

NETS: dict[str, type[nn.Module]] = {"mlp": MLP, "resnet": ConvResNet, "unet": UNet}


def build_net(name: str, **kwargs: Any) -> nn.Module:
    """Build the network called ``name`` (``"mlp"``, ``"resnet"`` or ``"unet"``) from keyword
    arguments, as read from a config file.

    Raises:
        ValueError: for an unknown name, an unknown keyword (the message lists the allowed
            ones, read from the class signature), or a missing required keyword.
    """
    if name not in NETS:
        raise ValueError(f"Unknown net name={name!r}; allowed: {', '.join(NETS)}.")
    cls = NETS[name]
    signature = inspect.signature(cls.__init__)
    params = [p for p in signature.parameters.values() if p.name != "self"]
    allowed = [p.name for p in params]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unknown argument(s) {', '.join(unknown)} for net {name!r} ({cls.__name__}); "
            f"allowed: {', '.join(allowed)}."
        )
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in kwargs]
    if missing:
        raise ValueError(
            f"Net {name!r} ({cls.__name__}) needs argument(s) {', '.join(missing)}; "
            f"allowed: {', '.join(allowed)}."
        )
    return cls(**kwargs)


def count_parameters(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``net`` (shared parameters counted once)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


__all__ = ["MLP", "ConvResNet", "UNet", "PRDP_NS_CORRECTION", "NETS", "build_net", "count_parameters"]
