"""The `python` module: calling Python with --allow-python, results kept in the value model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from sgl_lang.errors import SglImportError, SglPermissionError, SglTypeError, SglValueError
from sgl_lang.stdlib import permissions
from sgl_lang.stdlib.permissions import Permissions
from sgl_lang.stdlib.python import call, to_value


def run(target: str, *args: Any, **kwargs: Any) -> Any:
    return asyncio.run(call(target, *args, **kwargs))


@pytest.fixture
def allowed() -> Iterator[None]:
    token = permissions.current.set(Permissions(python=True))
    yield
    permissions.current.reset(token)


def test_denied_without_allow_python() -> None:
    with pytest.raises(SglPermissionError) as info:
        run("math:sqrt", 4)
    assert info.value.message == "calling Python needs --allow-python"


@pytest.mark.usefixtures("allowed")
def test_calls_with_positional_and_keyword_arguments() -> None:
    assert run("math:sqrt", 16) == 4.0
    assert run("os.path:join", "a", "b") == "a/b"
    assert run("json:dumps", {"a": 1}, sort_keys=True, indent=None) == '{"a": 1}'
    assert run("textwrap:shorten", "hello big world", width=12) == "hello [...]"


@pytest.mark.usefixtures("allowed")
def test_dotted_attribute_paths_and_async_functions() -> None:
    assert run("os.path:sep.join", ["a", "b"]) == "a/b"
    assert run("asyncio:sleep", 0, result=5) == 5


@pytest.mark.usefixtures("allowed")
def test_results_are_converted_to_values() -> None:
    assert run("builtins:divmod", 7, 2) == [3, 1]  # tuple -> list
    assert run("collections:OrderedDict", [["a", (1, 2)]]) == {"a": [1, 2]}


@pytest.mark.usefixtures("allowed")
def test_results_a_program_cannot_hold_are_type_errors() -> None:
    with pytest.raises(SglTypeError) as info:
        run("builtins:object")
    assert info.value.message == "python.call returned a object, which .sgl programs cannot hold"
    with pytest.raises(SglTypeError, match="returned a set"):
        run("builtins:set", [1])


@pytest.mark.usefixtures("allowed")
def test_python_exceptions_become_value_errors() -> None:
    with pytest.raises(SglValueError) as info:
        run("json:loads", "{")
    assert info.value.message.startswith("python.call(): `json:loads` raised JSONDecodeError: ")


@pytest.mark.usefixtures("allowed")
def test_bad_targets() -> None:
    with pytest.raises(SglValueError, match=r'target like "package\.module:function"'):
        run("math.sqrt")
    with pytest.raises(SglImportError, match="cannot import `no_such_module_xyz`"):
        run("no_such_module_xyz:f")
    with pytest.raises(SglImportError, match="`math` has no `nothing`"):
        run("math:nothing")
    with pytest.raises(SglImportError, match="`os` has no `_exit`"):
        run("os:_exit", 0)  # private names are refused
    with pytest.raises(SglTypeError, match="`math:pi` is not callable"):
        run("math:pi")
    with pytest.raises(SglTypeError, match="target must be a str"):
        run(3)  # type: ignore[arg-type]


def test_to_value() -> None:
    assert to_value((1, [2, (3,)], {"k": (None, True)})) == [1, [2, [3]], {"k": [None, True]}]
    with pytest.raises(SglTypeError, match="a dict with a tuple key"):
        to_value({(1, 2): 3})
