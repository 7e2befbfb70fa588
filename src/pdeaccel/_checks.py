"""Argument checks shared by the whole package (private: the public API raises their errors).

Every check names the argument, says what it must be and what it got, and returns the value
converted to a plain Python number, so a caller writes ``n = integer("n", n, minimum=3)``
(``optional=True`` lets ``None`` through, for "no limit" or "not set" arguments).

The error is :class:`ArgumentError`, a ``ValueError`` *and* a ``TypeError``: a wrong type and a
wrong value of an argument are the same mistake to the user (``True`` for a count, ``3.5`` for a
grid size, ``-1`` for a batch), and callers that caught either before still catch it.
``bool`` is never accepted as a number, although Python treats it as one.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable


class ArgumentError(ValueError, TypeError):
    """A bad argument: wrong type or out of range. The message names it and the fix."""


def _fail(name: str, must: str, value: Any, fix: str) -> ArgumentError:
    kind = "" if isinstance(value, (int, float, str, type(None))) and not isinstance(value, bool) \
        else f" ({type(value).__name__})"
    return ArgumentError(f"{name} must be {must}, got {value!r}{kind}.{(' ' + fix) if fix else ''}")


def bounds_text(minimum: Any, maximum: Any) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
            optional: bool = False, fix: str = "") -> int | None:
    """``value`` as an ``int`` (any integral number but ``bool``) within ``[minimum, maximum]``;
    ``None`` passes through with ``optional``."""
    if optional and value is None:
        return None
    must = "an integer" + bounds_text(minimum, maximum) + (" or None" if optional else "")
    if not _is_integer(value, minimum, maximum):
        raise _fail(name, must, value, fix)
    return int(value)


def integers(name: str, value: Any, length: int, *, minimum: int | None = None,
             maximum: int | None = None, fix: str = "") -> tuple[int, ...]:
    """``value`` as a tuple of ``length`` ints within ``[minimum, maximum]``; a single integer
    stands for all ``length`` of them (a stride per axis, cells per axis)."""
    must = "an integer" + bounds_text(minimum, maximum) + f" or a sequence of {length} of them"
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        entries: tuple = (value,) * length
    elif isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise _fail(name, must, value, fix)
    else:
        entries = tuple(value)
    if len(entries) != length or not all(_is_integer(v, minimum, maximum) for v in entries):
        raise _fail(name, must, value, fix)
    return tuple(int(v) for v in entries)


def _is_integer(value: Any, minimum: int | None, maximum: int | None) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) \
        and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def real(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
         positive: bool = False, finite: bool = True, optional: bool = False, fix: str = "") -> float | None:
    """``value`` as a ``float`` (any real number but ``bool``): finite unless ``finite=False``,
    ``> 0`` with ``positive``, and within ``[minimum, maximum]``; ``None`` passes through with
    ``optional``."""
    if optional and value is None:
        return None
    must = ("a positive" if positive else "a") + (" finite" if finite else "") + " number" \
        + bounds_text(minimum, maximum) + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, must, value, fix)
    v = float(value)
    if (finite and not math.isfinite(v)) or math.isnan(v) or (positive and not v > 0) \
            or (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise _fail(name, must, value, fix)
    return v


def choice(name: str, value: Any, options: Iterable[Any], fix: str = "") -> Any:
    """``value`` if it is one of ``options`` (compared with ``==``, ``bool`` never equal to a number)."""
    options = list(options)
    for option in options:
        if type(option) is type(value) and option == value:
            return value
    raise _fail(name, "one of " + ", ".join(repr(o) for o in options), value, fix)


def flag(name: str, value: Any, fix: str = "") -> bool:
    """``value`` if it is a ``bool`` (a 0/1 or a string is refused: it is usually a typo)."""
    if not isinstance(value, bool):
        raise _fail(name, "true or false", value, fix)
    return value

