"""The `math` module: Python's functions, number-only arguments, errors as value errors."""

from __future__ import annotations

import math

import pytest

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.stdlib.math import EXPORTS, MAX_FACTORIAL


def test_constants_are_plain_values() -> None:
    assert EXPORTS["pi"] == math.pi
    assert EXPORTS["e"] == math.e
    assert EXPORTS["tau"] == math.tau
    assert EXPORTS["inf"] == math.inf
    assert math.isnan(EXPORTS["nan"])


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("sqrt", (16,), 4.0),
        ("isqrt", (17,), 4),
        ("floor", (2.7,), 2),
        ("ceil", (2.1,), 3),
        ("trunc", (-2.7,), -2),
        ("exp", (0,), 1.0),
        ("log", (math.e,), 1.0),
        ("log", (8, 2), 3.0),
        ("log2", (8,), 3.0),
        ("log10", (1000,), 3.0),
        ("pow", (2, 10), 1024.0),
        ("sin", (0,), 0.0),
        ("cos", (0,), 1.0),
        ("tan", (0,), 0.0),
        ("asin", (0,), 0.0),
        ("acos", (1,), 0.0),
        ("atan", (0,), 0.0),
        ("atan2", (0, 1), 0.0),
        ("hypot", (3, 4), 5.0),
        ("degrees", (math.pi,), 180.0),
        ("radians", (180,), math.pi),
        ("gcd", (12, 18), 6),
        ("factorial", (5,), 120),
        ("isclose", (0.1 + 0.2, 0.3), True),
        ("isnan", (1.0,), False),
        ("isinf", (math.inf,), True),
        ("isfinite", (1.0,), True),
    ],
)
def test_functions(name: str, args: tuple[float, ...], expected: float) -> None:
    assert EXPORTS[name](*args) == pytest.approx(expected)


def test_domain_errors_are_value_errors() -> None:
    with pytest.raises(SglValueError) as info:
        EXPORTS["sqrt"](-1)
    assert info.value.message == "math.sqrt(): math domain error"
    with pytest.raises(SglValueError, match=r"math\.exp"):
        EXPORTS["exp"](1000)
    with pytest.raises(SglValueError, match="too large"):
        EXPORTS["factorial"](MAX_FACTORIAL + 1)


def test_non_numbers_are_type_errors() -> None:
    with pytest.raises(SglTypeError, match=r"math.sqrt\(\) takes numbers, not `str`"):
        EXPORTS["sqrt"]("4")
    with pytest.raises(SglTypeError, match=r"math\.gcd"):
        EXPORTS["gcd"](1.5, 2)
