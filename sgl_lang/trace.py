"""`sgl run --trace` / `--trace-json`: every backend call with its prompt, output, tokens and time.

`TracingBackend` wraps the run's backend and records each call. The report joins them with the
interpreter's own records (which `gen`/`select` made each call) and with what the backend's
optional hooks tell (`Backend.stats`: the engine's totals; `Backend.split_cached`: the cached
part of each prompt as the model read it). Calls answered by a replay file (`--replay`) are
marked "replayed" and left out of the token totals (the backend computed nothing for them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sgl_lang.backends.replay import Replayed, ReplayedScores
from sgl_lang.interpreter import Interpreter
from sgl_lang.protocol import (
    Backend,
    CachedSplit,
    EngineTotals,
    GenRequest,
    GenResult,
    Prompt,
    ToolCall,
    ToolResult,
)
from sgl_lang.state import Piece, State

CACHED_MARK = "‖"  # ends the cached part of a traced prompt


@dataclass(frozen=True)
class TracedCall:
    """One backend call. `kind` is "gen", "score" or "prefix" (a `cache_prefix` hint);
    `output` is the generated text, or the best choice of a "score"; `replayed` says it was
    answered from the replay file."""

    kind: str
    prompt: Prompt
    output: str
    prompt_tokens: int | None
    cached_tokens: int | None
    completion_tokens: int
    started: float  # time.perf_counter() when the call was made
    seconds: float
    scores: dict[str, float] | None = None
    replayed: bool = False


class TracingBackend(Backend):
    """Forwards every call to `inner` and records it in `calls`."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.calls: list[TracedCall] = []

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        started = time.perf_counter()
        result = await self.inner.generate(request, on_chunk)
        self.calls.append(
            TracedCall(
                "gen",
                request.prompt,
                result.text + "".join(call.as_json() for call in result.tool_calls),
                result.prompt_tokens,
                result.cached_tokens,
                result.completion_tokens,
                started,
                time.perf_counter() - started,
                replayed=isinstance(result, Replayed),
            )
        )
        return result

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        started = time.perf_counter()
        scores = await self.inner.score(prompt, choices, method)
        best = choices[max(range(len(choices)), key=scores.__getitem__)] if choices else ""
        elapsed = time.perf_counter() - started
        by_choice = dict(zip(choices, scores, strict=True))
        replayed = isinstance(scores, ReplayedScores)
        self.calls.append(
            TracedCall("score", prompt, best, None, None, 0, started, elapsed, by_choice, replayed)
        )
        return scores

    async def cache_prefix(self, prompt: Prompt) -> None:
        started = time.perf_counter()
        await self.inner.cache_prefix(prompt)
        elapsed = time.perf_counter() - started
        self.calls.append(TracedCall("prefix", prompt, "", None, None, 0, started, elapsed))

    async def warm_up(self) -> None:
        await self.inner.warm_up()

    def stats(self) -> EngineTotals | None:
        return self.inner.stats()

    def split_cached(self, prompt: Prompt, num_cached_tokens: int) -> CachedSplit | None:
        return self.inner.split_cached(prompt, num_cached_tokens)

    async def close(self) -> None:
        await self.inner.close()


# ---------------------------------------------------------------- the report


