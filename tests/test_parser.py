"""The parser: every construct's AST shape, every syntax error's whole message, spans, and fuzzing."""

from __future__ import annotations

import codecs
import os
import tempfile
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgl_lang import nodes, resolve
from sgl_lang.errors import SglError, SglSyntaxError
from sgl_lang.grammar import parse, parse_text
from sgl_lang.loader import Loader
from sgl_lang.lsp.analysis import Document
from sgl_lang.source import Source

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.sgl"))
PROGRAMS = sorted((ROOT / "tests" / "programs").rglob("*.sgl"))


def dump(value: object) -> str:
    """A node tree as compact text: `Type(field, ...)` without spans."""
    if isinstance(value, nodes.Node):
        skipped = ("span", "name_span")
        args = [dump(getattr(value, f.name)) for f in fields(value) if f.name not in skipped]
        return f"{type(value).__name__}({', '.join(args)})"
    if isinstance(value, tuple):
        return "[" + ", ".join(dump(item) for item in value) + "]"
    return repr(value)


def shape(text: str) -> str:
    return "\n".join(dump(stmt) for stmt in parse_text(text).body)


def error(text: str) -> str:
    with pytest.raises(SglSyntaxError) as info:
        parse_text(text, "t.sgl")
    return info.value.render()


# ---------------------------------------------------------------- expressions

EXPRESSIONS = {
    "x": "Name('x')",
    "12": "Const(12)",
    "0.5": "Const(0.5)",
    "1e-3": "Const(0.001)",
    ".5": "Const(0.5)",
    "true": "Const(True)",
    "false": "Const(False)",
    "none": "Const(None)",
    "-3": "UnaryOp('-', Const(3))",
    "+x": "UnaryOp('+', Name('x'))",
    "[]": "ListExpr([])",
    "[1, 2,]": "ListExpr([Const(1), Const(2)])",
    "{}": "DictExpr([])",
    '{"k": v, 1: 2}': "DictExpr([[Str(['k']), Name('v')], [Const(1), Const(2)]])",
    "a + b * c": "BinOp('+', Name('a'), BinOp('*', Name('b'), Name('c')))",
    "a - b - c": "BinOp('-', BinOp('-', Name('a'), Name('b')), Name('c'))",
    "a // b % c / d": (
        "BinOp('/', BinOp('%', BinOp('//', Name('a'), Name('b')), Name('c')), Name('d'))"
    ),
    "-a * b": "BinOp('*', UnaryOp('-', Name('a')), Name('b'))",
    "(a + b) * c": "BinOp('*', BinOp('+', Name('a'), Name('b')), Name('c'))",
    "a < b <= c": "Compare(Name('a'), ['<', '<='], [Name('b'), Name('c')])",
    "a == b != c": "Compare(Name('a'), ['==', '!='], [Name('b'), Name('c')])",
    "a > b >= c": "Compare(Name('a'), ['>', '>='], [Name('b'), Name('c')])",
    "a in b": "Compare(Name('a'), ['in'], [Name('b')])",
    "a not in b": "Compare(Name('a'), ['not in'], [Name('b')])",
    "not a in b": "UnaryOp('not', Compare(Name('a'), ['in'], [Name('b')]))",
    "not a == b": "UnaryOp('not', Compare(Name('a'), ['=='], [Name('b')]))",
    "not not a": "UnaryOp('not', UnaryOp('not', Name('a')))",
    "a + 1 < b * 2": (
        "Compare(BinOp('+', Name('a'), Const(1)), ['<'], [BinOp('*', Name('b'), Const(2))])"
    ),
    "a or b and c": "BoolOp('or', Name('a'), BoolOp('and', Name('b'), Name('c')))",
    "a and b or c": "BoolOp('or', BoolOp('and', Name('a'), Name('b')), Name('c'))",
    "a or b or c": "BoolOp('or', BoolOp('or', Name('a'), Name('b')), Name('c'))",
    "not a and b": "BoolOp('and', UnaryOp('not', Name('a')), Name('b'))",
    "a if c else b": "IfExpr(Name('c'), Name('a'), Name('b'))",
    "a if c else b if d else e": (
        "IfExpr(Name('c'), Name('a'), IfExpr(Name('d'), Name('b'), Name('e')))"
    ),
    "a or b if c or d else e": (
        "IfExpr(BoolOp('or', Name('c'), Name('d')), BoolOp('or', Name('a'), Name('b')), Name('e'))"
    ),
    "f()": "Call(Name('f'), [], [])",
    "f(1, k=2, **kw)": (
        "Call(Name('f'), [Const(1)], [Keyword('k', Const(2)), Keyword(None, Name('kw'))])"
    ),
    "f(a,)": "Call(Name('f'), [Name('a')], [])",
    "x.y.z": "Attribute(Attribute(Name('x'), 'y'), 'z')",
    "x[0]": "Index(Name('x'), Const(0))",
    "x[-1]": "Index(Name('x'), UnaryOp('-', Const(1)))",
    "x[a:b:c]": "Index(Name('x'), Slice(Name('a'), Name('b'), Name('c')))",
    "x[a:b]": "Index(Name('x'), Slice(Name('a'), Name('b'), None))",
    "x[:]": "Index(Name('x'), Slice(None, None, None))",
    "x[::2]": "Index(Name('x'), Slice(None, None, Const(2)))",
    "x[1:]": "Index(Name('x'), Slice(Const(1), None, None))",
    "x[:-1]": "Index(Name('x'), Slice(None, UnaryOp('-', Const(1)), None))",
    "a.b(c)[d].e": (
        "Attribute(Index(Call(Attribute(Name('a'), 'b'), [Name('c')], []), Name('d')), 'e')"
    ),
    "[x for x in xs]": "ListComp(Name('x'), ['x'], Name('xs'), [])",
    "[a + b for a, b in pairs if a if b]": (
        "ListComp(BinOp('+', Name('a'), Name('b')), ['a', 'b'], Name('pairs'), [Name('a'), Name('b')])"
    ),
    "[a if c else b for a in xs]": "ListComp(IfExpr(Name('c'), Name('a'), Name('b')), ['a'], Name('xs'), [])",
    "[[y for y in x] for x in xs]": (
        "ListComp(ListComp(Name('y'), ['y'], Name('x'), []), ['x'], Name('xs'), [])"
    ),
    "run f(1)": "RunExpr(Call(Name('f'), [Const(1)], []))",
    "run m.f(x=1)": "RunExpr(Call(Attribute(Name('m'), 'f'), [], [Keyword('x', Const(1))]))",
}


