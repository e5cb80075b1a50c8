"""The `math` module: Python's `math` functions on ints and floats, and the constants pi, e, tau, inf, nan."""

from __future__ import annotations

import functools
import math as _math
from collections.abc import Callable
from typing import Any

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.values import type_name

MAX_FACTORIAL = 10_000
"""`factorial(n)` refuses larger `n`: the result could not even be printed."""


def _factorial(n: int) -> int:
    if isinstance(n, int) and n > MAX_FACTORIAL:
        raise SglValueError(f"math.factorial() of {n} is too large (max {MAX_FACTORIAL})")
    return _math.factorial(n)


def _log(x: float, base: float = _math.e) -> float:
    return _math.log(x, base)


_FUNCTIONS: dict[str, tuple[Callable[..., Any], str]] = {
    "sqrt": (_math.sqrt, "sqrt(x) -> float: the square root of x."),
    "isqrt": (_math.isqrt, "isqrt(n) -> int: the integer square root of n >= 0."),
    "floor": (_math.floor, "floor(x) -> int: the largest int <= x."),
    "ceil": (_math.ceil, "ceil(x) -> int: the smallest int >= x."),
    "trunc": (_math.trunc, "trunc(x) -> int: x with its fraction dropped (toward zero)."),
    "exp": (_math.exp, "exp(x) -> float: e raised to the power x."),
    "log": (_log, "log(x, base=e) -> float: the logarithm of x (natural by default)."),
    "log2": (_math.log2, "log2(x) -> float: the base-2 logarithm of x."),
    "log10": (_math.log10, "log10(x) -> float: the base-10 logarithm of x."),
    "pow": (_math.pow, "pow(x, y) -> float: x raised to the power y, as a float."),
    "sin": (_math.sin, "sin(x) -> float: the sine of x radians."),
    "cos": (_math.cos, "cos(x) -> float: the cosine of x radians."),
    "tan": (_math.tan, "tan(x) -> float: the tangent of x radians."),
    "asin": (_math.asin, "asin(x) -> float: the arc sine of x, in radians."),
    "acos": (_math.acos, "acos(x) -> float: the arc cosine of x, in radians."),
    "atan": (_math.atan, "atan(x) -> float: the arc tangent of x, in radians."),
    "atan2": (_math.atan2, "atan2(y, x) -> float: the angle of the point (x, y), in radians."),
    "hypot": (_math.hypot, "hypot(*xs) -> float: the Euclidean length sqrt(x*x + y*y + ...)."),
    "degrees": (_math.degrees, "degrees(x) -> float: x radians in degrees."),
    "radians": (_math.radians, "radians(x) -> float: x degrees in radians."),
    "gcd": (_math.gcd, "gcd(*ns) -> int: the greatest common divisor of the ints."),
    "factorial": (_factorial, f"factorial(n) -> int: n! for an int 0 <= n <= {MAX_FACTORIAL}."),
    "isclose": (
        _math.isclose,
        "isclose(a, b) -> bool: true if a and b are equal within 1e-9 relative.",
    ),
    "isnan": (_math.isnan, "isnan(x) -> bool: true if x is nan."),
    "isinf": (_math.isinf, "isinf(x) -> bool: true if x is inf or -inf."),
    "isfinite": (_math.isfinite, "isfinite(x) -> bool: true if x is neither inf nor nan."),
}


def _wrap(name: str, function: Callable[..., Any], doc: str) -> Callable[..., Any]:
    """`function` with number-only arguments and errors as the language's."""

    @functools.wraps(function)
    def call(*args: Any) -> Any:
        for arg in args:
            if not isinstance(arg, (int, float)):
                raise SglTypeError(f"math.{name}() takes numbers, not `{type_name(arg)}`")
        try:
            return function(*args)
        except TypeError as exc:
            raise SglTypeError(f"math.{name}(): {exc}") from None
        except (ValueError, OverflowError) as exc:
            raise SglValueError(f"math.{name}(): {exc}") from None

    call.__doc__ = doc
    return call


EXPORTS: dict[str, Any] = {
    **{name: _wrap(name, function, doc) for name, (function, doc) in _FUNCTIONS.items()},
    "pi": _math.pi,
    "e": _math.e,
    "tau": _math.tau,
    "inf": _math.inf,
    "nan": _math.nan,
}
