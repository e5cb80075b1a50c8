"""Writes syntaxes/sgl.tmLanguage.json (regexes are easier to read here than in JSON).

Run `python scripts/build_grammar.py` after editing; the JSON file is what VS Code loads and
what the tests check, so commit both.
"""

import json
from pathlib import Path

NAME = r"[A-Za-z_][A-Za-z0-9_]*"
BUILTINS = (
    "len range str int float bool list dict min max sum abs round sorted reversed enumerate "
    "zip any all print json_dumps json_loads run_batch meta tool"
).split()


def word(*words: str) -> str:
    return r"\b(?:" + "|".join(words) + r")\b"


def string_rule(kind: str, quote: str, raw: bool) -> dict:
    triple = len(quote) == 3
    name = f"string.quoted.{'raw.' if raw else ''}{'triple' if triple else kind}.sgl"
    escaped = "".join("\\" + c for c in quote)
    rule = {
        "name": name,
        "begin": ("([rR])" if raw else "()") + escaped,
        "beginCaptures": {
            "0": {"name": "punctuation.definition.string.begin.sgl"},
            "1": {"name": "storage.type.string.raw.sgl"},
        },
        "end": escaped if triple else f"({escaped})|$",
        "endCaptures": {"0": {"name": "punctuation.definition.string.end.sgl"}},
        "patterns": [] if raw else [{"include": "#escapes"}, {"include": "#interpolation"}],
    }
    return rule


ROLE = r"\b(system|user|assistant)\b"