@pytest.mark.parametrize(("text", "expected"), EXPRESSIONS.items(), ids=list(EXPRESSIONS))
def test_expression_shape(text: str, expected: str) -> None:
    assert shape(f"x = {text}") == f"Assign([Name('x')], {expected})"


def test_run_binds_tighter_than_attribute_access_fails_clearly() -> None:
    assert error("s = run f(1).text\n").startswith(
        "t.sgl:1:9: syntax error: `run` needs a function call"
    )


# ---------------------------------------------------------------- strings

STRINGS = {
    '"plain"': "Str(['plain'])",
    "'single'": "Str(['single'])",
    '""': "Str([''])",
    '"a {x} b"': "Str(['a ', Interp(Name('x'), None), ' b'])",
    '"{x.y}{z}"': "Str([Interp(Attribute(Name('x'), 'y'), None), Interp(Name('z'), None)])",
    '"{score:.2f}"': "Str([Interp(Name('score'), '.2f')])",
    '"{f(a, b=1)}"': "Str([Interp(Call(Name('f'), [Name('a')], [Keyword('b', Const(1))]), None)])",
    "\"{d['k']}\"": "Str([Interp(Index(Name('d'), Str(['k'])), None)])",
    "\"{ {'a': 1}['a'] }\"": (
        "Str([Interp(Index(DictExpr([[Str(['a']), Const(1)]]), Str(['a'])), None)])"
    ),
    '"{xs[1:2]}"': "Str([Interp(Index(Name('xs'), Slice(Const(1), Const(2), None)), None)])",
    '"{x if a else b:>5}"': "Str([Interp(IfExpr(Name('a'), Name('x'), Name('b')), '>5')])",
    '"{{literal}} }}"': "Str(['{literal} }'])",
    r'"\n\t\\\"\'\u00e9"': "Str(['\\n\\t\\\\\"\\'é'])",
    r'"\r\0"': "Str(['\\r\\x00'])",
    r'r"\d{2} {x}"': "Str(['\\\\d{2} {x}'])",
    r"R'\n'": "Str(['\\\\n'])",
    r'r"a\"b"': "Str(['a\\\\\"b'])",
}


@pytest.mark.parametrize(("text", "expected"), STRINGS.items(), ids=list(STRINGS))
def test_string_literal(text: str, expected: str) -> None:
    assert shape(f"x = {text}") == f"Assign([Name('x')], {expected})"


def test_triple_quoted_string_is_dedented_like_textwrap() -> None:
    program = 'x = """\n    first\n      second {y}\n\n    last\n    """\n'
    (assign,) = parse_text(program).body
    assert dump(assign) == (
        "Assign([Name('x')], Str(['first\\n  second ', Interp(Name('y'), None), '\\n\\nlast\\n']))"
    )


@pytest.mark.parametrize(
    "content",
    ["\n    a\n\tb\n", "  x\n    y\n  ", "no break\n   z", "\n\n  a\n \n  b\n", "\n"],
)
def test_triple_quoted_dedent_matches_textwrap(content: str) -> None:
    (assign,) = parse_text(f'x = """{content}"""\n').body
    expected = textwrap.dedent(content.removeprefix("\n"))
    assert isinstance(assign, nodes.Assign) and isinstance(assign.value, nodes.Str)
    assert assign.value.parts == (expected,)


def test_raw_and_single_quoted_triple_strings() -> None:
    assert shape("r'''\n  a\\n {b}\n  '''") == "Append(Str(['a\\\\n {b}\\n']))"
    assert shape("'''it's \"ok\"'''") == "Append(Str(['it\\'s \"ok\"']))"


