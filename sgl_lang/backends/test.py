"""The deterministic test backend (`test`, `test:REPLIES.json`): no model, reproducible output.

Every output is drawn from a `random.Random` seeded with a SHA-256 of the prompt's plain text
and `request.seed`, so the same request always gives the same result, in any process.

- Free text is words from a small vocabulary; one token = one word, `.` or `\\n`. A sentence may
  end the turn ("eos"); `stop` and `max_tokens` behave as in a real engine.
- Constraints are always met (`samplers.py`): a regex yields a string that matches it in full,
  a JSON schema a valid document, choices one of the options. Constrained output ignores `stop` and
  `max_tokens` (it is never cut, so it always satisfies its constraint).
- With `tools`, a canned reply that is a call of a listed tool (`{"name": ..., "arguments":
  {...}}`) is that call; any other reply is the answer. Without replies the call or answer is
  drawn from the constrained tool-call form (`tool_output_schema`), as a small model would
  write it; `tool_choice` "none" always answers.
- Sampling parameters other than `seed` are recorded in `requests` but change nothing;
  `min_tokens`, `stop_regex` and `include_stop` apply to free text as in a real engine.
- `logprobs=K` gives each token a log-prob drawn from the prompt and the token, and K
  alternatives (the token first, then vocabulary words less likely); `reasoning` moves a
  reply's `<think>…</think>` block to `GenResult.reasoning` (streamed output is the answer).
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
import itertools
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sgl_lang.backends.samplers import VOCAB, sample
from sgl_lang.protocol import (
    CONSTRAINT_KINDS,
    GEN_OPTIONS,
    SELECT_METHODS,
    Backend,
    BackendError,
    Capabilities,
    Constraint,
    GenRequest,
    GenResult,
    JsonSchema,
    Prompt,
    TokenLogprob,
    ToolCall,
    read_tool_output,
    tool_output_schema,
    with_reasoning,
)
from sgl_lang.user_grammars import output_problem

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
        self.capabilities = Capabilities(
            CONSTRAINT_KINDS,
            frozenset(SELECT_METHODS),
            images=True,
            tools=True,
            gen_options=GEN_OPTIONS,
        )
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
            if request.tools:
                call = _tool_call(request, reply, rng)
                if call is not None:
                    self._remember(prompt_text.split())
                    num_words = max(1, len(prompt_text.split()))
                    return GenResult("", "tool_calls", num_words, 1, 0, tool_calls=(call,))
            streamed = None if request.reasoning else on_chunk
            if request.constraint is not None:
                text = _constrained(request.constraint, reply, rng)
                num_tokens = await _stream(_pieces(text), streamed)
                finish_reason = "eos"
            else:
                tokens: Iterable[str | None] = _free_tokens(rng, prompt_text)
                if reply is not None:
                    tokens = itertools.chain(_pieces(reply.text), [EOS], tokens)
                text, finish_reason, num_tokens = await _emit(tokens, request, streamed)
            prompt_words = prompt_text.split()
            cached_tokens = self._remember(prompt_words)
            self._remember((prompt_text + text).split())
            result = GenResult(
                text, finish_reason, max(1, len(prompt_words)), num_tokens, cached_tokens
            )
            if request.logprobs is not None:
                result = replace(result, logprobs=_logprobs(prompt_text, text, request.logprobs))
            if request.reasoning:
                result = with_reasoning(result)
                if on_chunk is not None and result.text:
                    on_chunk(result.text)
            return result
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


def _tool_call(request: GenRequest, reply: Reply | None, rng: random.Random) -> ToolCall | None:
    """The call a request with tools makes: a canned reply that is a call of a listed tool
    (`{"name": ..., "arguments": {...}}`), or else, without a reply, a call drawn from the
    tool-call form (`tool_output_schema`); None for an answer (or `tool_choice` "none")."""
    if request.tool_choice == "none":
        return None
    call_id = f"call_{rng.randrange(10**6)}"
    if reply is not None:
        call = read_tool_output(reply.text, call_id).call
        listed = {tool.name for tool in request.tools}
        return call if call is not None and call.name in listed else None
    schema = tool_output_schema(request.tools, request.tool_choice)
    return read_tool_output(sample(JsonSchema(schema), rng), call_id).call


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
    """Apply `max_tokens`, `min_tokens`, `stop`, `stop_regex`, `include_stop` and
    `ignore_eos` to a token stream, streaming what is final (never a possible start of a stop
    string; with `stop_regex`, nothing before the end). Returns text, finish reason, token
    count."""
    stops = [stop for stop in request.stop if stop]
    text, num_sent, num_tokens, finish_reason = "", 0, 0, "eos"
    for token in tokens:
        if num_tokens >= request.max_tokens:
            finish_reason = "length"
            break
        if token is EOS:
            if request.ignore_eos or num_tokens < request.min_tokens:
                continue
            break
        await asyncio.sleep(0)
        text += token
        num_tokens += 1
        if (end := _stop_end(text, stops, request)) is not None:
            text, finish_reason = text[:end], "stop"
            break
        num_final = 0 if request.stop_regex else len(text) - _held_back_len(text, stops)
        if on_chunk is not None and num_final > num_sent:
            on_chunk(text[num_sent:num_final])
            num_sent = num_final
    if on_chunk is not None and len(text) > num_sent:
        on_chunk(text[num_sent:])
    return text, finish_reason, num_tokens


def _stop_end(text: str, stops: list[str], request: GenRequest) -> int | None:
    """Where `text` ends if a stop string or the stop regex occurs in it (after the match with
    `include_stop`, before it without); None if neither does."""
    found = [(index, index + len(stop)) for stop in stops if (index := text.find(stop)) >= 0]
    if request.stop_regex and (match := re.search(request.stop_regex, text)):
        found.append((match.start(), match.end()))
    if not found:
        return None
    start, end = min(found)
    return end if request.include_stop else start


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


def _constrained(constraint: Constraint, reply: Reply | None, rng: random.Random) -> str:
    """Text meeting `constraint`: the canned reply if there is one (it must comply), else sampled."""
    if reply is None:
        return sample(constraint, rng)
    problem = output_problem(constraint, reply.text)
    if problem:
        raise BackendError(f"test reply {reply.text!r} does not meet the constraint: {problem}")
    return reply.text


def _logprobs(prompt_text: str, text: str, num_top: int) -> tuple[TokenLogprob, ...]:
    """Each token of `text` with a log-prob drawn from the prompt and its position, and
    `num_top` alternatives: the token itself first, then vocabulary words less likely."""
    logprobs = []
    for position, piece in enumerate(_pieces(text)):
        digest = _digest(prompt_text, position, piece)
        logprob = -int.from_bytes(digest[:4]) / 2**32 * 5
        others = [
            (" " + VOCAB[byte % len(VOCAB)], logprob - 1 - i) for i, byte in enumerate(digest)
        ]
        top = ((piece, logprob), *others)[:num_top]
        logprobs.append(TokenLogprob(piece, logprob, top))
    return tuple(logprobs)
