"""Interpreter behaviour that `.sgl` programs cannot show: concurrency, cancellation, streaming."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from sgl_lang.errors import SglError, SglValueError
from sgl_lang.grammar import parse_text
from sgl_lang.interpreter import Interpreter
from sgl_lang.protocol import Backend, Capabilities, GenRequest, GenResult, Prompt


class GateBackend(Backend):
    """Answers only once `needed` requests are in flight at the same time."""

    name = "gate"
    capabilities = Capabilities(frozenset(), frozenset({"normalized"}))

    def __init__(self, needed: int, timeout: float = 10.0) -> None:
        self.needed = needed
        self.timeout = timeout
        self.pending = 0
        self.open = asyncio.Event()
        self.prompts: list[str] = []
        self.hints: list[str] = []

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        self.pending += 1
        self.prompts.append(request.prompt.plain_text())
        if self.pending >= self.needed:
            self.open.set()
        await asyncio.wait_for(self.open.wait(), timeout=self.timeout)
        text = request.prompt.plain_text().split()[-1]
        if on_chunk:
            on_chunk(text)
        return GenResult(text, "stop", 1, 1)

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        return [float(len(choice)) for choice in choices]

    async def cache_prefix(self, prompt: Prompt) -> None:
        self.hints.append(prompt.plain_text())


def run(source: str, backend: Backend, **options: object) -> Interpreter:
    interpreter = Interpreter(backend, **options)  # type: ignore[arg-type]
    asyncio.run(interpreter.run_program(parse_text(source, "t.sgl")))
    return interpreter


def test_fork_branches_are_in_flight_together_and_keep_item_order() -> None:
    backend = GateBackend(needed=8)
    source = 'shared = "p"\nxs = fork i in [7, 6, 5, 4, 3, 2, 1, 0]:\n    "{i} "\n    gen out\nprint([x.out for x in xs])\n'
    interpreter = run(source, backend)
    assert backend.pending == 8
    assert interpreter.scope.vars["xs"][0].attributes["out"] == "7"
    assert [b.attributes["i"] for b in interpreter.scope.vars["xs"]] == [7, 6, 5, 4, 3, 2, 1, 0]
    assert backend.hints == [""]


def test_a_sequential_fork_would_never_reach_the_gate() -> None:
    backend = GateBackend(needed=3, timeout=0.2)
    with pytest.raises(TimeoutError):
        run("gen a\ngen b\ngen c\n", backend)


class FailingBackend(GateBackend):
    """The request whose prompt ends with "boom" fails; the others wait until cancelled."""

    def __init__(self) -> None:
        super().__init__(needed=1_000)
        self.cancelled = 0

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        if request.prompt.plain_text().endswith("boom"):
            await asyncio.sleep(0)
            raise SglValueError("backend exploded")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("a sibling of a failed branch was not cancelled")


def test_first_failure_cancels_sibling_branches() -> None:
    backend = FailingBackend()
    source = 'xs = fork w in ["a", "b", "boom", "c"]:\n    "{w}"\n    gen out\n'
    with pytest.raises(SglError) as caught:
        run(source, backend)
    assert backend.cancelled == 3
    assert "backend exploded" in caught.value.render()
    assert '`w = "boom"`' in caught.value.render()
    assert caught.value.span is not None and caught.value.span.location == "t.sgl:3:5"


def test_run_batch_limits_concurrency_and_keeps_row_order() -> None:
    backend = GateBackend(needed=2)
    source = (
        'def one(x):\n    "{x}"\n    gen y\n'
        'states = run_batch(one, [{"x": "a"}, {"x": "b"}, {"x": "c"}, {"x": "d"}], parallel=2)\n'
    )
    interpreter = run(source, backend)
    assert [s.attributes["y"] for s in interpreter.scope.vars["states"]] == ["a", "b", "c", "d"]


def test_streaming_reaches_the_callback_only_outside_branches() -> None:
    chunks: list[str] = []
    backend = GateBackend(needed=1)
    source = '"one"\ngen a\nxs = fork 2:\n    " two"\n    gen b\n'
    run(source, backend, on_chunk=chunks.append)
    assert chunks == ["one"]


def test_parent_state_is_unchanged_by_a_fork() -> None:
    backend = GateBackend(needed=1)
    source = '"start "\nxs = fork i in [1, 2]:\n    "branch {i} "\n    gen g\n"end"\n'
    interpreter = run(source, backend)
    assert interpreter.states[0].text() == "start end"
    assert [s.text() for s in interpreter.states[1:]] == ["start branch 1 1", "start branch 2 2"]


def test_select_uses_backend_scores() -> None:
    interpreter = run('select pick from ["a", "abc", "ab"]\n', GateBackend(needed=1))
    assert interpreter.scope.vars["pick"] == "abc"
    assert interpreter.states[0].meta["pick"]["scores"] == {"a": 1.0, "abc": 3.0, "ab": 2.0}


class CuttingBackend(GateBackend):
    """Enforces nothing and always stops at max_tokens with a truncated JSON object."""

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        return GenResult('{"name": "Par', "length", 3, request.max_tokens)


def test_a_constrained_output_cut_at_max_tokens_is_a_constraint_error() -> None:
    with pytest.raises(SglError) as caught:
        run('gen city(json={"type": "object"}, max_tokens=5)\n', CuttingBackend(needed=1))
    assert caught.value.render() == (
        "t.sgl:1:1: constraint error: the output was cut at max_tokens=5 before it satisfied "
        'the constraint: "{\\"name\\": \\"Par"\n'
        '    gen city(json={"type": "object"}, max_tokens=5)\n'
        "    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "hint: raise `max_tokens` for this `gen`"
    )