def test_triple_quoted_escape_and_line_continuation() -> None:
    assert shape('"""\n  a \\\n  b\\tc"""') == "Append(Str(['a b\\tc']))"


def test_interpolation_spans_point_into_the_file() -> None:
    program = 'print(1)\n"total: {a + b:>4} and {c.d}"\n'
    (_, append) = parse_text(program).body
    assert isinstance(append, nodes.Append) and isinstance(append.value, nodes.Str)
    first, second = (p for p in append.value.parts if isinstance(p, nodes.Interp))
    assert (first.span.line, first.span.column, first.span.text) == (2, 9, "{a + b:>4}")
    assert isinstance(first.expr, nodes.BinOp)
    assert (first.expr.span.column, first.expr.span.text) == (10, "a + b")
    assert (first.expr.right.span.column, first.expr.right.span.text) == (14, "b")
    assert isinstance(second.expr, nodes.Attribute)
    assert (second.expr.span.column, second.expr.span.text) == (25, "c.d")
    assert isinstance(second.expr.value, nodes.Name)
    assert (second.expr.value.span.column, second.expr.value.span.text) == (25, "c")


def test_interpolation_spans_in_a_dedented_string() -> None:
    program = 'x = """\n    one\n      {value}\n    """\n'
    (assign,) = parse_text(program).body
    assert isinstance(assign, nodes.Assign) and isinstance(assign.value, nodes.Str)
    interp = assign.value.parts[1]
    assert isinstance(interp, nodes.Interp)
    assert (interp.span.line, interp.span.column, interp.span.text) == (3, 7, "{value}")
    assert (interp.expr.span.line, interp.expr.span.column) == (3, 8)


# ---------------------------------------------------------------- statements

STATEMENTS = {
    '"Q: {q}\\n"': "Append(Str(['Q: ', Interp(Name('q'), None), '\\n']))",
    "f(x)": "ExprStmt(Call(Name('f'), [Name('x')], []))",
    "x": "ExprStmt(Name('x'))",
    '"a" + b': "ExprStmt(BinOp('+', Str(['a']), Name('b')))",
    "system 'Be brief.'": "Role('system', [Append(Str(['Be brief.']))], True)",
    "user question": "Role('user', [Append(Name('question'))], True)",
    "assistant x + 1": "Role('assistant', [Append(BinOp('+', Name('x'), Const(1)))], True)",
    "assistant gen a(max_tokens=8)": (
        "Role('assistant', [Gen('a', [Keyword('max_tokens', Const(8))])], True)"
    ),
    "assistant select a from xs": "Role('assistant', [Select('a', [], Name('xs'))], True)",
    "user image 'cat.png'": "Role('user', [ImageStmt(Str(['cat.png']))], True)",
    "gen answer": "Gen('answer', [])",
    "gen answer()": "Gen('answer', [])",
    'gen answer(max_tokens=16, stop="\\n", **opts)': (
        "Gen('answer', [Keyword('max_tokens', Const(16)), Keyword('stop', Str(['\\n'])),"
        " Keyword(None, Name('opts'))])"
    ),
    "select label from [' a', ' b']": "Select('label', [], ListExpr([Str([' a']), Str([' b'])]))",
    "select label(method='greedy') from xs": (
        "Select('label', [Keyword('method', Str(['greedy']))], Name('xs'))"
    ),
    "image path": "ImageStmt(Name('path'))",
    "x = 1": "Assign([Name('x')], Const(1))",
    "a, b = pair": "Assign([Name('a'), Name('b')], Name('pair'))",
    "d[k], x.y = 1, 2": None,
    "d['k'] = v": "Assign([Index(Name('d'), Str(['k']))], Name('v'))",
    "x.y = 2": "Assign([Attribute(Name('x'), 'y')], Const(2))",
    "x += 1": "AugAssign(Name('x'), '+', Const(1))",
    "x -= 1": "AugAssign(Name('x'), '-', Const(1))",
    "x *= 2": "AugAssign(Name('x'), '*', Const(2))",
    "x /= 2": "AugAssign(Name('x'), '/', Const(2))",
    "x //= 2": "AugAssign(Name('x'), '//', Const(2))",
    "d[k] %= 2": "AugAssign(Index(Name('d'), Name('k')), '%', Const(2))",
    "pass": "Pass()",
    "break": "Break()",
    "continue": "Continue()",
    "return": "Return(None)",
    "return a + 1": "Return(BinOp('+', Name('a'), Const(1)))",
    "assert x": "Assert(Name('x'), None)",
    "assert x > 0, 'need {x}'": (
        "Assert(Compare(Name('x'), ['>'], [Const(0)]), Str(['need ', Interp(Name('x'), None)]))"
    ),
    "param question": "ParamDecl('question', None)",
    "param n = 3": "ParamDecl('n', Const(3))",
    'import "lib/prompts.sgl" as prompts': "Import('lib/prompts.sgl', None, 'prompts')",
    "import web": "Import(None, 'web', 'web')",
    "import text as t": "Import(None, 'text', 't')",
    'backend "openai:gpt-4o@http://h:1/v1"': "BackendDecl('openai:gpt-4o@http://h:1/v1')",
}


