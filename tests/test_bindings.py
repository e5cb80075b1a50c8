"""The binding table (`sgl_lang.bindings`): scopes, bindings, and the binding every name use refers to."""

from __future__ import annotations

import textwrap
from pathlib import Path

from sgl_lang import nodes
from sgl_lang.bindings import Binding, BindingTable, binding_table
from sgl_lang.grammar import parse_text
from sgl_lang.lsp.analysis import Document
from sgl_lang.resolve import check

PROGRAM = textwrap.dedent(
    """\
    x = 1
    def f(x, n=x):
        y = [x * k for x, k in zip(range(n), [x]) if x]
        return x + len(y) + later
    results = fork item in [x, 2]:
        gen answer(max_tokens=1)
        "{item}{answer}{x}"
    schema Pair:
        left: Point
        right: str
    schema Point:
        v: int
    print(f(2), results, missing)
    later = 3
    """
)


def table(text: str) -> BindingTable:
    return binding_table(parse_text(text, "t.sgl"))


def at(binding: Binding | None) -> str:
    if binding is None:
        return "-"
    return f"{binding.kind} {binding.name}@{binding.span.line}:{binding.span.column}"


def test_every_use_links_to_the_binding_it_resolves_to() -> None:
    links = [
        (f"{use.name}@{use.node.span.line}:{use.node.span.column}", at(use.binding))
        for use in table(PROGRAM).uses
    ]
    assert links == [
        ("x@2:12", "variable x@1:1"),  # a default is evaluated outside the def
        ("x@3:10", "loop x@3:20"),  # the comprehension's own x shadows the argument
        ("k@3:14", "loop k@3:23"),
        ("zip@3:28", "-"),  # a built-in
        ("range@3:32", "-"),
        ("n@3:38", "argument n@2:10"),
        ("x@3:43", "argument x@2:7"),  # the iterable is evaluated outside the comprehension
        ("x@3:50", "loop x@3:20"),
        ("x@4:12", "argument x@2:7"),
        ("len@4:16", "-"),
        ("y@4:20", "variable y@3:5"),
        ("later@4:25", "variable later@14:1"),  # bound later in the module: still that binding
        ("x@5:25", "variable x@1:1"),  # a fork's items are evaluated before the branches
        ("item@7:7", "loop item@5:16"),
        ("answer@7:13", "generated answer@6:9"),
        ("x@7:21", "variable x@1:1"),
        ("Point@9:11", "schema Point@11:8"),  # `right: str` names no binding
        ("print@13:1", "-"),
        ("f@13:7", "function f@2:5"),
        ("results@13:13", "variable results@5:1"),
        ("missing@13:22", "-"),
    ]


def test_scopes_nest_as_the_language_defines_them() -> None:
    scopes = table(PROGRAM).scopes
    assert [(scope.kind, scope.parent.kind if scope.parent else None) for scope in scopes] == [
        ("module", None),
        ("function", "module"),
        ("comp", "function"),
        ("branch", "module"),
    ]
    module, function, comp, branch = scopes
    assert list(module.names) == ["x", "f", "results", "Pair", "Point", "later"]
    assert [(b.name, b.kind) for b in function.bindings] == [
        ("x", "argument"),
        ("n", "argument"),
        ("y", "variable"),
    ]
    assert isinstance(comp.node, nodes.ListComp) and list(comp.names) == ["x", "k"]
    assert [(b.name, b.kind) for b in branch.bindings] == [
        ("item", "loop"),
        ("answer", "generated"),
    ]
    assert isinstance(branch.bindings[1].node, nodes.Gen)


def test_blocks_do_not_scope_and_the_first_binding_of_a_scope_wins() -> None:
    text = "if true:\n    a = 1\nelse:\n    for a in [2]:\n        pass\nprint(a)\n"
    (use,) = [use for use in table(text).uses if use.name == "a"]
    assert at(use.binding) == "variable a@2:5"
    assert [at(b) for b in table(text).module.bindings] == ["variable a@2:5", "loop a@4:9"]


def test_the_table_is_built_once_per_program_and_shared_with_the_language_server() -> None:
    program = parse_text(PROGRAM, "t.sgl")
    assert binding_table(program) is binding_table(program)
    document = Document.analyse(Path("t.sgl"), PROGRAM)
    assert document.program is not None
    assert document.table is binding_table(document.program)
    offset = PROGRAM.index("answer}")
    assert at(document.lookup("answer", offset)) == "generated answer@6:9"
    assert document.names_at(offset) == [
        "Pair",
        "Point",
        "answer",
        "f",
        "item",
        "later",
        "results",
        "x",
    ]


def test_the_checker_reports_the_uses_that_resolve_to_nothing_but_built_ins() -> None:
    problems = check(parse_text(PROGRAM, "t.sgl"))
    assert [(p.message, p.span.line if p.span else None) for p in problems] == [
        ("`missing` is not defined", 13)
    ]