grammar = {
    "$schema": "https://raw.githubusercontent.com/martinring/tmlanguage/master/tmlanguage.json",
    "name": "SGL",
    "scopeName": "source.sgl",
    "fileTypes": ["sgl"],
    "patterns": [{"include": "#statements"}],
    "repository": {
        "statements": {
            "patterns": [
                {"include": "#comment"},
                {"include": "#schema"},
                {"include": "#declarations"},
                {"include": "#generation"},
                {"include": "#expressions"},
            ]
        },
        "expressions": {
            "patterns": [
                {"include": "#comment"},
                {"include": "#strings"},
                {"include": "#roles"},
                {"include": "#keywords"},
                {"include": "#numbers"},
                {"include": "#builtins"},
                {"include": "#calls"},
                {"include": "#operators"},
                {"include": "#parentheses"},
                {"include": "#punctuation"},
            ]
        },
        "comment": {
            "name": "comment.line.number-sign.sgl",
            "match": r"(#).*$",
            "captures": {"1": {"name": "punctuation.definition.comment.sgl"}},
        },
        "declarations": {
            "patterns": [
                {
                    "match": rf"\b(def)\s+({NAME})",
                    "captures": {
                        "1": {"name": "storage.type.function.sgl"},
                        "2": {"name": "entity.name.function.sgl"},
                    },
                },
                {
                    "match": rf"\b(param)\s+({NAME})",
                    "captures": {
                        "1": {"name": "storage.modifier.param.sgl"},
                        "2": {"name": "variable.other.constant.param.sgl"},
                    },
                },
                {
                    "match": rf"\b(import)\b(?:\s+({NAME}))?",
                    "captures": {
                        "1": {"name": "keyword.control.import.sgl"},
                        "2": {"name": "entity.name.namespace.sgl"},
                    },
                },
                {
                    "match": rf"\b(as)\s+({NAME})",
                    "captures": {
                        "1": {"name": "keyword.control.import.sgl"},
                        "2": {"name": "entity.name.namespace.sgl"},
                    },
                },
                {"match": r"\bbackend\b", "name": "keyword.other.backend.sgl"},
            ]
        },
        "schema": {
            "name": "meta.schema.sgl",
            "begin": rf"^([ \t]*)(schema)\s+({NAME})\s*(:)",
            "beginCaptures": {
                "2": {"name": "storage.type.schema.sgl"},
                "3": {"name": "entity.name.type.schema.sgl"},
                "4": {"name": "punctuation.separator.colon.sgl"},
            },
            "end": r"^(?!\1[ \t]+\S)(?=[ \t]*[^\s#])",
            "patterns": [
                {"include": "#comment"},
                {
                    "match": rf"^[ \t]+({NAME})\s*(:)",
                    "captures": {
                        "1": {"name": "variable.other.property.field.sgl"},
                        "2": {"name": "punctuation.separator.colon.sgl"},
                    },
                },
                {"match": word("str", "int", "float", "bool", "list", "dict"), "name": "support.type.sgl"},
                {"match": NAME, "name": "entity.name.type.sgl"},
                {"match": r"\?", "name": "keyword.operator.optional.sgl"},
                {"match": r"\|", "name": "keyword.operator.union.sgl"},
                {"match": r"[\[\],]", "name": "punctuation.separator.sgl"},
                {"include": "#strings"},
            ],
        },
        "generation": {
            "patterns": [
                {
                    "name": "meta.generation.sgl",
                    "begin": rf"\b(gen|select)\s+({NAME})\s*(\()",
                    "beginCaptures": {
                        "1": {"name": "keyword.control.generation.sgl"},
                        "2": {"name": "variable.other.generated.sgl"},
                        "3": {"name": "punctuation.definition.arguments.begin.sgl"},
                    },
                    "end": r"\)",
                    "endCaptures": {"0": {"name": "punctuation.definition.arguments.end.sgl"}},
                    "patterns": [
                        {
                            "match": rf"\b({NAME})\s*(=)(?!=)",
                            "captures": {
                                "1": {"name": "variable.parameter.generation.sgl"},
                                "2": {"name": "keyword.operator.assignment.sgl"},
                            },
                        },
                        {"include": "#expressions"},
                    ],
                },
                {
                    "match": rf"\b(gen|select)\s+({NAME})",
                    "captures": {
                        "1": {"name": "keyword.control.generation.sgl"},
                        "2": {"name": "variable.other.generated.sgl"},
                    },
                },
            ]
        },
        "roles": {"match": ROLE, "name": "keyword.other.role.sgl"},
        "keywords": {
            "patterns": [
                {"match": r"\bnot[ \t]+in\b", "name": "keyword.operator.logical.sgl"},
                {"match": word("and", "or", "not", "in"), "name": "keyword.operator.logical.sgl"},
                {
                    "match": word(
                        "if", "elif", "else", "for", "while", "break", "continue", "return",
                        "pass", "assert", "fork", "run", "from", "image",
                    ),
                    "name": "keyword.control.sgl",
                },
                {"match": word("gen", "select"), "name": "keyword.control.generation.sgl"},
                {"match": word("def"), "name": "storage.type.function.sgl"},
                {"match": word("schema"), "name": "storage.type.schema.sgl"},
                {"match": word("param"), "name": "storage.modifier.param.sgl"},
                {"match": word("import", "as"), "name": "keyword.control.import.sgl"},
                {"match": word("backend"), "name": "keyword.other.backend.sgl"},
                {"match": word("true", "false", "none"), "name": "constant.language.sgl"},
            ]
        },
        "numbers": {
            "patterns": [
                {
                    "match": r"(?<![A-Za-z0-9_])(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|\b[0-9]+[eE][-+]?[0-9]+\b",
                    "name": "constant.numeric.float.sgl",
                },
                {"match": r"\b[0-9]+\b", "name": "constant.numeric.integer.sgl"},
            ]
        },
        "calls": {
            "match": rf"\b({NAME})(?=\s*\()",
            "captures": {"1": {"name": "entity.name.function.call.sgl"}},
        },
        "builtins": {"match": word(*BUILTINS), "name": "support.function.builtin.sgl"},
        "operators": {
            "patterns": [
                {"match": r"\*\*|//=?|[-+*/%]=|==|!=|<=|>=|[<>]", "name": "keyword.operator.sgl"},
                {"match": r"=", "name": "keyword.operator.assignment.sgl"},
                {"match": r"[-+*/%]", "name": "keyword.operator.arithmetic.sgl"},
            ]
        },
        "parentheses": {
            "begin": r"\(",
            "beginCaptures": {"0": {"name": "punctuation.parenthesis.begin.sgl"}},
            "end": r"\)",
            "endCaptures": {"0": {"name": "punctuation.parenthesis.end.sgl"}},
            "patterns": [{"include": "#expressions"}],
        },
        "punctuation": {
            "patterns": [
                {"match": r":", "name": "punctuation.separator.colon.sgl"},
                {"match": r",", "name": "punctuation.separator.comma.sgl"},
                {"match": r"\.", "name": "punctuation.accessor.sgl"},
                {"match": r"[\[\]{}]", "name": "punctuation.bracket.sgl"},
            ]
        },
        "strings": {
            "patterns": [
                string_rule("triple", '"""', True),
                string_rule("triple", "'''", True),
                string_rule("double", '"', True),
                string_rule("single", "'", True),
                string_rule("triple", '"""', False),
                string_rule("triple", "'''", False),
                string_rule("double", '"', False),
                string_rule("single", "'", False),
            ]
        },
        "escapes": {
            "patterns": [
                {"match": r"\\(?:u[0-9a-fA-F]{4}|.|$)", "name": "constant.character.escape.sgl"},
                {"match": r"\{\{|\}\}", "name": "constant.character.escape.brace.sgl"},
            ]
        },
        "interpolation": {
            "name": "meta.interpolation.sgl",
            "begin": r"\{",
            "beginCaptures": {"0": {"name": "punctuation.section.interpolation.begin.sgl"}},
            "end": r"\}",
            "endCaptures": {"0": {"name": "punctuation.section.interpolation.end.sgl"}},
            "contentName": "source.sgl.embedded",
            "patterns": [
                {"match": r"(:)[^{}\[\]()'\"\n]*(?=\})", "name": "storage.type.format.sgl"},
                {"include": "#braces"},
                {"include": "#expressions"},
            ],
        },
        "braces": {
            "begin": r"\{",
            "beginCaptures": {"0": {"name": "punctuation.bracket.sgl"}},
            "end": r"\}",
            "endCaptures": {"0": {"name": "punctuation.bracket.sgl"}},
            "patterns": [{"include": "#braces"}, {"include": "#expressions"}],
        },
    },
}

out = Path(__file__).resolve().parent.parent / "syntaxes" / "sgl.tmLanguage.json"
out.write_text(json.dumps(grammar, indent=2) + "\n", encoding="utf-8")
print(f"wrote {out}")