@pytest.mark.parametrize(
    ("text", "expected"), [(k, v) for k, v in STATEMENTS.items() if v], ids=lambda v: str(v)[:40]
)
def test_simple_statement_shape(text: str, expected: str) -> None:
    assert shape(text) == expected


def test_tuple_assignment_has_no_tuple_values() -> None:
    assert error("d[k], x.y = 1, 2\n") == (
        "t.sgl:1:14: syntax error: unexpected `,`\n    d[k], x.y = 1, 2\n                 ^"
    )


BLOCKS = {
    "if a:\n    pass\n": "If(Name('a'), [Pass()], [])",
    "if a: pass\n": "If(Name('a'), [Pass()], [])",
    "if a:\n    x\nelif b:\n    y\nelif c:\n    z\nelse:\n    w\n": (
        "If(Name('a'), [ExprStmt(Name('x'))], [If(Name('b'), [ExprStmt(Name('y'))],"
        " [If(Name('c'), [ExprStmt(Name('z'))], [ExprStmt(Name('w'))])])])"
    ),
    "for x in xs:\n    continue\n": "For(['x'], Name('xs'), [Continue()])",
    "for i, x in enumerate(xs):\n    break\n": (
        "For(['i', 'x'], Call(Name('enumerate'), [Name('xs')], []), [Break()])"
    ),
    "while n < 3:\n    n += 1\n": (
        "While(Compare(Name('n'), ['<'], [Const(3)]), [AugAssign(Name('n'), '+', Const(1))])"
    ),
    "def f():\n    return\n": "FuncDef('f', [], [Return(None)], None)",
    "def f(a, b=1,):\n    return a\n": (
        "FuncDef('f', [Param('a', None), Param('b', Const(1))], [Return(Name('a'))], None)"
    ),
    "user:\n    'Context:\\n'\n    for h in hits:\n        '- {h}'\n": (
        "Role('user', [Append(Str(['Context:\\n'])), For(['h'], Name('hits'),"
        " [Append(Str(['- ', Interp(Name('h'), None)]))])], False)"
    ),
    "system: 'short'\n": "Role('system', [Append(Str(['short']))], False)",
    "tips = fork i in [1, 2]:\n    gen detail\n": (
        "Assign([Name('tips')], Fork('i', ListExpr([Const(1), Const(2)]), None, [Gen('detail', [])]))"
    ),
    "counted = fork n + 1:\n    gen x\n": (
        "Assign([Name('counted')], Fork(None, None, BinOp('+', Name('n'), Const(1)), [Gen('x', [])]))"
    ),
    "fork 3:\n    gen x\n": "Fork(None, None, Const(3), [Gen('x', [])])",
    "fork item in items:\n    'x'\n": "Fork('item', Name('items'), None, [Append(Str(['x']))])",
    "schema City:\n    name: str\n    founded: int?\n    tags: list[str]\n": (
        "SchemaDecl('City', [SchemaField('name', NamedType('str'), False),"
        " SchemaField('founded', NamedType('int'), True),"
        " SchemaField('tags', ListType(NamedType('str')), False)])"
    ),
    "schema A:\n    m: dict[str, list[B]]?\n    size: 'small' | \"large\"\n    # c\n\n    b: bool\n": (
        "SchemaDecl('A', [SchemaField('m', DictType(ListType(NamedType('B'))), True),"
        " SchemaField('size', EnumType(['small', 'large']), False),"
        " SchemaField('b', NamedType('bool'), False)])"
    ),
}


@pytest.mark.parametrize(("text", "expected"), BLOCKS.items(), ids=lambda v: str(v)[:30])
def test_block_statement_shape(text: str, expected: str) -> None:
    assert shape(text) == expected


def test_nested_blocks_and_dedent_to_outer_levels() -> None:
    program = "for a in x:\n    if a:\n        for b in a:\n            pass\nprint(a)\n"
    assert shape(program) == (
        "For(['a'], Name('x'), [If(Name('a'), [For(['b'], Name('a'), [Pass()])], [])])\n"
        "ExprStmt(Call(Name('print'), [Name('a')], []))"
    )


def test_tab_indentation_alone_is_fine() -> None:
    assert shape("if a:\n\tif b:\n\t\tpass\n") == "If(Name('a'), [If(Name('b'), [Pass()], [])], [])"


def test_comments_blank_lines_and_brackets_across_lines() -> None:
    program = "# top\n\nx = [  # open\n    1,\n\n  2,   # two\n]\n    # stray indent in a comment\ny = (x\n  + 1)\n"
    assert shape(program) == (
        "Assign([Name('x')], ListExpr([Const(1), Const(2)]))\n"
        "Assign([Name('y')], BinOp('+', Name('x'), Const(1)))"
    )


