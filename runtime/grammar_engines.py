"""Grammar engines: a ConstraintSpec compiled against one tokenizer, and per-request matchers.

    engine = make_grammar_engine("llguidance", tokenizer, vocab_size, eos_token_ids)
    compiled = engine.compile(spec)         # slow part, cached by ConstraintCache (constrained.py)
    matcher = compiled.start()              # one request's parse state
    matcher.fill_bitmask(bitmask)           # int32 [(vocab_size + 31) // 32]: bit t = token t ok
    matcher.consume(token_id)               # False: the token was not allowed (error state)

Two engines: `llguidance` (the default; sub-ms compiles) and `xgrammar` (an optional extra,
`pip install sgl-lang[xgrammar]`; ~10-200 ms compiles). Both use the same bitmask layout (token
t is bit t % 32 of word t // 32) and allow EOS exactly when the output so far is a complete
match. Both apply the conventions of constrained.py: `\\d` is an ASCII digit; JSON is one line
with ", " and ": " separators; a spec's `prefix` (token healing) must come first, verbatim.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from sgl_lang.runtime.config import GRAMMAR_ENGINES

if TYPE_CHECKING:
    from sgl_lang.runtime.constrained import ConstraintSpec

# llguidance's resource limits (its defaults, stated): a grammar that needs more fails with a
# ValueError at compile or, if the limit is reached while decoding, fails its request alone
GRAMMAR_LIMITS = {
    "max_grammar_size": 500_000,  # symbols in the grammar's productions
    "initial_lexer_fuel": 1_000_000,  # building the regex ASTs (~50k/ms)
    "step_lexer_fuel": 200_000,  # lexer work per token mask (~14k/ms)
    "step_max_items": 50_000,  # Earley items per token mask (~20k/ms)
    "max_lexer_states": 250_000,  # lexer states (~1-2 kB each)
}
JSON_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
JSON_SEPARATORS = (", ", ": ")


class GrammarMatcher(Protocol):
    """One request's position in a grammar. Not thread-safe: the engine thread owns it."""

    def fill_bitmask(self, bitmask: Tensor) -> None:
        """Write the tokens allowed next into `bitmask` (EOS only on a complete match); raise
        ValueError if the grammar fails here (a resource limit, a grammar with no way on)."""

    def consume(self, token_id: int) -> bool:
        """Advance over `token_id`; False (and an error state) if it was not allowed."""

    def error(self) -> str:
        """Why the matcher is in an error state ("" when it is not)."""


class CompiledGrammar(Protocol):
    """A compiled spec: cheap to start a matcher from, shared by every request using it."""

    compile_seconds: float

    def start(self) -> GrammarMatcher: ...


class GrammarEngine(ABC):
    """Compiles specs for one tokenizer. `compile` raises ValueError naming the problem."""

    name: str

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.eos_token_ids = list(eos_token_ids)

    @abstractmethod
    def compile(self, spec: ConstraintSpec) -> CompiledGrammar: ...


def make_grammar_engine(
    name: str, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]
) -> GrammarEngine:
    """The engine called `name` (one of GRAMMAR_ENGINES); xgrammar is imported only here."""
    if name == "llguidance":
        return LLGuidanceEngine(tokenizer, vocab_size, eos_token_ids)
    if name == "xgrammar":
        return XGrammarEngine(tokenizer, vocab_size, eos_token_ids)
    raise ValueError(f"unknown grammar engine {name!r}; expected one of {GRAMMAR_ENGINES}")


# -- llguidance -------------------------------------------------------------------------------


class _LLGuidanceMatcher:
    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher

    def fill_bitmask(self, bitmask: Tensor) -> None:
        # not llguidance.torch: importing it starts torch.compile
        self._matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), bitmask.numel() * 4)
        if self._matcher.is_error():
            raise ValueError(f"the constraint failed: {self.error()}")

    def consume(self, token_id: int) -> bool:
        return bool(self._matcher.consume_token(token_id))

    def error(self) -> str:
        return _llguidance_error(self._matcher)


class _LLGuidanceGrammar:
    def __init__(self, matcher: Any, compile_seconds: float) -> None:
        self._matcher, self.compile_seconds = matcher, compile_seconds

    def start(self) -> GrammarMatcher:
        return _LLGuidanceMatcher(self._matcher.deep_copy())  # ~10 µs


class LLGuidanceEngine(GrammarEngine):
    """llguidance: a matcher in its start state per spec, deep-copied for every request. The
    llguidance tokenizer (~0.4 s to build) is made on the first compile. Compiling computes the
    first mask too, so a grammar that fails at once (a schema that only refers to itself, a
    regex past the lexer's limits) fails to compile; `GRAMMAR_LIMITS` bound the work."""

    name = "llguidance"
    _ll_tokenizer: Any = None

    def compile(self, spec: ConstraintSpec) -> CompiledGrammar:
        import llguidance
        import llguidance.hf

        if self._ll_tokenizer is None:
            self._ll_tokenizer = llguidance.hf.from_tokenizer(
                self.tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_token_ids or None
            )
        started = time.perf_counter()
        limits = llguidance.LLParserLimits(verbose_errors=False, **GRAMMAR_LIMITS)
        grammar = llguidance_grammar(spec)
        matcher = llguidance.LLMatcher(self._ll_tokenizer, grammar, log_level=0, limits=limits)
        if matcher.is_error():
            raise ValueError(f"invalid {spec.kind} constraint: {_llguidance_error(matcher)}")
        bitmask = torch.zeros((self.vocab_size + 31) // 32, dtype=torch.int32)
        matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), bitmask.numel() * 4)
        if matcher.is_error():
            raise ValueError(
                f"invalid {spec.kind} constraint: no output can start to match it "
                f"({_llguidance_error(matcher)})"
            )
        return _LLGuidanceGrammar(matcher, time.perf_counter() - started)


