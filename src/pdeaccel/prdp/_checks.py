"""Argument checks shared by the PRDP configuration, the schedules, the ledger and the savings."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    return float(value)


def _metric(value: Any, positive: bool, name: str = "metric") -> float:
    """A metric as a float: Python/numpy numbers and one-element tensors are accepted."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be a scalar, got a tensor of shape {list(value.shape)}.")
        value = value.detach().item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(
            f"{name} must be finite, got {value!r}. A diverged epoch is the divergence guard's business "
            "(roll back, raise_budget); do not feed it to the schedule."
        )
    if positive and value <= 0:
        raise ValueError(
            f"metric must be > 0 for PRDP, got {value!r}: the controller compares ratios of an error "
            "measure (validation error or a non-negative loss)."
        )
    return value