def test_program_without_final_newline_and_empty_program() -> None:
    assert shape("if a:\n    x") == "If(Name('a'), [ExprStmt(Name('x'))], [])"
    assert shape("") == shape("\n\n# only a comment") == ""


def test_function_doc_is_the_comment_block_directly_above() -> None:
    program = "# not this\n\n# Answers a question.\n#   Indented.\n#\ndef qa(q):\n    return q\n"
    (func,) = parse_text(program).body
    assert isinstance(func, nodes.FuncDef)
    assert func.doc == "Answers a question.\n  Indented.\n"
    (bare,) = parse_text("x = 1  # not a doc\ndef f():\n    pass\n").body[1:]
    assert isinstance(bare, nodes.FuncDef) and bare.doc is None


# ---------------------------------------------------------------- spans


def test_statement_and_name_spans() -> None:
    program = (
        "x = 1\nif x:\n    gen answer(max_tokens=4)\n    y = [a for a in b]\ndef f(p):\n    pass\n"
    )
    assign, if_stmt, func = parse_text(program, "s.sgl").body
    assert (assign.span.location, assign.span.text) == ("s.sgl:1:1", "x = 1")
    assert isinstance(if_stmt, nodes.If)
    assert (if_stmt.span.line, if_stmt.span.end_line, if_stmt.span.end_column) == (2, 4, 23)
    gen, comp = if_stmt.body
    assert isinstance(gen, nodes.Gen)
    assert gen.span.text == "gen answer(max_tokens=4)"
    assert (gen.name_span.line, gen.name_span.column, gen.name_span.text) == (3, 9, "answer")
    assert gen.args[0].span.text == "max_tokens=4"
    assert isinstance(comp, nodes.Assign)
    assert comp.value.span.text == "[a for a in b]"
    assert isinstance(func, nodes.FuncDef)
    assert (func.name_span.column, func.params[0].span.text) == (5, "p")
    assert (func.span.line, func.span.end_line) == (5, 6)


def test_expression_spans() -> None:
    (assign,) = parse_text("v = not a.b[1:2] in f(x, k=-1) or c\n").body
    assert isinstance(assign, nodes.Assign) and isinstance(assign.value, nodes.BoolOp)
    not_op = assign.value.left
    assert isinstance(not_op, nodes.UnaryOp) and isinstance(not_op.operand, nodes.Compare)
    assert not_op.span.text == "not a.b[1:2] in f(x, k=-1)"
    index = not_op.operand.left
    assert isinstance(index, nodes.Index) and isinstance(index.index, nodes.Slice)
    assert (index.span.text, index.index.span.text) == ("a.b[1:2]", "1:2")
    assert not_op.operand.comparators[0].span.text == "f(x, k=-1)"
    assert assign.value.span.text == "not a.b[1:2] in f(x, k=-1) or c"


def test_elif_and_role_spans() -> None:
    program = "if a:\n    x\nelif b:\n    y\nelse:\n    z\nuser q\n"
    if_stmt, role = parse_text(program).body
    assert isinstance(if_stmt, nodes.If)
    (elif_stmt,) = if_stmt.orelse
    assert (elif_stmt.span.line, elif_stmt.span.end_line) == (3, 6)
    assert role.span.text == "user q"


# ---------------------------------------------------------------- syntax errors

