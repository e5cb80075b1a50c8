"""Constrained decoding: a regex, a JSON schema, a list of choices or a Lark grammar becomes a
token mask per step.

    params = SamplingParams(max_new_tokens=16, constraint=ConstraintSpec.regex(r"-?(0|[1-9][0-9]*)"))
    # what the engine does per request (Engine.submit):
    tc = engine.constraints.get(params.constraint).start()  # TokenConstraint: its own matcher
    logits = tc.process_logits(logits, output_ids)          # before sampling: forbidden -> -inf
    tc.advance(token_id)                                    # after sampling
    tc.forced_token()                                       # the only token allowed next, if any
    tc.is_finished                                          # nothing but EOS can follow: stop

The grammar engine (grammar_engines.py) is llguidance by default (sub-ms compiles,
~0.1 ms masks) or xgrammar (`EngineConfig.grammar_engine`). A spec compiles once per engine
(cached by its kind, source and prefix); each request starts its own matcher from it. Contract
with the engine: EOS is allowed only when the output so far is a complete match; when the grammar
admits nothing more the request ends at once (finish "stop"); a request that reaches
max_new_tokens first ends with "length": its output is cut, not a match. Stop strings still
apply and can cut a constrained output anywhere.

Jump-forward (`EngineConfig.jump_forward`): when the mask allows exactly one token (and no EOS),
masked decoding can only pick that token, so the scheduler appends it without a forward step;
it enters the KV with the next decode step. Greedy output is the same token for token
(tests/runtime/test_jump_forward.py). Text that is forced but can be tokenized several ways is
still decoded step by step: choosing a tokenization for the model would change its output.

Conventions: `\\d` means an ASCII digit (llguidance's Rust regex would also accept other Unicode
digits, which small models do produce); JSON is written on one line with `json.dumps`'
separators (", " and ": ") and no other whitespace, so a model cannot loop on spaces; a complete
match also ends where the model's top token would leave the grammar (see TokenConstraint); a
spec's `prefix` (token healing: the prompt text the backend took back) comes first, verbatim.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from sgl_lang.runtime.grammar_engines import (
    CompiledGrammar,
    GrammarEngine,
    GrammarMatcher,
    ascii_digits,
    make_grammar_engine,
    unpack_bitmask,
)

__all__ = ["Constraint", "ConstraintCache", "ConstraintSpec", "TokenConstraint", "ascii_digits"]

CONSTRAINT_KINDS = ("regex", "json", "choices", "grammar")


@dataclass(frozen=True)
class ConstraintSpec:
    """What the output must be, as plain data (hashable: it is the compile cache key).
    `source` is the regex, the JSON schema as JSON text, the choices as a JSON list, or a Lark
    grammar; the output is `prefix` followed by a match. Build one with
    `ConstraintSpec.regex(...)`, `.json(...)`, `.choices(...)` or `.grammar(...)`, and
    `.with_prefix(text)`."""

    kind: str
    source: str
    prefix: str = ""

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

    @classmethod
    def grammar(cls, source: str) -> ConstraintSpec:
        """The output parses in full with `source`, a context-free grammar in Lark syntax
        (start rule `start`; llguidance's dialect, which adds e.g. `%json`)."""
        return cls("grammar", source)

    def with_prefix(self, prefix: str) -> ConstraintSpec:
        """The same constraint after the literal text `prefix` (token healing)."""
        return replace(self, prefix=prefix)


class TokenConstraint:
    """One request's matcher: the mask before each sampling step, the sampled token after it.
    Not thread-safe (the engine thread owns it). The mask of the current state is computed once
    and kept until the next token. `num_masks`, `mask_seconds` (mask + apply) and
    `advance_seconds` count its cost.

    With `end_on_exit` (the engine's default), a complete match also ends where the model's own
    top token would leave the grammar: then only EOS is allowed. Plain masking would make the
    model go on inside the grammar instead (`7` -> `72000000` for an int: small models rarely
    pick EOS mid-sentence). The output matches either way."""

    def __init__(
        self,
        matcher: GrammarMatcher,
        vocab_size: int,
        eos_token_ids: Sequence[int],
        end_on_exit: bool = True,
    ) -> None:
        self._matcher, self.vocab_size, self.end_on_exit = matcher, vocab_size, end_on_exit
        self._bitmask = torch.zeros((vocab_size + 31) // 32, dtype=torch.int32)  # 1 bit/token
        self._is_eos = torch.zeros(vocab_size, dtype=torch.bool)
        self._is_eos[list(eos_token_ids)] = True
        self._allowed: Tensor | None = None  # the mask of the current state, once computed
        self.num_consumed_tokens = 0
        self.num_masks = 0
        self.mask_seconds = 0.0
        self.advance_seconds = 0.0

    @property
    def is_finished(self) -> bool:
        """No token but EOS can follow: the output is complete."""
        allowed = self._mask()
        return not bool((allowed & ~self._is_eos).any())

    @property
    def is_accepting(self) -> bool:
        """The output so far is a complete match (more may still follow)."""
        return bool((self._mask() & self._is_eos).any())

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
        return self._mask()

    def forced_token(self) -> int | None:
        """The only token the grammar allows next, when there is one and the output is not
        complete (so masked decoding could pick nothing else); else None."""
        allowed = self._mask()
        if bool(allowed[self._is_eos].any()):
            return None
        token_ids = allowed.nonzero()
        return int(token_ids[0, 0]) if len(token_ids) == 1 else None

    def advance(self, token_id: int) -> None:
        """Consume a token. Raises ValueError if the grammar fails on it (a resource limit of
        the grammar engine; or a token the mask excluded, which is a bug)."""
        started = time.perf_counter()
        if not self._matcher.consume(token_id):
            raise ValueError(
                f"the constraint failed at output token {self.num_consumed_tokens + 1} "
                f"(id {token_id}): {self._matcher.error()}"
            )
        self._allowed = None
        self.num_consumed_tokens += 1
        self.advance_seconds += time.perf_counter() - started

    def _mask(self) -> Tensor:
        if self._allowed is None:
            started = time.perf_counter()
            self._matcher.fill_bitmask(self._bitmask)
            self._allowed = unpack_bitmask(self._bitmask, self.vocab_size)
            self.mask_seconds += time.perf_counter() - started
            self.num_masks += 1
        return self._allowed


class Constraint:
    """A compiled spec: starts a TokenConstraint (its own matcher) for every request."""

    def __init__(self, spec: ConstraintSpec, grammar: CompiledGrammar, vocab_size: int,
                 eos_token_ids: Sequence[int]) -> None:  # fmt: skip
        self.spec, self._grammar, self.vocab_size = spec, grammar, vocab_size
        self.eos_token_ids = tuple(eos_token_ids)

    @property
    def compile_seconds(self) -> float:
        return self._grammar.compile_seconds

    def start(self, end_on_exit: bool = True) -> TokenConstraint:
        """A fresh TokenConstraint for one request."""
        return TokenConstraint(self._grammar.start(), self.vocab_size, self.eos_token_ids,
                               end_on_exit)  # fmt: skip


class ConstraintCache:
    """Compiles specs against one tokenizer with the grammar engine `engine` (see
    grammar_engines.py), keeping the `max_size` most recently used. Thread-safe."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int],
                 max_size: int = 256, engine: str = "llguidance") -> None:  # fmt: skip
        self.vocab_size, self._eos_token_ids = vocab_size, list(eos_token_ids)
        self._tokenizer, self.engine_name = tokenizer, engine
        self._engine: GrammarEngine | None = None  # made on first use
        self._compiled: OrderedDict[ConstraintSpec, Constraint] = OrderedDict()
        self._max_size = max_size
        self._lock = threading.Lock()

    def get(self, spec: ConstraintSpec) -> Constraint:
        """The compiled `spec`; raises ValueError naming the problem if it does not compile.
        Compiles run outside the lock: a slow one holds up no other."""
        with self._lock:
            if (hit := self._compiled.get(spec)) is not None:
                self._compiled.move_to_end(spec)
                return hit
            if self._engine is None:
                self._engine = make_grammar_engine(
                    self.engine_name, self._tokenizer, self.vocab_size, self._eos_token_ids
                )
            engine = self._engine
        compiled = Constraint(spec, engine.compile(spec), self.vocab_size, self._eos_token_ids)
        with self._lock:
            self._compiled[spec] = compiled
            if len(self._compiled) > self._max_size:
                self._compiled.popitem(last=False)
        return compiled


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
