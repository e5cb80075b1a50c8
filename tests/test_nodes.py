"""`nodes.children()` and `nodes.walk()`: every node class yields exactly the nodes its fields hold."""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any

import pytest

from sgl_lang import nodes
from sgl_lang.grammar import parse_text
from sgl_lang.source import Source, Span

NODE_CLASSES = sorted(
    (
        value
        for value in vars(nodes).values()
        if isinstance(value, type) and issubclass(value, nodes.Node) and value is not nodes.Node
    ),
    key=lambda cls: cls.__name__,
)
SOURCE = Source("t.sgl", " " * 1000)


class _Filler:
    """Builds a value for each field from its type: every place a node may go gets a fresh
    marker node, with spans increasing in field order."""

    def __init__(self) -> None:
        self.markers: list[nodes.Node] = []

    def value(self, hint: Any) -> Any:
        origin = typing.get_origin(hint)
        if origin in (types.UnionType, typing.Union):
            options = typing.get_args(hint)
            holds_nodes = [o for o in options if _may_hold_nodes(o)]
            return self.value(holds_nodes[0] if holds_nodes else options[0])
        if origin is tuple:
            args = typing.get_args(hint)
            items = (args[0], args[0]) if args[-1] is Ellipsis else args
            return tuple(self.value(item) for item in items)
        if isinstance(hint, type) and issubclass(hint, nodes.Node):
            marker = nodes.Pass(SOURCE.span(len(self.markers) + 1, len(self.markers) + 2))
            self.markers.append(marker)
            return marker
        if hint in (str, int, bool):
            return hint()
        if hint is Span:
            return SOURCE.span(0, 999)
        raise TypeError(f"a field type this test does not know: {hint} (teach it and children())")


def _may_hold_nodes(hint: Any) -> bool:
    if isinstance(hint, type) and issubclass(hint, nodes.Node):
        return True
    return any(_may_hold_nodes(arg) for arg in typing.get_args(hint) if arg is not Ellipsis)


def test_every_node_class_is_covered() -> None:
    assert len(NODE_CLASSES) > 40
    assert {nodes.IfExpr, nodes.Str, nodes.DictExpr, nodes.SchemaDecl} <= set(NODE_CLASSES)


@pytest.mark.parametrize("cls", NODE_CLASSES, ids=lambda cls: cls.__name__)
def test_children_are_exactly_the_nodes_in_the_fields(cls: type[nodes.Node]) -> None:
    hints = typing.get_type_hints(cls)
    filler = _Filler()
    node = cls(**{f.name: filler.value(hints[f.name]) for f in fields(cls)})
    assert nodes.children(node) == tuple(filler.markers)
    assert list(nodes.walk(node)) == [node, *filler.markers]


def test_children_are_in_source_order_not_field_order() -> None:
    (stmt,) = parse_text("a if c else b\n").body
    assert isinstance(stmt, nodes.ExprStmt) and isinstance(stmt.expr, nodes.IfExpr)
    names = [child.id for child in nodes.children(stmt.expr) if isinstance(child, nodes.Name)]
    assert names == ["a", "c", "b"]


def test_walk_is_pre_order_over_several_roots() -> None:
    program = parse_text('x = [y for y in z if y]\n"{x:>3}"\ngen a(max_tokens=n)\n')
    assert [type(node).__name__ for node in nodes.walk(*program.body)] == [
        "Assign",
        "Name",  # x
        "ListComp",
        "Name",  # y
        "Name",  # z
        "Name",  # y
        "Append",
        "Str",
        "Interp",
        "Name",  # x
        "Gen",
        "Keyword",
        "Name",  # n
    ]