ERRORS = {
    "x = fork i in [1, 2]:\nprint(1)\n": (
        "t.sgl:2:1: syntax error: expected an indented block after `fork …:`\n"
        "    print(1)\n"
        "    ^^^^^"
    ),
    "if x:\n": (
        "t.sgl:1:6: syntax error: expected an indented block after `if …:`\n    if x:\n         ^"
    ),
    "else:\n    pass\n": (
        "t.sgl:1:1: syntax error: `else` without a matching `if`\n    else:\n    ^^^^"
    ),
    "if a:\n    pass\nelse:\nz\n": (
        "t.sgl:4:1: syntax error: expected an indented block after `else:`\n    z\n    ^"
    ),
    "user:\nx\n": (
        "t.sgl:2:1: syntax error: expected an indented block after `user:`\n    x\n    ^"
    ),
    "def f(a):\nreturn a\n": (
        "t.sgl:2:1: syntax error: expected an indented block after `def …:`\n    return a\n    ^^^^^^"
    ),
    "x = \n": "t.sgl:1:5: syntax error: expected an expression after `=`\n    x = \n        ^",
    "y = 1 +\n": "t.sgl:1:8: syntax error: expected an expression after `+`\n    y = 1 +\n           ^",
    "f(a))\n": "t.sgl:1:5: syntax error: unexpected `)`\n    f(a))\n        ^",
    "x = 1 2\n": "t.sgl:1:7: syntax error: unexpected `2`\n    x = 1 2\n          ^",
    "a = b = 1\n": "t.sgl:1:7: syntax error: unexpected `=`\n    a = b = 1\n          ^",
    "x = a ** b\n": "t.sgl:1:7: syntax error: unexpected `**`\n    x = a ** b\n          ^^",
    "def f(:\n": (
        "t.sgl:1:7: syntax error: unexpected `:`, expected `)` or a name\n    def f(:\n          ^"
    ),
    "x = 'abc\n": "t.sgl:1:5: syntax error: unterminated string\n    x = 'abc\n        ^",
    'x = """abc\n': 't.sgl:1:5: syntax error: unterminated string\n    x = """abc\n        ^^^',
    "x = 1 $\n": "t.sgl:1:7: syntax error: unexpected character `$`\n    x = 1 $\n          ^",
    "gen (max_tokens=3)\n": (
        "t.sgl:1:5: syntax error: `gen` needs a variable name: gen NAME(...)\n"
        "    gen (max_tokens=3)\n"
        "        ^"
    ),
    "select from xs\n": (
        "t.sgl:1:8: syntax error: `select` needs a variable name: select NAME from [...]\n"
        "    select from xs\n"
        "           ^^^^"
    ),
    "select x [1]\n": (
        "t.sgl:1:10: syntax error: expected `from` and the choices: select NAME from [...]\n"
        "    select x [1]\n"
        "             ^"
    ),
    "gen x(3)\n": (
        "t.sgl:1:7: syntax error: `gen` takes keyword arguments only, e.g. gen NAME(max_tokens=16)\n"
        "    gen x(3)\n"
        "          ^"
    ),
    "select x('greedy') from xs\n": (
        "t.sgl:1:10: syntax error: `select` takes keyword arguments only,"
        " e.g. select NAME(max_tokens=16)\n"
        "    select x('greedy') from xs\n"
        "             ^^^^^^^^"
    ),
    "x = (1 +\n": "t.sgl:1:5: syntax error: `(` was never closed\n    x = (1 +\n        ^",
    "x = [1,\n  2\n": "t.sgl:1:5: syntax error: `[` was never closed\n    x = [1,\n        ^",
    "if x\n    y\n": "t.sgl:1:5: syntax error: expected `:` at the end of `if …`\n    if x\n        ^",
    "for x in y\n    pass\n": (
        "t.sgl:1:11: syntax error: expected `:` at the end of `for …`\n    for x in y\n              ^"
    ),
    "if x:\n\ty = 1\n        z = 2\n": (
        "t.sgl:3:1: syntax error: mixed tabs and spaces in indentation\n"
        "            z = 2\n"
        "    ^^^^^^^^"
    ),
    "if x:\n \ty = 1\n": (
        "t.sgl:2:1: syntax error: mixed tabs and spaces in indentation\n     \ty = 1\n    ^^"
    ),
    "  x = 1\n": "t.sgl:1:1: syntax error: unexpected indent\n      x = 1\n    ^^",
    "x = 1\n  y = 2\n": "t.sgl:2:3: syntax error: unexpected indent\n      y = 2\n      ^",
    "if x:\n    y\n  z\n": (
        "t.sgl:3:1: syntax error: unindent does not match any outer indentation level\n      z\n    ^^"
    ),
    "user = 1\n": (
        "t.sgl:1:1: syntax error: `user` is a reserved keyword and cannot be used as a name\n"
        "    user = 1\n"
        "    ^^^^"
    ),
    "x = gen\n": (
        "t.sgl:1:5: syntax error: `gen` is a reserved keyword and cannot be used as a name\n"
        "    x = gen\n"
        "        ^^^"
    ),
    "f(from=1)\n": (
        "t.sgl:1:3: syntax error: `from` is a reserved keyword and cannot be used as a name\n"
        "    f(from=1)\n"
        "      ^^^^"
    ),
    "1 = x\n": (
        "t.sgl:1:1: syntax error: cannot assign to this expression: assign to a name, `x[i]` or `x.y`\n"
        "    1 = x\n"
        "    ^"
    ),
    "f() += 1\n": (
        "t.sgl:1:1: syntax error: `+=` needs a name or `x[i]` on its left\n    f() += 1\n    ^^^"
    ),
    "run f\n": "t.sgl:1:5: syntax error: `run` needs a function call: run f(args)\n    run f\n        ^",
    "def f(a=1, b):\n    pass\n": (
        "t.sgl:1:12: syntax error: a parameter without a default cannot follow one with a default\n"
        "    def f(a=1, b):\n"
        "               ^"
    ),
    "def f(a, a):\n    pass\n": (
        "t.sgl:1:10: syntax error: duplicate parameter `a`\n    def f(a, a):\n             ^"
    ),
    "f(a=1, 2)\n": (
        "t.sgl:1:8: syntax error: a positional argument cannot follow keyword arguments\n"
        "    f(a=1, 2)\n"
        "           ^"
    ),
    "f(a=1, a=2)\n": (
        "t.sgl:1:8: syntax error: keyword argument `a` given twice\n    f(a=1, a=2)\n           ^^^"
    ),
    "x = [1 for a in b for c in d]\n": (
        "t.sgl:1:19: syntax error: a list comprehension takes a single `for`\n"
        "    x = [1 for a in b for c in d]\n"
        "                      ^^^"
    ),
    '"{x +}"\n': (
        't.sgl:1:6: syntax error: expected an expression after `+`\n    "{x +}"\n         ^'
    ),
    '"a {b c}"\n': "t.sgl:1:7: syntax error: unexpected `c`\n" + '    "a {b c}"\n' + "          ^",
    '"a {"\n': (
        "t.sgl:1:4: syntax error: unclosed `{` in a string: write `{{` for a literal brace\n"
        '    "a {"\n'
        "       ^"
    ),
    '"a }"\n': (
        "t.sgl:1:4: syntax error: single `}` in a string: write `}}` for a literal brace\n"
        '    "a }"\n'
        "       ^"
    ),
    '"{ }"\n': (
        "t.sgl:1:2: syntax error: empty `{}` in a string: write `{{` and `}}` for literal braces\n"
        '    "{ }"\n'
        "     ^^^"
    ),
    "'\\d+'\n": (
        "t.sgl:1:2: syntax error: unknown escape `\\d`:"
        ' write `\\\\` for a backslash, or use a raw string r"…"\n'
        "    '\\d+'\n"
        "     ^^"
    ),
    "'\\u00g9'\n": (
        "t.sgl:1:2: syntax error: `\\u` needs four hex digits, e.g. \\u00e9\n    '\\u00g9'\n     ^^"
    ),
    'x = """\n    a {oops +}\n    """\n': (
        "t.sgl:2:14: syntax error: expected an expression after `+`\n"
        "        a {oops +}\n"
        "                 ^"
    ),
    'x = """\n    a {oops(}\n    """\n': (
        "t.sgl:2:7: syntax error: unclosed `{` in a string: write `{{` for a literal brace\n"
        "        a {oops(}\n"
        "          ^"
    ),
    'import "{x}.sgl" as y\n': (
        "t.sgl:1:8: syntax error: an import path must be a plain string, without `{…}`\n"
        '    import "{x}.sgl" as y\n'
        "           ^^^^^^^^^"
    ),
    'backend "{b}"\n': (
        "t.sgl:1:9: syntax error: a backend URI must be a plain string, without `{…}`\n"
        '    backend "{b}"\n'
        "            ^^^^^"
    ),
    "schema A:\n    x: list\n": (
        "t.sgl:2:8: syntax error: `list` needs its item type: list[T]\n        x: list\n           ^^^^"
    ),
    "schema A:\n    x: dict[int, str]\n": (
        "t.sgl:2:8: syntax error: a generic field type is `list[T]` or `dict[str, T]`\n"
        "        x: dict[int, str]\n"
        "           ^^^^^^^^^^^^^^"
    ),
    "schema A:\n    x: '{y}'\n": (
        "t.sgl:2:8: syntax error: an enum option must be a plain string, without `{…}`\n"
        "        x: '{y}'\n"
        "           ^^^^^"
    ),
    "schema A:\nx: int\n": (
        "t.sgl:2:1: syntax error: expected an indented block after `schema …:`\n    x: int\n    ^"
    ),
    "import\n": "t.sgl:1:7: syntax error: unexpected end of line, expected a name or a string\n    import\n          ^",
}


