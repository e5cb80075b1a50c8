"""`import NAME` of standard-library modules, and the permission checks behind them."""

from __future__ import annotations

import pytest

from sgl_lang.errors import SglImportError, SglPermissionError
from sgl_lang.objects import get_attribute
from sgl_lang.stdlib import MODULE_NAMES, modules, permissions
from sgl_lang.stdlib.modules import Module, load_module
from sgl_lang.stdlib.permissions import Permissions, require


def test_registry_matches_the_names_the_checker_knows() -> None:
    assert set(modules._FILES) == MODULE_NAMES


@pytest.mark.parametrize("name", sorted(MODULE_NAMES))
def test_every_module_loads_with_documented_exports(name: str) -> None:
    module = load_module(name)
    assert module.name == name
    assert module.type_name == "module"
    assert str(module) == f"<module {name}>"
    assert module.exports
    assert module.sgl_attributes == frozenset(module.exports)
    for export, value in module.exports.items():
        if callable(value):
            assert value.__doc__, f"{name}.{export}"
            assert value.__doc__.startswith(f"{export}("), f"{name}.{export}"


def test_modules_are_loaded_once() -> None:
    assert load_module("calc") is load_module("calc")


def test_programs_reach_exports_through_the_attribute_sandbox() -> None:
    calc = load_module("calc")
    assert get_attribute(calc, "evaluate")("1 + 2") == 3
    assert get_attribute(load_module("math"), "pi") > 3.14
    for hidden in ("exports", "name", "__dict__", "_loaded"):
        with pytest.raises(Exception, match="no attribute"):
            get_attribute(calc, hidden)


def test_unknown_module_suggests_a_close_name() -> None:
    with pytest.raises(SglImportError) as info:
        load_module("retreival")
    assert info.value.message == (
        "no standard-library module named `retreival` (did you mean `retrieval`?)"
    )
    with pytest.raises(SglImportError) as info:
        load_module("zzz")
    assert info.value.message == "no standard-library module named `zzz`"


def test_module_rejects_exports_that_shadow_its_fields() -> None:
    with pytest.raises(ValueError, match="cannot export"):
        Module("bad", {"name": 1})


def test_permissions_default_to_nothing() -> None:
    assert permissions.current.get() == Permissions()
    expected = {
        "read": "reading files needs --allow-read",
        "write": "writing files needs --allow-write",
        "net": "network access needs --allow-net",
        "python": "calling Python needs --allow-python",
    }
    for kind, message in expected.items():
        with pytest.raises(SglPermissionError) as info:
            require(kind)
        assert info.value.message == message


def test_granted_permissions_pass_only_for_their_kind() -> None:
    token = permissions.current.set(Permissions(read=True, net=True))
    try:
        require("read")
        require("net")
        with pytest.raises(SglPermissionError):
            require("write")
    finally:
        permissions.current.reset(token)
    with pytest.raises(SglPermissionError):
        require("read")


def test_unknown_permission_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown permission kind"):
        require("root")
