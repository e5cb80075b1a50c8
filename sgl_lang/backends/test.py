"""The deterministic test backend (`test`, `test:REPLIES.json`): no model, reproducible output.

Every output is drawn from a `random.Random` seeded with a SHA-256 of the prompt's plain text
and `request.seed`, so the same request always gives the same result, in any process.

- Free text is words from a small vocabulary; one token = one word, `.` or `\\n`. A sentence may
  end the turn ("eos"); `stop` and `max_tokens` behave as in a real engine.
- Constraints are always met: a regex yields a string that matches it in full, a JSON schema a
  valid document, choices one of the options. Constrained output ignores `stop` and
  `max_tokens` (it is never cut, so it always satisfies its constraint).
- Sampling parameters other than `seed` are recorded in `requests` but change nothing.
- `test:PATH` reads canned replies from a JSON file, either a list of strings (used in order,
  one per `generate`, then generated text) or a list of `{"match": REGEX, "reply": TEXT}`
  (the first whose regex is found in the prompt text; in `score`, a matching reply that is one
  of the choices wins). Replies go through `stop`/`max_tokens`; under a constraint a reply
  must satisfy it.
- Tokens are whitespace-separated words: `prompt_tokens` counts the prompt's words,
  `cached_tokens` the longest word prefix shared with an earlier prompt (or prompt plus
  output) or a `cache_prefix` hint.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import itertools
import json
import math
import random
import re
import string
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgl_lang.backends.json_schema import json_problem, resolve_ref
from sgl_lang.protocol import (
    CONSTRAINT_KINDS,
    SELECT_METHODS,
    Backend,
    BackendError,
    Capabilities,
    Choices,
    Constraint,
    GenRequest,
    GenResult,
    JsonSchema,
    Prompt,
    Regex,
)

VOCAB = (
    "the a one this that model answer question fox dog cat river city light time day "
    "quick lazy small large bright quiet runs sees finds makes takes gives over under "
    "near with from into is was and but then"
).split()
MAX_REMEMBERED_PROMPTS = 1024
EOS = None  # in a token stream: the model ends its turn here


def create(target: str) -> TestBackend:
    """`test` (target "") or `test:PATH` (canned replies from the JSON file at PATH)."""
    return TestBackend(load_replies(Path(target)) if target else None, target)


@dataclass(frozen=True)
class Reply:
    """A canned reply; `match` (a regex searched in the prompt text) is None in list form."""

    text: str
    match: re.Pattern[str] | None = None


class TestBackend(Backend):
    """A deterministic backend recording its calls: `requests` (every `GenRequest`, in call
    order), `prefix_hints` (every `cache_prefix` prompt) and `max_in_flight` (the peak number
    of concurrent `generate` calls)."""

    __test__ = False  # not a pytest test class

    def __init__(self, replies: list[Reply] | None = None, path: str = "") -> None:
        self.name = f"test:{path}" if path else "test"
        self.capabilities = Capabilities(CONSTRAINT_KINDS, frozenset(SELECT_METHODS), images=True)
        self.replies = replies or []
        self.requests: list[GenRequest] = []
        self.prefix_hints: list[Prompt] = []
        self.max_in_flight = 0
        self._num_in_flight = 0
        self._next_reply = 0
        self._seen_words: list[list[str]] = []

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        self.requests.append(request)
        self._num_in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._num_in_flight)
        try:
            prompt_text = request.prompt.plain_text()
            reply = self._reply_for(prompt_text)
            await asyncio.sleep(0)
            rng = _rng(prompt_text, request.seed)
            if request.constraint is not None:
                text = _constrained(request.constraint, reply, rng)
                num_tokens = await _stream(_pieces(text), on_chunk)
                finish_reason = "eos"
            else:
                tokens: Iterable[str | None] = _free_tokens(rng, prompt_text)
                if reply is not None:
                    tokens = itertools.chain(_pieces(reply.text), [EOS], tokens)
                text, finish_reason, num_tokens = await _emit(tokens, request, on_chunk)
            prompt_words = prompt_text.split()
            cached_tokens = self._remember(prompt_words)
            self._remember((prompt_text + text).split())
            return GenResult(
                text, finish_reason, max(1, len(prompt_words)), num_tokens, cached_tokens
            )
        finally:
            self._num_in_flight -= 1

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        if method not in SELECT_METHODS:
            raise BackendError(f"unknown select method `{method}`")
        prompt_text = prompt.plain_text()
        self._remember(prompt_text.split())
        reply = self._matching_reply(prompt_text)
        scores = []
        for choice in choices:
            if reply is not None and reply.text == choice:
                scores.append(0.0)
            else:
                digest = _digest(prompt_text, choice, method)
                scores.append(-0.01 - int.from_bytes(digest[:4]) / 2**32 * 10)
        return scores

    async def cache_prefix(self, prompt: Prompt) -> None:
        self.prefix_hints.append(prompt)
        self._remember(prompt.plain_text().split())

    def _reply_for(self, prompt_text: str) -> Reply | None:
        """The canned reply for this prompt: the next one in list form, the first match in
        match form; None when there is none."""
        if self.replies and self.replies[0].match is None:
            if self._next_reply == len(self.replies):
                return None
            self._next_reply += 1
            return self.replies[self._next_reply - 1]
        return self._matching_reply(prompt_text)

    def _matching_reply(self, prompt_text: str) -> Reply | None:
        return next((r for r in self.replies if r.match and r.match.search(prompt_text)), None)

    def _remember(self, words: list[str]) -> int:
        """Add `words` to the prefix memory; returns its longest shared prefix with earlier ones."""
        longest = max((_common_prefix_len(words, seen) for seen in self._seen_words), default=0)
        self._seen_words.append(words)
        del self._seen_words[:-MAX_REMEMBERED_PROMPTS]
        return longest


def load_replies(path: Path) -> list[Reply]:
    """Canned replies from a JSON file: all strings, or all `{"match": ..., "reply": ...}`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BackendError(f"cannot read test replies `{path}`: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackendError(f"test replies `{path}` are not valid JSON: {exc}") from None
    expected = 'a JSON list of strings or of {"match": REGEX, "reply": TEXT} objects'
    if not isinstance(data, list):
        raise BackendError(f"test replies `{path}` must be {expected}")
    if all(isinstance(item, str) for item in data):
        return [Reply(item) for item in data]
    replies = []
    for index, item in enumerate(data):
        if not (
            isinstance(item, dict)
            and set(item) == {"match", "reply"}
            and all(isinstance(value, str) for value in item.values())
        ):
            raise BackendError(f"test replies `{path}`: item {index} is not {expected}")
        try:
            replies.append(Reply(item["reply"], re.compile(item["match"])))
        except re.error as exc:
            raise BackendError(f"test replies `{path}`: item {index}: bad regex: {exc}") from None
    return replies


# ---------------------------------------------------------------- tokens and streaming


def _digest(*parts: object) -> bytes:
    return hashlib.sha256(json.dumps(parts, default=repr).encode()).digest()


def _rng(prompt_text: str, seed: int | None) -> random.Random:
    return random.Random(int.from_bytes(_digest(prompt_text, seed)[:8]))


def _common_prefix_len(a: list[str], b: list[str]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _pieces(text: str) -> list[str]:
    """`text` as tokens: each word with the whitespace before it."""
    return re.findall(r"\s*\S+|\s+", text)


def _free_tokens(rng: random.Random, prompt_text: str) -> Iterator[str | None]:
    """Endless sentences of vocabulary words; after a sentence, maybe an `EOS` or a newline."""
    line_start = not prompt_text or prompt_text[-1].isspace()
    while True:
        for position in range(rng.randint(3, 9)):
            word = rng.choice(VOCAB)
            word = word.capitalize() if position == 0 else word
            yield word if line_start else " " + word
            line_start = False
        yield "."
        roll = rng.random()
        if roll < 0.3:
            yield EOS
        elif roll < 0.5:
            yield "\n"
            line_start = True


async def _emit(
    tokens: Iterable[str | None], request: GenRequest, on_chunk: Callable[[str], None] | None
) -> tuple[str, str, int]:
    """Apply `max_tokens`, `stop` and `ignore_eos` to a token stream, streaming what is final
    (never a possible start of a stop string). Returns text, finish reason, token count."""
    stops = [stop for stop in request.stop if stop]
    text, num_sent, num_tokens, finish_reason = "", 0, 0, "eos"
    for token in tokens:
        if num_tokens >= request.max_tokens:
            finish_reason = "length"
            break
        if token is EOS:
            if request.ignore_eos:
                continue
            break
        await asyncio.sleep(0)
        text += token
        num_tokens += 1
        found = [index for index in (text.find(stop) for stop in stops) if index >= 0]
        if found:
            text, finish_reason = text[: min(found)], "stop"
            break
        num_final = len(text) - _held_back_len(text, stops)
        if on_chunk is not None and num_final > num_sent:
            on_chunk(text[num_sent:num_final])
            num_sent = num_final
    if on_chunk is not None and len(text) > num_sent:
        on_chunk(text[num_sent:])
    return text, finish_reason, num_tokens


def _held_back_len(text: str, stops: list[str]) -> int:
    """The length of the longest end of `text` that could start a stop string."""
    return max(
        (k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0
    )


async def _stream(pieces: list[str], on_chunk: Callable[[str], None] | None) -> int:
    for piece in pieces:
        await asyncio.sleep(0)
        if on_chunk is not None:
            on_chunk(piece)
    return len(pieces)


# ---------------------------------------------------------------- constrained output


def _constrained(constraint: Constraint, reply: Reply | None, rng: random.Random) -> str:
    """Text meeting `constraint`: the canned reply if there is one (it must comply), else sampled."""
    if reply is not None:
        problem = constraint_problem(reply.text, constraint)
        if problem:
            raise BackendError(f"test reply {reply.text!r} does not meet the constraint: {problem}")
        return reply.text
    if isinstance(constraint, Regex):
        return sample_regex(constraint.pattern, rng)
    if isinstance(constraint, JsonSchema):
        return json.dumps(sample_json(constraint.schema, rng))
    if not constraint.options:
        raise BackendError("`choices` needs at least one option")
    return rng.choice(constraint.options)


def constraint_problem(text: str, constraint: Constraint) -> str | None:
    """Why `text` does not meet `constraint`, or None when it does."""
    if isinstance(constraint, Regex):
        return None if re.fullmatch(constraint.pattern, text) else f"regex {constraint.pattern!r}"
    if isinstance(constraint, Choices):
        return None if text in constraint.options else f"choices {list(constraint.options)!r}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON ({exc})"
    return json_problem(value, constraint.schema)


_PARSER: Any = importlib.import_module("re._parser")  # no typeshed stubs
_PRINTABLE = [chr(code) for code in range(32, 127)]
_CATEGORIES = {  # name -> (what we emit, what it matches)
    "CATEGORY_DIGIT": (string.digits, r"\d"),
    "CATEGORY_NOT_DIGIT": (string.ascii_letters, r"\D"),
    "CATEGORY_SPACE": (" ", r"\s"),
    "CATEGORY_NOT_SPACE": (string.ascii_letters + string.digits, r"\S"),
    "CATEGORY_WORD": (string.ascii_letters + string.digits + "_", r"\w"),
    "CATEGORY_NOT_WORD": (" .,-!?", r"\W"),
}
_MAX_EXTRA_REPEATS = 3
_MAX_ATTEMPTS = 50


def sample_regex(pattern: str, rng: random.Random) -> str:
    """A string that `re.fullmatch`es `pattern`, walking its parse tree with `rng`. Unbounded
    repeats run a few times past their minimum; anchors and lookarounds are skipped and the
    result checked (retrying); backreferences are refused."""
    try:
        parsed = _PARSER.parse(pattern)
    except re.error as exc:
        raise BackendError(f"invalid regex {pattern!r}: {exc}") from None
    for _ in range(_MAX_ATTEMPTS):
        text = _RegexSampler(rng).sequence(parsed)
        if re.fullmatch(pattern, text):
            return text
    raise BackendError(f"test backend could not sample a match for regex {pattern!r}")


class _RegexSampler:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def sequence(self, items: Iterable[tuple[Any, Any]]) -> str:
        return "".join(self.item(str(op), arg) for op, arg in items)

    def item(self, op: str, arg: Any) -> str:
        rng = self.rng
        if op == "LITERAL":
            return chr(arg)
        if op == "NOT_LITERAL":
            return self.pick(lambda char: ord(char) != arg)
        if op == "ANY":
            return rng.choice(string.ascii_letters + string.digits + " ")
        if op == "IN":
            return self.in_set(arg)
        if op == "BRANCH":
            return self.sequence(rng.choice(arg[1]))
        if op == "SUBPATTERN":
            return self.sequence(arg[3])
        if op == "ATOMIC_GROUP":
            return self.sequence(arg)
        if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, body = arg
            high = low + _MAX_EXTRA_REPEATS if high == _PARSER.MAXREPEAT else high
            count = rng.randint(low, min(high, low + _MAX_EXTRA_REPEATS))
            return "".join(self.sequence(body) for _ in range(count))
        if op in ("AT", "ASSERT", "ASSERT_NOT"):
            return ""
        if op in ("GROUPREF", "GROUPREF_EXISTS"):
            raise BackendError("test backend cannot sample from regex with backreferences")
        raise BackendError(f"test backend cannot sample regex element {op}")

    def in_set(self, items: list[tuple[Any, Any]]) -> str:
        if items and str(items[0][0]) == "NEGATE":
            return self.pick(lambda char: not _in_set(items[1:], char))
        op, arg = self.rng.choice(items)
        if str(op) == "LITERAL":
            return chr(arg)
        if str(op) == "RANGE":
            return chr(self.rng.randint(*arg))
        return self.rng.choice(_CATEGORIES[str(arg)][0])

    def pick(self, allowed: Callable[[str], bool]) -> str:
        candidates = [char for char in _PRINTABLE if allowed(char)]
        candidates = candidates or [char for char in "\t\n\r\xe9\u03bb\u4e2d" if allowed(char)]
        if not candidates:
            raise BackendError("test backend cannot find a character for a regex class")
        return self.rng.choice(candidates)


def _in_set(items: list[tuple[Any, Any]], char: str) -> bool:
    for op, arg in items:
        name = str(op)
        if name == "LITERAL" and ord(char) == arg:
            return True
        if name == "RANGE" and arg[0] <= ord(char) <= arg[1]:
            return True
        if name == "CATEGORY" and re.fullmatch(_CATEGORIES[str(arg)][1], char):
            return True
    return False


# ---------------------------------------------------------------- JSON Schema

_MAX_DEPTH = 24  # recursion through $ref past this is an error
_SHALLOW_DEPTH = 4  # past this, optional properties are left out and arrays kept minimal


def sample_json(schema: dict, rng: random.Random) -> Any:
    """A value valid for `schema`. Supports type (or a list of types), enum, const,
    properties/required/additionalProperties, items/minItems/maxItems, string
    minLength/maxLength/pattern, number bounds, anyOf/oneOf/allOf and local `$ref`s."""
    return _JsonSampler(schema, rng).value(schema, 0)


class _JsonSampler:
    def __init__(self, root: dict, rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def value(self, schema: dict, depth: int) -> Any:
        rng = self.rng
        if depth > _MAX_DEPTH:
            raise BackendError("test backend: the JSON schema nests too deeply (recursive $ref?)")
        schema = resolve_ref(schema, self.root)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.value(rng.choice(schema[key]), depth + 1)
        if "allOf" in schema:
            return self.value(_merge(schema, self.root), depth + 1)
        kind = schema.get("type", _implied_type(schema))
        kind = rng.choice(kind) if isinstance(kind, list) else kind
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            low = schema.get("minItems", 0)
            high = min(schema.get("maxItems", low + 3), low + (0 if depth > _SHALLOW_DEPTH else 3))
            item = schema.get("items", {})
            return [self.value(item, depth + 1) for _ in range(rng.randint(low, high))]
        if kind == "string":
            return self.string(schema)
        if kind in ("integer", "number"):
            return self.number(schema, kind)
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "null":
            return None
        raise BackendError(f"test backend cannot sample JSON schema type {kind!r}")

    def object(self, schema: dict, depth: int) -> dict:
        required = set(schema.get("required", ()))
        result = {}
        for name, sub in schema.get("properties", {}).items():
            keep = name in required or (depth <= _SHALLOW_DEPTH and self.rng.random() < 0.5)
            if keep:
                result[name] = self.value(sub, depth + 1)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not schema.get("properties"):
            for key in self.rng.sample(VOCAB, self.rng.randint(0, 2)):
                result[key] = self.value(extra, depth + 1)
        return result

    def string(self, schema: dict) -> str:
        if "pattern" in schema:
            return sample_regex(schema["pattern"], self.rng)
        text = " ".join(self.rng.choices(VOCAB, k=self.rng.randint(1, 3)))
        text = text.ljust(schema.get("minLength", 0), "x")
        return text[: schema.get("maxLength", len(text))]

    def number(self, schema: dict, kind: str) -> int | float:
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        low = (0 if high is None else min(0, high - 100)) if low is None else low
        high = low + 100 if high is None else high
        for _ in range(_MAX_ATTEMPTS):
            if kind == "integer" and math.ceil(low) <= math.floor(high):
                value: int | float = self.rng.randint(math.ceil(low), math.floor(high))
            else:
                value = round(self.rng.uniform(low, high), 2)
            if json_problem(value, schema) is None:
                return value
        raise BackendError(f"test backend cannot sample a {kind} for the schema {schema!r}")


def _merge(schema: dict, root: dict) -> dict:
    """`allOf` flattened into one schema (properties and required combined)."""
    merged = {key: value for key, value in schema.items() if key != "allOf"}
    for part in schema["allOf"]:
        part = resolve_ref(part, root)
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _implied_type(schema: dict) -> str:
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    return "array" if "items" in schema else "string"