def _llguidance_error(matcher: Any) -> str:
    """A matcher's error without llguidance's `<non-verbose/>` marker."""
    return str(matcher.get_error()).replace("<non-verbose/>", "").strip()


def llguidance_grammar(spec: ConstraintSpec) -> str:
    """The llguidance grammar text of a spec (LLMatcher checks it). With a prefix, one Lark
    rule: the prefix literal, then the spec's own grammar."""
    from llguidance import LLMatcher, regex_to_lark

    if spec.kind == "grammar":
        return _lark_grammar(spec)
    options = json.loads(spec.source) if spec.kind == "choices" else []
    choices = " | ".join(json.dumps(option) for option in options)
    if not spec.prefix:
        if spec.kind == "regex":
            return LLMatcher.grammar_from_regex(ascii_digits(spec.source))
        if spec.kind == "json":
            return LLMatcher.grammar_from_json_schema(spec.source, overrides=JSON_FORMAT)
        return LLMatcher.grammar_from_lark(f"start: {choices}")
    if spec.kind == "regex":
        body = f"/{regex_to_lark(ascii_digits(spec.source), '')}/"
    elif spec.kind == "json":
        body = "%json " + json.dumps({**json.loads(spec.source), "x-guidance": JSON_FORMAT})
    else:
        body = f"({choices})"
    return LLMatcher.grammar_from_lark(f"start: {json.dumps(spec.prefix)} {body}")


def _lark_grammar(spec: ConstraintSpec) -> str:
    """A user's Lark grammar; with a prefix, a top-level grammar that reads the prefix and then
    the user's grammar as a nested one (`@user`), so its rule names cannot clash."""
    from llguidance import LLMatcher

    if not spec.prefix:
        return LLMatcher.grammar_from_lark(spec.source)
    start = {"lark_grammar": f"start: {json.dumps(spec.prefix)} @user"}
    return json.dumps({"grammars": [start, {"name": "user", "lark_grammar": spec.source}]})


# -- xgrammar -----------------------------------------------------------------------------------


class _XGrammarMatcher:
    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher
        self._error = ""

    def fill_bitmask(self, bitmask: Tensor) -> None:
        self._matcher.fill_next_token_bitmask(bitmask)

    def consume(self, token_id: int) -> bool:
        if not self._error and not self._matcher.accept_token(token_id):
            self._error = f"token {token_id} is not allowed here"
        return not self._error

    def error(self) -> str:
        return self._error


class _XGrammarGrammar:
    def __init__(self, compiled: Any, compile_seconds: float) -> None:
        self._compiled, self.compile_seconds = compiled, compile_seconds

    def start(self) -> GrammarMatcher:
        import xgrammar

        return _XGrammarMatcher(xgrammar.GrammarMatcher(self._compiled))


class XGrammarEngine(GrammarEngine):
    """xgrammar (not a core dependency): TokenizerInfo and GrammarCompiler built on creation
    (~0.2 s); its stop tokens are the model's EOS ids."""

    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        super().__init__(tokenizer, vocab_size, eos_token_ids)
        try:
            import xgrammar
        except ImportError:
            raise ValueError(
                "the xgrammar grammar engine is not installed (pip install 'sgl-lang[xgrammar]')"
            ) from None
        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=self.eos_token_ids or None
        )
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile(self, spec: ConstraintSpec) -> CompiledGrammar:
        import xgrammar

        if spec.kind == "grammar":
            raise ValueError("the xgrammar engine cannot read Lark grammars: use llguidance")
        started = time.perf_counter()
        try:
            grammar = xgrammar_grammar(spec)
            compiled = self._compiler.compile_grammar(grammar)
        except RuntimeError as exc:  # xgrammar reports every grammar error as a RuntimeError
            message = str(exc).strip().splitlines()[-1].split(": ", 1)[-1]
            raise ValueError(f"invalid {spec.kind} constraint: {message}") from None
        assert isinstance(compiled, xgrammar.CompiledGrammar)
        return _XGrammarGrammar(compiled, time.perf_counter() - started)


def xgrammar_grammar(spec: ConstraintSpec) -> Any:
    """The xgrammar Grammar of a spec (raises RuntimeError when it is invalid)."""
    from xgrammar import Grammar

    if spec.kind == "regex":
        body = Grammar.from_regex(ascii_digits(spec.source))
    elif spec.kind == "json":
        body = Grammar.from_json_schema(
            spec.source, any_whitespace=False, separators=JSON_SEPARATORS, strict_mode=True
        )
    else:
        options = json.loads(spec.source)
        body = Grammar.from_ebnf(
            "root ::= " + " | ".join(json.dumps(o, ensure_ascii=False) for o in options)
        )
    if not spec.prefix:
        return body
    prefix = Grammar.from_ebnf(f"root ::= {json.dumps(spec.prefix, ensure_ascii=False)}")
    return Grammar.concat(prefix, body)


# -- shared -------------------------------------------------------------------------------------


def unpack_bitmask(bitmask: Tensor, vocab_size: int) -> Tensor:
    """Bool [vocab_size] of an int32 bitmask (token t = bit t % 32 of word t // 32)."""
    bits = (bitmask[:, None] >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.view(-1)[:vocab_size].bool()


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
