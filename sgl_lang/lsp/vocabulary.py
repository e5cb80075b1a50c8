"""The words an editor or the REPL offers: keywords, built-ins, modules and `gen` arguments, with docs."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any, NamedTuple

from sgl_lang.gen_args import GEN_ARGUMENTS, SELECT_ARGUMENTS
from sgl_lang.stdlib import BUILTIN_NAMES, MODULE_NAMES
from sgl_lang.transform import KEYWORDS

__all__ = [
    "BUILTIN_NAMES",
    "GEN_ARGUMENTS",
    "GEN_ARGUMENT_DOCS",
    "KEYWORDS",
    "KEYWORD_DOCS",
    "MODULE_NAMES",
    "SELECT_ARGUMENTS",
    "SELECT_ARGUMENT_DOCS",
    "Completion",
    "builtin_doc",
    "complete",
    "module_doc",
    "module_exports",
]

GEN_ARGUMENT_DOCS: dict[str, str] = {
    "max_tokens": "max_tokens=int: at most this many tokens are generated (default 256).",
    "stop": "stop=str | list[str]: generation ends before any of these strings; "
    "the stop string is kept neither in the value nor in the state.",
    "temperature": "temperature=float: sampling temperature (default 0: greedy, reproducible).",
    "top_p": "top_p=float: nucleus sampling; keep the smallest set of tokens with this mass.",
    "top_k": "top_k=int: sample among the k most likely tokens (0 = off).",
    "min_p": "min_p=float: drop tokens less likely than min_p times the most likely one.",
    "frequency_penalty": "frequency_penalty=float: penalise tokens by how often they appeared.",
    "presence_penalty": "presence_penalty=float: penalise tokens that appeared at all.",
    "seed": "seed=int: the random seed of sampling.",
    "ignore_eos": "ignore_eos=bool: keep generating past the end-of-turn token.",
    "regex": 'regex="…": the output must match this regular expression in full.',
    "json": "json=Schema: the output is JSON valid for a `schema` (or a JSON Schema dict); "
    "the bound value is the parsed object.",
    "type": "type=int | float | bool: the output is that literal; the bound value is converted.",
    "choices": "choices=[…]: the output is exactly one of these strings (decided by decoding).",
    "heal": "heal=bool: token healing at the prompt/generation boundary (default true).",
    "grammar": 'grammar="…": the output parses with this context-free grammar (Lark syntax, '
    "start rule `start`).",
    "min_tokens": "min_tokens=int: the model cannot end its turn before this many tokens.",
    "stop_regex": 'stop_regex="…": generation ends at the first match of this regex.',
    "include_stop": "include_stop=bool: keep the stop string (or regex match) in the value.",
    "logprobs": "logprobs=int: meta(NAME).logprobs lists each token's log-prob and its K "
    "most likely alternatives.",
    "reasoning": "reasoning=bool | int: the model's reasoning goes to meta(NAME).reasoning, "
    "the variable binds the answer (an int: a budget of reasoning tokens).",
}
"""One line per `gen` argument (docs/language.md, "`gen` arguments")."""

SELECT_ARGUMENT_DOCS: dict[str, str] = {
    "method": 'method="normalized" | "greedy" | "unconditional": how choices are ranked — '
    "mean token log-probability (default), the first token, or log-probability minus "
    "the choice's likelihood without the prompt.",
}

_CONTEXT_BUILTINS = {
    "meta": "meta(name) -> dict: what the `gen`/`select` that bound `name` on this state "
    "reported: finish reason and token counts, or the score of every choice.",
    "run_batch": "run_batch(f, rows, parallel=8) -> list: `run f(**row)` for every dict of "
    "`rows`, at most `parallel` at once; the states in row order.",
}

KEYWORD_DOCS: dict[str, str] = {
    "gen": "gen NAME(args): generate text, append it to the prompt and bind NAME.",
    "select": "select NAME(method=…) from CHOICES: append the best of the strings in CHOICES "
    "and bind it to NAME.",
    "fork": "fork NAME in E: / fork N: run the block once per item, concurrently, each on a "
    "copy of the current state; the value is the list of branches.",
    "run": "run f(args): call `f` on a fresh, empty state; the value is that state.",
    "system": "system E / system: block — a system message.",
    "user": "user E / user: block — a user message.",
    "assistant": "assistant E / assistant: block — an assistant message.",
    "image": "image E: append an image (a path, an URL or bytes).",
    "param": "param NAME [= default]: a program input (`--set NAME=VALUE`).",
    "schema": "schema NAME: a JSON schema declared by its fields, usable as `json=NAME`.",
    "import": 'import MODULE / import "path.sgl" as NAME',
    "backend": 'backend "URI": the program\'s default backend.',
}


def builtin_doc(name: str) -> str | None:
    """The docstring of an always-in-scope built-in, or None."""
    if name in _CONTEXT_BUILTINS:
        return _CONTEXT_BUILTINS[name]
    if name not in BUILTIN_NAMES:
        return None
    from sgl_lang.stdlib.builtins import BUILTINS

    return _doc_of(BUILTINS.get(name))


@cache
def module_exports(module: str) -> dict[str, Any]:
    """The exports of a standard-library module (importing it), or {} if unknown."""
    if module not in MODULE_NAMES:
        return {}
    from sgl_lang.stdlib.modules import load_module

    return dict(load_module(module).exports)


def module_doc(module: str, attr: str | None = None) -> str | None:
    """The doc of a standard-library module, or of one of its exports."""
    if module not in MODULE_NAMES:
        return None
    if attr is None:
        source = importlib.import_module(f"sgl_lang.stdlib.{module}")
        return inspect.getdoc(source)
    exports = module_exports(module)
    if attr not in exports:
        return None
    value = exports[attr]
    return _doc_of(value) if callable(value) else f"{module}.{attr} = {value!r}"


def _doc_of(value: Any) -> str | None:
    doc = inspect.getdoc(value) if value is not None else None
    return doc.strip() if doc else None


# ---------------------------------------------------------------- completion


class Completion(NamedTuple):
    """A word to offer and what it is: keyword, builtin, name, argument, module or attribute."""

    word: str
    kind: str


_WORD_AT_END = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
_ATTRIBUTE_AT_END = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)?$")
_GEN_OPEN = re.compile(r"\b(gen|select)\s+[A-Za-z_][A-Za-z0-9_]*\s*\(([^()]*)$")
_IMPORT_AT_END = re.compile(r"^\s*import\s+([A-Za-z_][A-Za-z0-9_]*)?$")


def complete(
    line: str, names: Iterable[str], attributes: Callable[[str], Iterable[str]]
) -> list[Completion]:
    """What to offer at the end of `line` (the text of the current line before the cursor).

    `names` are the names in scope; `attributes(name)` the attributes of the value named `name`
    (empty when unknown). Where `gen x(` and `select x(` expect an argument name, only their
    argument names are offered (their arguments are always named).
    """
    if _in_string(line):
        return []
    if (found := _IMPORT_AT_END.search(line)) is not None:
        return _matching(found.group(1) or "", [(m, "module") for m in sorted(MODULE_NAMES)])
    if (found := _ATTRIBUTE_AT_END.search(line)) is not None:
        members = [(attr, "attribute") for attr in sorted(set(attributes(found.group(1))))]
        return _matching(found.group(2) or "", members)
    word_match = _WORD_AT_END.search(line)
    prefix = word_match.group(0) if word_match else ""
    before = line[: len(line) - len(prefix)]
    gen_open = _GEN_OPEN.search(before)
    if gen_open is not None and re.search(r"(^|[(,])\s*$", gen_open.group(2)):
        keyword = gen_open.group(1)
        arguments = GEN_ARGUMENTS if keyword == "gen" else SELECT_ARGUMENTS
        return _matching(prefix, [(name, "argument") for name in sorted(arguments)])
    candidates = [(name, "name") for name in sorted(set(names))]
    candidates += [(name, "builtin") for name in sorted(BUILTIN_NAMES)]
    candidates += [(name, "keyword") for name in sorted(KEYWORDS)]
    return _matching(prefix, candidates)


def _matching(prefix: str, candidates: list[tuple[str, str]]) -> list[Completion]:
    seen: set[str] = set()
    result = []
    for word, kind in candidates:
        if word.startswith(prefix) and word not in seen and not word.startswith("_"):
            seen.add(word)
            result.append(Completion(word, kind))
    return result


def _in_string(line: str) -> bool:
    """Whether the end of `line` is inside a one-line string literal (outside any `{…}`)."""
    quote: str | None = None
    depth = 0
    index = 0
    while index < len(line):
        char = line[index]
        if quote is None:
            if char == "#":
                return True
            if char in "\"'":
                quote, depth = char, 0
        elif char == "\\":
            index += 1
        elif char == "{" and depth >= 0:
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
        elif char == quote and depth == 0:
            quote = None
        index += 1
    return quote is not None and depth == 0
