"""The PRDP-specific argument check: a metric fed to a schedule or to the savings report.

Integers and plain reals are checked with the package's shared :mod:`pdeaccel._checks`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from .._checks import real

_DIVERGED = ("A diverged epoch is the divergence guard's business (roll back, raise_budget); "
             "do not feed it to the schedule.")
_RATIO = "PRDP compares ratios of an error measure (validation error or a non-negative loss)."


def check_metric(value: Any, positive: bool, name: str = "metric") -> float:
    """A metric as a finite float (``> 0`` with ``positive``): Python/numpy numbers and
    one-element tensors are accepted."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be a scalar, got a tensor of shape {list(value.shape)}.")
        value = value.detach().item()
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    fix = _DIVERGED if number and not math.isfinite(value) else _RATIO if positive else ""
    return real(name, value, positive=positive, fix=fix)
