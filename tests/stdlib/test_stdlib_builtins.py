"""The built-ins table: Python semantics in the value model, with the language's errors."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.limits import Limits
from sgl_lang.stdlib import BUILTIN_NAMES
from sgl_lang.stdlib.builtins import BUILTINS, output


def call(name: str, *args: Any, **kwargs: Any) -> Any:
    """Call a built-in as the interpreter does: await the result if it is awaitable."""
    result = BUILTINS[name](*args, **kwargs)
    if asyncio.iscoroutine(result):
        return asyncio.run(result)
    return result


def test_table_matches_the_names_the_checker_knows() -> None:
    assert set(BUILTINS) | {"run_batch", "meta", "tool"} == BUILTIN_NAMES


def test_every_builtin_has_a_docstring_for_hover() -> None:
    for name, function in BUILTINS.items():
        assert function.__doc__, name
        assert function.__doc__.startswith(name + "("), name


def test_len() -> None:
    assert call("len", "héllo") == 5
    assert call("len", [1, 2]) == 2
    assert call("len", {"a": 1}) == 1
    with pytest.raises(SglTypeError, match=r"len\(\) takes a str, list or dict, not `int`"):
        call("len", 3)


def test_range_returns_a_list() -> None:
    assert call("range", 3) == [0, 1, 2]
    assert call("range", 1, 7, 2) == [1, 3, 5]
    assert call("range", 3, 0, -1) == [3, 2, 1]
    with pytest.raises(SglTypeError, match="range\\(\\) takes ints, not `float`"):
        call("range", 1.5)
    with pytest.raises(SglValueError, match="must not be zero"):
        call("range", 0, 3, 0)
    with pytest.raises(SglValueError, match="too long"):
        call("range", Limits().max_items + 1)
    with pytest.raises(SglTypeError, match="1 to 3 arguments"):
        call("range")


def test_str_uses_literal_syntax() -> None:
    assert call("str", "a") == "a"
    assert call("str", True) == "true"
    assert call("str", None) == "none"
    assert call("str", [1, "a", False]) == '[1, "a", false]'
    assert call("str", {"k": None}) == '{"k": none}'
    assert call("str", 1.5) == "1.5"
    assert call("str") == ""


def test_int() -> None:
    assert call("int", "42") == 42
    assert call("int", " -7 ") == -7
    assert call("int", 3.9) == 3
    assert call("int", -3.9) == -3
    assert call("int", True) == 1
    assert call("int", "ff", base=16) == 255
    assert call("int") == 0
    with pytest.raises(SglValueError) as info:
        call("int", "x")
    assert info.value.message == "invalid literal for int(): 'x'"
    with pytest.raises(SglTypeError, match="not `none`"):
        call("int", None)
    with pytest.raises(SglValueError, match="infinity"):
        call("int", float("inf"))
    with pytest.raises(SglTypeError, match="with a base needs a str"):
        call("int", 3, base=2)
    with pytest.raises(SglValueError, match="Exceeds the limit"):
        call("int", "9" * 5000)
    with pytest.raises(SglValueError, match="between 2 and 36"):
        call("int", "1", base=99)


def test_float() -> None:
    assert call("float", "1.5") == 1.5
    assert call("float", "1e-3") == 0.001
    assert call("float", 2) == 2.0
    assert call("float", "inf") == float("inf")
    with pytest.raises(SglValueError) as info:
        call("float", "abc")
    assert info.value.message == "invalid literal for float(): 'abc'"
    with pytest.raises(SglTypeError, match="not `list`"):
        call("float", [])


def test_bool_is_python_truthiness() -> None:
    values: list[Any] = [0, 1, "", "x", [], [0], {}, None, 0.0]
    assert [call("bool", v) for v in values] == [
        False, True, False, True, False, True, False, False, False,
    ]  # fmt: skip
    assert call("bool") is False


def test_list_and_dict() -> None:
    items = [1, 2]
    copied = call("list", items)
    assert copied == items and copied is not items
    assert call("list", "ab") == ["a", "b"]
    assert call("list", {"a": 1, "b": 2}) == ["a", "b"]
    assert call("list") == []
    with pytest.raises(SglTypeError, match="not `int`"):
        call("list", 5)
    assert call("dict", [["a", 1], ["b", 2]]) == {"a": 1, "b": 2}
    assert call("dict", {"a": 1}, b=2) == {"a": 1, "b": 2}
    assert call("dict") == {}
    with pytest.raises(SglTypeError, match=r"\[key, value\] pairs; found \[1, 2, 3\]"):
        call("dict", [[1, 2, 3]])
    with pytest.raises(SglTypeError, match="cannot be a dict key"):
        call("dict", [[[1], 2]])
    with pytest.raises(SglTypeError, match="not `str`"):
        call("dict", "ab")


def test_min_max() -> None:
    assert call("min", [3, 1, 2]) == 1
    assert call("max", 3, 1, 2) == 3
    assert call("min", ["bb", "a", "ccc"], key=len) == "a"
    assert call("max", ["bb", "a", "cc"], key=len) == "bb"  # first of the ties
    assert call("min", [], default=None) is None
    with pytest.raises(SglValueError, match="empty list"):
        call("max", [])
    with pytest.raises(SglTypeError, match="cannot compare `int` and `str`"):
        call("min", [1, "a"])
    with pytest.raises(SglTypeError, match="at least one argument"):
        call("min")
    with pytest.raises(SglTypeError, match="key must be a function"):
        call("max", [1], key=3)


def test_key_functions_may_be_async_like_language_functions() -> None:
    async def negate(x: int) -> int:
        return -x

    assert call("sorted", [1, 3, 2], key=negate) == [3, 2, 1]
    assert call("min", [1, 3, 2], key=negate) == 3
    assert call("max", [1, 3, 2], key=negate) == 1


def test_sorted() -> None:
    assert call("sorted", [3, 1, 2]) == [1, 2, 3]
    assert call("sorted", [3, 1, 2], reverse=True) == [3, 2, 1]
    assert call("sorted", "cab") == ["a", "b", "c"]
    pairs = [["b", 1], ["a", 1], ["c", 0]]
    assert call("sorted", pairs, key=lambda p: p[1]) == [["c", 0], ["b", 1], ["a", 1]]  # stable
    with pytest.raises(SglTypeError, match="cannot compare"):
        call("sorted", [1, None])


def test_sum_abs_round() -> None:
    assert call("sum", [1, 2, 3]) == 6
    assert call("sum", [0.5, 0.25], 1) == 1.75
    assert call("sum", [[1], [2]], []) == [1, 2]
    assert call("sum", []) == 0
    with pytest.raises(SglTypeError, match="join"):
        call("sum", ["a", "b"])
    with pytest.raises(SglTypeError, match="cannot add `int` and `none`"):
        call("sum", [1, None])
    assert call("abs", -3) == 3
    assert call("abs", -2.5) == 2.5
    with pytest.raises(SglTypeError, match="abs\\(\\) takes a number, not `str`"):
        call("abs", "x")
    assert call("round", 2.5) == 2
    assert call("round", 3.14159, 2) == 3.14
    assert isinstance(call("round", 2.7), int)
    with pytest.raises(SglTypeError, match="ndigits must be an int"):
        call("round", 1.0, 1.5)
    with pytest.raises(SglValueError, match="round"):
        call("round", float("nan"))


def test_reversed_enumerate_zip_return_lists() -> None:
    assert call("reversed", [1, 2, 3]) == [3, 2, 1]
    assert call("reversed", "ab") == ["b", "a"]
    assert call("enumerate", ["a", "b"]) == [[0, "a"], [1, "b"]]
    assert call("enumerate", ["a"], start=1) == [[1, "a"]]
    assert call("zip", [1, 2, 3], ["a", "b"]) == [[1, "a"], [2, "b"]]
    assert call("zip") == []
    with pytest.raises(SglValueError, match="different lengths \\(3, 2\\)"):
        call("zip", [1, 2, 3], ["a", "b"], strict=True)
    with pytest.raises(SglTypeError, match="zip\\(\\) needs a list, str or dict, not `int`"):
        call("zip", [1], 2)


def test_any_all() -> None:
    assert call("any", [0, "", 3]) is True
    assert call("any", []) is False
    assert call("all", [1, "x"]) is True
    assert call("all", [1, 0]) is False
    assert call("all", []) is True


def test_print_writes_to_the_output_stream() -> None:
    stream = io.StringIO()
    token = output.set(stream)
    try:
        assert call("print", "answer:", 42, True, None, [1, "a"]) is None
        call("print", "a", "b", sep="-", end="!")
    finally:
        output.reset(token)
    assert stream.getvalue() == 'answer: 42 true none [1, "a"]\na-b!'


def test_print_defaults_to_the_current_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    call("print", "hi")
    assert capsys.readouterr().out == "hi\n"
    with pytest.raises(SglTypeError, match="sep and end must be strings"):
        call("print", "x", sep=1)


def test_json_dumps() -> None:
    assert call("json_dumps", {"a": [1, None, True]}) == '{"a": [1, null, true]}'
    assert call("json_dumps", "é") == '"é"'
    assert call("json_dumps", [1], indent=2) == "[\n  1\n]"
    with pytest.raises(SglTypeError, match="cannot encode a `module`"):
        call("json_dumps", {"m": [_Module()]})
    with pytest.raises(SglTypeError, match="indent must be an int"):
        call("json_dumps", 1, indent="x")
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SglValueError, match="Circular reference"):
        call("json_dumps", loop)


class _Module:
    type_name = "module"


def test_json_loads() -> None:
    assert call("json_loads", '{"a": [1, 2.5, null, false]}') == {"a": [1, 2.5, None, False]}
    with pytest.raises(SglValueError) as info:
        call("json_loads", '{"a": }')
    assert info.value.message == "invalid JSON: Expecting value at line 1 column 7"
    with pytest.raises(SglTypeError, match="takes a str, not `int`"):
        call("json_loads", 3)
    with pytest.raises(SglValueError, match="nested too deeply"):
        call("json_loads", "[" * 100_000)


def test_errors_carry_no_span() -> None:
    with pytest.raises(SglTypeError) as info:
        call("len", None)
    assert info.value.span is None
