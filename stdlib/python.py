"""The `python` module: `call("pkg.mod:fn", ...)` calls a Python function; needs `--allow-python`.

Arguments go to Python as they are (strings, numbers, lists, dicts, ...). The
result must be a value the language can hold: none, bool, int, float, str, or
lists, tuples (which become lists) and dicts of those. Exceptions raised by
the function become value errors naming the exception.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from sgl_lang.errors import SglError, SglImportError, SglTypeError, SglValueError
from sgl_lang.stdlib.permissions import require
from sgl_lang.values import to_repr, type_name


def _resolve(target: Any) -> Any:
    if not isinstance(target, str):
        raise SglTypeError(f"python.call() target must be a str, not `{type_name(target)}`")
    module_name, _, attr_path = target.partition(":")
    if not module_name or not attr_path:
        raise SglValueError(
            f'python.call() needs a target like "package.module:function", got {to_repr(target)}'
        )
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SglImportError(f"python.call(): cannot import `{module_name}`: {exc}") from None
    for attr in attr_path.split("."):
        if attr.startswith("_") or not hasattr(found, attr):
            raise SglImportError(f"python.call(): `{module_name}` has no `{attr_path}`")
        found = getattr(found, attr)
    if not callable(found):
        raise SglTypeError(f"python.call(): `{target}` is not callable")
    return found


def to_value(result: Any) -> Any:
    """`result` in the value model: tuples become lists; anything else a program cannot hold is a type error."""
    if result is None or isinstance(result, (bool, float)):
        return result
    if isinstance(result, int):
        return int(result)
    if isinstance(result, str):
        return str(result)
    if isinstance(result, (list, tuple)):
        return [to_value(item) for item in result]
    if isinstance(result, dict):
        converted = {}
        for key, value in result.items():
            if not (key is None or isinstance(key, (str, int, float, bool))):
                raise SglTypeError(
                    f"python.call returned a dict with a {type(key).__name__} key, "
                    "which .sgl programs cannot hold"
                )
            converted[to_value(key)] = to_value(value)
        return converted
    raise SglTypeError(
        f"python.call returned a {type(result).__name__}, which .sgl programs cannot hold"
    )


async def call(target: str, /, *args: Any, **kwargs: Any) -> Any:
    """call("pkg.mod:fn", *args, **kwargs) -> value: call a Python function and return its result. Needs --allow-python."""
    require("python")
    function = _resolve(target)
    try:
        result = function(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
    except SglError:
        raise
    except Exception as exc:
        raise SglValueError(
            f"python.call(): `{target}` raised {type(exc).__name__}: {exc}"
        ) from None
    return to_value(result)


EXPORTS = {"call": call}
