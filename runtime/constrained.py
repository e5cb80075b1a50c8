"""Constrained decoding: a regex, a JSON schema or a list of choices becomes a token mask per step.

    params = SamplingParams(max_new_tokens=16, constraint=ConstraintSpec.regex(r"-?(0|[1-9][0-9]*)"))
    # what the engine does per request (Engine.submit):
    tc = engine.constraints.get(params.constraint).start()  # TokenConstraint: its own matcher
    logits = tc.process_logits(logits, output_ids)          # before sampling: forbidden -> -inf
    tc.advance(token_id)                                    # after sampling
    tc.is_finished                                          # nothing but EOS can follow: stop

The grammar engine is llguidance (ENV.md §6: sub-ms compiles, ~0.1 ms masks). A spec compiles
once per engine into a `Constraint` (cached by kind and source); each request starts its own
matcher from it. Contract with the engine: EOS is allowed only when the output so far is a
complete match; when the grammar admits nothing more the request ends at once (finish "stop");
a request that reaches max_new_tokens first ends with "length": its output is cut, not a match.
Stop strings still apply and can cut a constrained output anywhere.

Conventions: `\\d` means an ASCII digit (llguidance's Rust regex would also accept other Unicode
digits, which small models do produce); JSON is written on one line with `json.dumps`'
separators (", " and ": ") and no other whitespace, so a model cannot loop on spaces; a complete
match also ends where the model's top token would leave the grammar (see TokenConstraint).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import torch
from torch import Tensor

CONSTRAINT_KINDS = ("regex", "json", "choices")
JSON_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class ConstraintSpec:
    """What the output must be, as plain data (hashable: it is the compile cache key).
    `source` is the regex, the JSON schema as JSON text, or the choices as a JSON list.
    Build one with `ConstraintSpec.regex(...)`, `.json(...)` or `.choices(...)`."""

    kind: str
    source: str

    def __post_init__(self) -> None:
        if self.kind not in CONSTRAINT_KINDS:
            raise ValueError(
                f"ConstraintSpec.kind must be one of {CONSTRAINT_KINDS}, got {self.kind!r}"
            )

    @classmethod
    def regex(cls, pattern: str) -> ConstraintSpec:
        """The whole output fullmatches `pattern` (Rust regex syntax, no look-around)."""
        return cls("regex", pattern)

    @classmethod
    def json(cls, schema: Mapping[str, Any] | str) -> ConstraintSpec:
        """The output is one line of JSON valid for `schema` (a JSON Schema dict or its text)."""
        parsed = json.loads(schema) if isinstance(schema, str) else schema
        return cls("json", json.dumps(parsed))  # key order kept: it is the output order

    @classmethod
    def choices(cls, options: Sequence[str]) -> ConstraintSpec:
        """The output is exactly one of `options` (non-empty strings)."""
        if isinstance(options, str) or not options or not all(options):
            raise ValueError("ConstraintSpec.choices needs a list of non-empty strings")
        return cls("choices", json.dumps(list(options)))


class TokenConstraint:
    """One request's matcher: the mask before each sampling step, the sampled token after it.
    Not thread-safe (the engine thread owns it). `num_masks`, `mask_seconds` (mask + apply) and
    `advance_seconds` count its cost.

    With `end_on_exit` (the engine's default), a complete match also ends where the model's own
    top token would leave the grammar: then only EOS is allowed. Plain masking would make the
    model go on inside the grammar instead (`7` -> `72000000` for an int: small models rarely
    pick EOS mid-sentence). The output matches either way."""

    def __init__(
        self,
        matcher: llguidance.LLMatcher,
        vocab_size: int,
        eos_token_ids: Sequence[int],
        end_on_exit: bool = True,
    ) -> None:
        self._matcher, self.vocab_size, self.end_on_exit = matcher, vocab_size, end_on_exit
        self._bitmask = torch.zeros((vocab_size + 31) // 32, dtype=torch.int32)  # 1 bit/token
        self._shifts = torch.arange(32, dtype=torch.int32)
        self._is_eos = torch.zeros(vocab_size, dtype=torch.bool)
        self._is_eos[list(eos_token_ids)] = True
        self.num_consumed_tokens = 0
        self.num_masks = 0
        self.mask_seconds = 0.0
        self.advance_seconds = 0.0

    @property
    def is_finished(self) -> bool:
        """No token but EOS can follow: the output is complete."""
        return self._matcher.is_stopped()

    @property
    def is_accepting(self) -> bool:
        """The output so far is a complete match (more may still follow)."""
        return self._matcher.is_accepting()

    def process_logits(self, logits: Tensor, output_ids: Sequence[int]) -> Tensor:
        """The engine's hook (SamplingParams.logits_processor): `logits` [vocab_size] with the
        tokens the grammar forbids after `output_ids` at -inf."""
        allowed = self.allowed_tokens(output_ids)
        started = time.perf_counter()
        if self.end_on_exit and self.is_accepting and not allowed[int(logits.argmax())]:
            allowed = allowed & self._is_eos
        logits = torch.where(allowed, logits, float("-inf"))
        self.mask_seconds += time.perf_counter() - started
        return logits

    def allowed_tokens(self, output_ids: Sequence[int]) -> Tensor:
        """Bool [vocab_size] mask of the tokens the grammar allows after `output_ids` (EOS only
        on a complete match). Tokens not yet advanced over are consumed first."""
        for token_id in output_ids[self.num_consumed_tokens :]:
            self.advance(token_id)
        started = time.perf_counter()
        bitmask = self._bitmask  # not llguidance.torch: importing it starts torch.compile
        self._matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), bitmask.numel() * 4)
        bits = (bitmask[:, None] >> self._shifts) & 1  # [words, 32]: token 32 * word + bit
        allowed = bits.view(-1)[: self.vocab_size].bool()
        self.mask_seconds += time.perf_counter() - started
        self.num_masks += 1
        return allowed

    def advance(self, token_id: int) -> None:
        """Consume a sampled token. A token the mask excluded is a bug: it raises."""
        started = time.perf_counter()
        if not self._matcher.consume_token(token_id):
            raise RuntimeError(f"constraint rejected token {token_id}: {self._matcher.get_error()}")
        self.num_consumed_tokens += 1
        self.advance_seconds += time.perf_counter() - started


class Constraint:
    """A compiled spec: a matcher in its start state, copied for every request."""

    def __init__(self, spec: ConstraintSpec, matcher: llguidance.LLMatcher, vocab_size: int,
                 eos_token_ids: Sequence[int], compile_seconds: float) -> None:  # fmt: skip
        self.spec, self._matcher, self.vocab_size = spec, matcher, vocab_size
        self.eos_token_ids, self.compile_seconds = tuple(eos_token_ids), compile_seconds

    def start(self, end_on_exit: bool = True) -> TokenConstraint:
        """A fresh TokenConstraint for one request (a copy of the start state, ~10 µs)."""
        matcher = self._matcher.deep_copy()
        return TokenConstraint(matcher, self.vocab_size, self.eos_token_ids, end_on_exit)


class ConstraintCache:
    """Compiles specs against one tokenizer, keeping the `max_size` most recently used.
    Thread-safe. The llguidance tokenizer (~0.4 s to build) is made on the first use."""

    def __init__(
        self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int], max_size: int = 256
    ) -> None:
        self._hf_tokenizer, self.vocab_size = tokenizer, vocab_size
        self._eos_token_ids = list(eos_token_ids)
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[ConstraintSpec, Constraint] = OrderedDict()
        self._max_size = max_size
        self._lock = threading.Lock()

    def get(self, spec: ConstraintSpec) -> Constraint:
        """The compiled `spec`; raises ValueError naming the problem if it does not compile."""
        with self._lock:
            if (hit := self._compiled.get(spec)) is not None:
                self._compiled.move_to_end(spec)
                return hit
            compiled = self._compile(spec)
            self._compiled[spec] = compiled
            if len(self._compiled) > self._max_size:
                self._compiled.popitem(last=False)
            return compiled

    def _compile(self, spec: ConstraintSpec) -> Constraint:
        if self._ll_tokenizer is None:
            self._ll_tokenizer = llguidance.hf.from_tokenizer(
                self._hf_tokenizer, n_vocab=self.vocab_size, eos_token=self._eos_token_ids or None
            )
        started = time.perf_counter()
        matcher = llguidance.LLMatcher(self._ll_tokenizer, grammar_of(spec), log_level=0)
        if matcher.is_error():
            raise ValueError(f"invalid {spec.kind} constraint: {matcher.get_error()}")
        seconds = time.perf_counter() - started
        return Constraint(spec, matcher, self.vocab_size, self._eos_token_ids, seconds)


def grammar_of(spec: ConstraintSpec) -> str:
    """The llguidance grammar text of a spec (not yet checked: LLMatcher does that)."""
    if spec.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(ascii_digits(spec.source))
    if spec.kind == "json":
        return llguidance.LLMatcher.grammar_from_json_schema(spec.source, overrides=JSON_FORMAT)
    options = json.loads(spec.source)  # a Lark alternation of JSON-quoted string literals
    return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(map(json.dumps, options)))


def ascii_digits(pattern: str) -> str:
    """`pattern` with `\\d` as `[0-9]` (`0-9` inside a class) and `\\D` as `[^0-9]` outside one."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            escaped = pattern[i + 1]
            if escaped == "d":
                out.append("0-9" if in_class else "[0-9]")
            elif escaped == "D" and not in_class:
                out.append("[^0-9]")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if char == "[" and not in_class:
            in_class = True
            start = i + 1 + (pattern[i + 1 : i + 2] == "^")
            if pattern[start : start + 1] == "]":  # a leading `]` is a literal
                out.append(pattern[i : start + 1])
                i = start + 1
                continue
        elif char == "]" and in_class:
            in_class = False
        out.append(char)
        i += 1
    return "".join(out)


class ConstrainedDecoder:
    """An IncrementalDecoder that also advances the request's TokenConstraint on every token
    and reports `stopped` once the constraint is finished, its text fully released."""

    def __init__(self, decoder: Any, constraint: TokenConstraint) -> None:
        self._decoder, self.constraint = decoder, constraint
        self._finished = False

    @property
    def stopped(self) -> bool:
        return self._finished or self._decoder.stopped

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.constraint.advance(token_id)
        text = self._decoder.push(token_id)
        if self.constraint.is_finished and not self._decoder.stopped:
            self._finished = True
            text += self._decoder.flush()  # the engine does not flush a stopped decoder
        return text

    def flush(self) -> str:
        return "" if self.stopped else self._decoder.flush()