@pytest.mark.parametrize(("text", "expected"), ERRORS.items(), ids=list(ERRORS))
def test_syntax_error_message(text: str, expected: str) -> None:
    assert error(text) == expected


def test_error_at_end_of_file_points_after_the_last_token() -> None:
    assert error("x = 1 +") == (
        "t.sgl:1:8: syntax error: expected an expression after `+`\n    x = 1 +\n           ^"
    )


# ---------------------------------------------------------------- examples and fuzzing


@pytest.mark.parametrize("path", EXAMPLES + PROGRAMS, ids=lambda p: p.name)
def test_every_example_and_test_program_parses(path: Path) -> None:
    program = parse(Source(str(path), path.read_text("utf-8")))
    assert program.body


def parse_or_syntax_error(text: str) -> None:
    """The only outcomes allowed: a Program, or an SglSyntaxError with a location."""
    try:
        program = parse_text(text, "fuzz.sgl")
    except SglSyntaxError as err:
        assert err.span is not None
        assert err.render().startswith("fuzz.sgl:")
    else:
        assert isinstance(program, nodes.Program)


CORPUS = [path.read_text("utf-8") for path in EXAMPLES + PROGRAMS]
PIECES = [
    *"()[]{}:,.=+-*/%<>!\"'\\#\n\t {}r",
    '"""',
    "'''",
    "{x}",
    "{{",
    "}}",
    "    ",
    "\t",
    "fork ",
    "gen ",
    "select ",
    " in ",
    " not ",
    "user",
    "def ",
    "if ",
    "else:",
    "schema ",
    "**",
    "\\u",
    "r'",
]


@st.composite
def mutated_programs(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(CORPUS))
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 40)))
        insert = draw(st.sampled_from(["", *PIECES]) | st.text(max_size=5))
        text = text[:start] + insert + text[end:]
    return text


@st.composite
def slices(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(CORPUS))
    start = draw(st.integers(0, len(text)))
    return text[start : draw(st.integers(start, len(text)))]


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(mutated_programs())
def test_mutated_programs_parse_or_fail_with_a_syntax_error(text: str) -> None:
    parse_or_syntax_error(text)