def trace_report(
    interpreter: Interpreter, backend: TracingBackend, wall_seconds: float
) -> dict[str, Any]:
    """Everything `--trace` shows, as JSON-ready data: the states (each with its `parent`, the
    state it was forked from), the calls (each with its `state` and its `start` in seconds
    after the first call) and the totals."""
    records = iter(interpreter.calls)  # one per gen/score call, in the same order
    texts = [state.text() for state in interpreter.states]
    parents = _parents(interpreter.states)
    first_start = min((call.started for call in backend.calls), default=0.0)
    calls = []
    for call in backend.calls:
        record = next(records, None) if call.kind != "prefix" else None
        split = None
        if call.kind != "score":
            split = backend.split_cached(call.prompt, call.cached_tokens or 0)
        cached, computed = split or ("", call.prompt.plain_text())
        calls.append(
            {
                "kind": "select" if call.kind == "score" else call.kind,
                "name": record.name if record else None,
                "where": record.span.location if record else None,
                "attempt": record.attempt if record else None,
                "rejected": record.rejected if record else None,
                "prompt": {"cached": cached, "computed": computed},
                "output": call.output,
                "scores": call.scores,
                "prompt_tokens": call.prompt_tokens,
                "cached_tokens": call.cached_tokens,
                "completion_tokens": call.completion_tokens,
                "start": round(call.started - first_start, 4),
                "seconds": round(call.seconds, 4),
                "replayed": call.replayed,
                "state": _state_of(call, texts, parents),
            }
        )
    states = [
        {
            "parent": parent,
            "pieces": [
                {
                    "text": _tool_part_text(p.tool_part) if p.tool_part else p.text,
                    "role": p.role,
                    "generated": p.generated or isinstance(p.tool_part, ToolCall),
                    "image": p.image is not None,
                }
                for p in state.pieces
                if p.text or p.image is not None or p.tool_part is not None
            ],
        }
        for state, parent in zip(interpreter.states, parents, strict=True)
    ]
    return {"states": states, "calls": calls, "totals": totals(backend, wall_seconds)}


def _parents(states: Sequence[State]) -> list[int | None]:
    """Each state's parent: the earlier state it shares the most leading pieces with (a fork
    branch starts as a copy of its parent's pieces; the earliest wins a tie, so a sibling
    never does); a state sharing none (a `run` state) hangs under the main state."""
    parents: list[int | None] = []
    for index, state in enumerate(states):
        shared = [(_num_shared(state.pieces, states[i].pieces), -i) for i in range(index)]
        best = max(shared, default=(0, 0))
        parents.append(None if index == 0 else -best[1] if best[0] else 0)
    return parents


