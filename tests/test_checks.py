"""The shared argument checks: what they accept, what they refuse, and what the message says."""

import math

import numpy as np
import pytest

from pdeaccel._checks import ArgumentError, choice, flag, integer, integers, real


def test_integer_accepts_integral_numbers_and_returns_int():
    assert integer("n", 3, minimum=1) == 3
    value = integer("n", np.int64(7), minimum=0, maximum=7)
    assert value == 7 and type(value) is int


@pytest.mark.parametrize("bad", [True, 3.0, "3", None, 0, 11])
def test_integer_refuses_bools_floats_strings_and_out_of_range(bad):
    with pytest.raises(ArgumentError, match=r"^steps must be an integer in \[1, 10\], got "):
        integer("steps", bad, minimum=1, maximum=10)


def test_argument_error_is_both_value_and_type_error():
    with pytest.raises(ValueError):
        integer("n", -1, minimum=0)
    with pytest.raises(TypeError):
        integer("n", "x")


def test_real_checks_finiteness_sign_and_bounds():
    assert real("dt", 2) == 2.0 and type(real("dt", 2)) is float
    for bad in (math.inf, math.nan, 0.0, -1.0, False):
        with pytest.raises(ArgumentError, match="dt must be a positive finite number"):
            real("dt", bad, positive=True)
    assert real("x", math.inf, finite=False) == math.inf
    with pytest.raises(ArgumentError, match=r"omega must be a finite number in \[0, 2\], got 2.5. use"):
        real("omega", 2.5, minimum=0, maximum=2, fix="use")


def test_choice_and_flag():
    assert choice("mode", "a", ["a", "b"]) == "a"
    with pytest.raises(ArgumentError, match="mode must be one of 'a', 'b', got 'c'"):
        choice("mode", "c", ["a", "b"])
    with pytest.raises(ArgumentError):
        choice("level", True, [1, 2])  # True == 1 in Python; not a level
    assert flag("mirror", False) is False
    with pytest.raises(ArgumentError, match=r"mirror must be true or false, got 1"):
        flag("mirror", 1)


def test_optional_lets_none_through_and_says_so():
    assert integer("k_max", None, minimum=1, optional=True) is None
    assert real("ck", None, positive=True, optional=True) is None
    assert integer("k_max", 4, minimum=1, optional=True) == 4
    with pytest.raises(ArgumentError, match=r"^k_max must be an integer >= 1 or None, got 0\.$"):
        integer("k_max", 0, minimum=1, optional=True)
    with pytest.raises(ArgumentError, match=r"^ck must be a positive finite number or None, got -1\.0\.$"):
        real("ck", -1.0, positive=True, optional=True)
    with pytest.raises(ArgumentError, match="got None"):
        integer("n", None)  # not optional: None is refused like any other non-integer


def test_integers_broadcasts_one_integer_and_checks_each_entry():
    assert integers("stride", 2, 3, minimum=1) == (2, 2, 2)
    value = integers("n", [np.int64(4), 5], 2, minimum=2)
    assert value == (4, 5) and all(type(v) is int for v in value)
    for bad in [(1, 0), (1, 2, 3), (1, True), (1.0, 2), "12", None, 0]:
        with pytest.raises(ArgumentError, match=r"^stride must be an integer >= 1 or a sequence of 2 of them, got "):
            integers("stride", bad, 2, minimum=1)