@FUZZ
@given(slices())
def test_program_slices_parse_or_fail_with_a_syntax_error(text: str) -> None:
    parse_or_syntax_error(text)


@FUZZ
@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=3), max_size=30).map("".join))
def test_random_text_parses_or_fails_with_a_syntax_error(text: str) -> None:
    parse_or_syntax_error(text)


# ---------------------------------------------------------------- hostile fuzzing: deep nesting, encodings


parse_text(
    ""
)  # parse raises the recursion limit once; before hypothesis, which warns if a test does


def check_or_located_errors(text: str, name: str = "fuzz.sgl") -> None:
    """Parse and check `text`: every problem is an SglError with a location, never a crash;
    the language server's analysis of the same text does not raise either."""
    parse_or_syntax_error(text)
    try:
        program = parse_text(text, name)
    except SglSyntaxError:
        pass
    else:
        assert all(problem.span is not None for problem in resolve.check(program))
    Document.analyse(Path(name), text)


NESTING_OPENERS = ["(", "[", "{", "-", "not ", "f(", "x[", '"{', "'{", "a if b else ", "{1: "]
CLOSERS = {"f(": ")", "x[": "]", '"{': '}"', "'{": "}'", "{1: ": "}", "(": ")", "[": "]", "{": "}"}
CHAIN_OPERATORS = ["+", "-", "*", " and ", " or ", " < ", ".y", "()", "[0]", " if 1 else "]


@st.composite
def deeply_nested(draw: st.DrawFn) -> str:
    """Brackets, signs and conditionals nested up to 3,000 deep, operator chains up to 3,000
    long and blocks up to 150 deep, around the limits, sometimes cut or mutated."""
    count = draw(st.integers(0, 3000) | st.sampled_from([199, 200, 201, 1999, 2000, 2001]))
    kind = draw(st.sampled_from(["nest", "chain", "blocks"]))
    if kind == "nest":
        pattern = draw(st.lists(st.sampled_from(NESTING_OPENERS), min_size=1, max_size=3))
        closing = "".join(CLOSERS.get(opener, "") for opener in reversed(pattern))
        text = "x = " + "".join(pattern) * count + "1" + closing * count + "\n"
    elif kind == "chain":
        operator = draw(st.sampled_from(CHAIN_OPERATORS))
        text = "print(" + operator.join(["1"] * (count + 1)) + ")\n"
    else:
        unit = draw(st.sampled_from([" ", "\t", "  "]))
        header = draw(st.sampled_from(["if true:", "for i in [1]:", "def f():", "user:"]))
        levels = count % 151
        lines = [unit * level + header for level in range(levels)]
        text = "\n".join([*lines, unit * levels + "pass"]) + "\n"
    if draw(st.booleans()):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 5)))
        text = text[:start] + draw(st.sampled_from(["", *PIECES])) + text[end:]
    return text


@FUZZ
@given(deeply_nested())
def test_deep_nesting_parses_or_fails_with_a_located_error(text: str) -> None:
    check_or_located_errors(text)


HOSTILE_BYTES = [
    codecs.BOM_UTF8,
    b"\xff",
    b"\x80",
    b"\xc0\x80",  # an overlong NUL
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xe2\x80",  # a truncated sequence
    b"\x00",
    b"\r",
    b"\r\n",
    "\u2028".encode(),
    "\u0085".encode(),
    "\ufeff".encode(),
]
# lone surrogates in a path: the names of files whose names are not UTF-8
HOSTILE_NAMES = ["prog.sgl", os.fsdecode(b"n\xff.sgl"), os.fsdecode(b"\xc3(\x80.sgl")]


@st.composite
def hostile_files(draw: st.DrawFn) -> bytes:
    """A program's bytes with other line ends, a BOM, and invalid or invisible bytes."""
    data = draw(st.sampled_from(CORPUS)).encode("utf-8")
    data = data.replace(b"\n", draw(st.sampled_from([b"\n", b"\r\n", b"\r"])))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(HOSTILE_BYTES) | st.binary(max_size=4)) + data[at:]
    return codecs.BOM_UTF8 + data if draw(st.booleans()) else data


@FUZZ
@given(hostile_files(), st.sampled_from(HOSTILE_NAMES))
def test_hostile_files_load_or_fail_with_located_errors(data: bytes, name: str) -> None:
    """Read through the loader, as the main file and as an import: only located errors."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        (Path(folder) / "lib.sgl").write_bytes(data)
        main = Path(folder) / "main.sgl"
        main.write_text('import "lib.sgl" as lib\n')
        for program_path in (path, main):
            loader = Loader()
            try:
                program = loader.load(program_path)
            except SglError as error:
                assert isinstance(error, SglSyntaxError)
                assert error.span is not None
                assert error.render().startswith(f"{program_path}:")
                continue
            assert all(problem.span is not None for problem in loader.check(program))
        text = data.decode("utf-8", errors="surrogateescape")  # what an editor could send
        check_or_located_errors(text, name)