def _num_shared(a: Sequence[Piece], b: Sequence[Piece]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x is not y:
            break
        count += 1
    return count


def _state_of(call: TracedCall, texts: Sequence[str], parents: Sequence[int | None]) -> int:
    """The state that made `call`: the one nearest the main state whose text goes on from the
    call's prompt with its output (the branches forked after it inherit both)."""
    made = call.prompt.plain_text() + (call.output if call.kind == "gen" else "")
    having = [i for i, text in enumerate(texts) if text.startswith(made)]
    return min(having, key=lambda i: (_depth(i, parents), i), default=0)


def _depth(index: int, parents: Sequence[int | None]) -> int:
    depth = 0
    while (parent := parents[index]) is not None:
        index, depth = parent, depth + 1
    return depth


def totals(backend: TracingBackend, wall_seconds: float) -> dict[str, Any]:
    """The run's token counts and rates; `engine` holds the engine's counters when known."""
    calls = backend.calls
    computed = [c for c in calls if not c.replayed]
    completion = sum(c.completion_tokens for c in computed)
    result: dict[str, Any] = {
        "wall_seconds": round(wall_seconds, 3),
        "num_calls": sum(c.kind != "prefix" for c in calls),
        "num_replayed": len(calls) - len(computed),
        "prompt_tokens": sum(c.prompt_tokens or 0 for c in computed),
        "cached_tokens": sum(c.cached_tokens or 0 for c in computed),
        "completion_tokens": completion,
        "completion_tokens_per_s": round(completion / wall_seconds, 2) if wall_seconds else 0.0,
        "engine": None,
    }
    stats = backend.stats()
    if stats is not None:
        result["engine"] = {
            "num_prompt_tokens": stats.num_prompt_tokens,
            "num_cached_tokens": stats.num_cached_tokens,
            "cache_hit_rate": round(stats.cache_hit_rate, 4),
            "num_decode_tokens": stats.num_decode_tokens,
            "prefill_tokens_per_s": round(stats.prefill_tokens_per_s, 1),
            "decode_tokens_per_s": round(stats.decode_tokens_per_s, 1),
            "mean_decode_batch_size": round(stats.mean_decode_batch_size, 2),
            "num_finished": stats.num_finished,
            "kernels": stats.kernels,
        }
    return result


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _tool_part_text(part: ToolCall | ToolResult) -> str:
    """A tool call as the model's call (`ToolCall.as_json`), a result as its text."""
    return part.as_json() if isinstance(part, ToolCall) else part.content


def print_report(report: dict[str, Any], console: Console) -> None:
    """States with generated text highlighted, each call with its cached prompt part marked,
    a table of the calls and the totals."""
    for number, state in enumerate(report["states"]):
        pieces = state["pieces"]
        console.rule(f"state {number}")
        text = Text()
        role: str | None = None
        for piece in pieces:
            if piece["role"] != role and piece["role"]:
                text.append(f"\n[{piece['role']}] ", style="bold cyan")
            role = piece["role"]
            style = "bold green" if piece["generated"] else ""
            text.append("<image>" if piece["image"] else piece["text"], style=style)
        console.print(text)
    for number, call in enumerate(report["calls"]):
        console.rule(f"call {number}: {_call_label(call)}", style="dim")
        text = Text()
        if call["prompt"]["cached"]:
            text.append(call["prompt"]["cached"], style="dim underline")
            text.append(CACHED_MARK, style="bold magenta")
        text.append(call["prompt"]["computed"])
        if call["kind"] == "gen":
            text.append(call["output"], style="bold green")
        console.print(text)
        if call["scores"]:
            console.print(Text(f"scores: {call['scores']} -> {call['output']!r}", style="cyan"))
        if call["rejected"]:
            console.print(Text(f"rejected: {call['rejected']}", style="bold red"))
    console.print(Text(f"(the prompt text before {CACHED_MARK} came from the prefix cache)"))
    console.print(_calls_table(report["calls"]))
    console.print(_totals_text(report["totals"]))


def _call_label(call: dict[str, Any]) -> str:
    """`gen NAME WHERE`, and whether the call was replayed or a retry."""
    if call["kind"] == "prefix":
        label = "prefix hint (cache_prefix)"
    else:
        label = " ".join(str(x) for x in (call["kind"], call["name"], call["where"]) if x)
    return label + _notes(call)


def _notes(call: dict[str, Any]) -> str:
    """What follows a call's kind: whether it was replayed, and the attempt of a retry."""
    replayed = " (replayed)" if call["replayed"] else ""
    return replayed + (f" (attempt {call['attempt']})" if (call["attempt"] or 1) > 1 else "")


def _calls_table(calls: list[dict[str, Any]]) -> Table:
    table = Table(
        "call", "name", "where", "prompt tokens", "cached tokens", "completion tokens", "time (s)"
    )
    for call in calls:
        table.add_row(
            call["kind"] + _notes(call),
            call["name"] or "",
            call["where"] or "",
            _count(call["prompt_tokens"]),
            _count(call["cached_tokens"]),
            str(call["completion_tokens"]),
            f"{call['seconds']:.3f}",
        )
    return table


def _totals_text(totals: dict[str, Any]) -> Text:
    num_replayed = totals["num_replayed"]
    replayed = f" ({num_replayed} replayed, tokens not counted)" if num_replayed else ""
    lines = [
        f"{totals['num_calls']} calls{replayed} in {totals['wall_seconds']:.2f} s: "
        f"{totals['prompt_tokens']} prompt tokens ({totals['cached_tokens']} cached), "
        f"{totals['completion_tokens']} completion tokens "
        f"({totals['completion_tokens_per_s']:.1f} tokens/s)"
    ]
    engine = totals["engine"]
    if engine is not None:
        lines.append(
            f"engine: cache hit rate {engine['cache_hit_rate']:.1%} "
            f"({engine['num_cached_tokens']} of {engine['num_prompt_tokens']} prompt tokens), "
            f"prefill {engine['prefill_tokens_per_s']:.0f} tokens/s, "
            f"decode {engine['decode_tokens_per_s']:.0f} tokens/s, "
            f"mean decode batch {engine['mean_decode_batch_size']:.2f}, "
            f"{engine['kernels']} kernels"
        )
    return Text("\n".join(lines), style="bold")


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)
