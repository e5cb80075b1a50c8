"""The static constant prefix of programs and functions (`sgl_lang.prefix`), and its use as a
`cache_prefix` hint by `run_batch` and `sgl run --batch`."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from sgl_lang import nodes
from sgl_lang.backends.test import TestBackend
from sgl_lang.config import RunConfig
from sgl_lang.grammar import parse_text
from sgl_lang.interpreter import Interpreter
from sgl_lang.loader import Loader
from sgl_lang.prefix import function_prefix, module_constants, program_prefix
from sgl_lang.protocol import Message, Prompt, Text
from sgl_lang.runner import run_rows


def program(text: str) -> nodes.Program:
    return parse_text(textwrap.dedent(text), "p.sgl")


def func(prog: nodes.Program, name: str) -> nodes.FuncDef:
    return next(s for s in prog.body if isinstance(s, nodes.FuncDef) and s.name == name)


@pytest.mark.parametrize(
    ("source", "segments", "open_role", "stop_line"),
    [
        (  # chat: constant system message, then the user message starts with a param
            """
            param question
            system "You are terse."
            user question
            assistant gen answer
            """,
            (Message("system", "You are terse."), Message("user", "")),
            "user",
            4,
        ),
        (  # a string contributes its constant start; constants interpolate
            """
            param q
            subject = "math"
            n = 2
            "About {subject} ({n + 1} shots):\\n"
            "Q: {q}\\nA:"
            gen a
            """,
            (Text("About math (3 shots):\nQ: "),),
            None,
            6,
        ),
        (  # loops over constant lists unroll; a known `if` is followed
            """
            param q
            shots = [{"q": "1+1", "a": "2"}, {"q": "2+2", "a": "4"}]
            verbose = false
            for shot in shots:
                "{shot.q}={shot.a}\\n"
            if verbose:
                "Think step by step.\\n"
            else:
                "Answer briefly.\\n"
            "{q}="
            """,
            (Text("1+1=2\n2+2=4\nAnswer briefly.\n"),),
            None,
            11,
        ),
        (  # a role block open at the stop stays open with its constant content
            """
            param page
            user:
                "Extract the city.\\n\\n"
                "{page}"
            """,
            (Message("user", "Extract the city.\n\n"),),
            "user",
            5,
        ),
        (  # a generation, a call or an unknown test stops the walk
            """
            "A"
            gen x
            "B"
            """,
            (Text("A"),),
            None,
            3,
        ),
        (
            """
            def f():
                "inside"
            "A"
            f()
            """,
            (Text("A"),),
            None,
            5,
        ),
        (  # a value reassigned from a generation is not constant any more
            """
            x = "one "
            "{x}"
            gen y
            """,
            (Text("one "),),
            None,
            4,
        ),
        (  # a param shadows; nothing constant comes first
            """
            param shots
            "{shots}Q:"
            """,
            (),
            None,
            3,
        ),
        (  # everything is constant: no stop
            """
            system "S"
            "tail"
            """,
            (Message("system", "S"), Text("tail")),
            None,
            None,
        ),
    ],
)
def test_program_prefix(
    source: str, segments: tuple[object, ...], open_role: str | None, stop_line: int | None
) -> None:
    prefix = program_prefix(program(source))
    assert prefix.prompt == Prompt(segments, open_role)  # type: ignore[arg-type]
    assert (prefix.stop.line if prefix.stop else None) == stop_line


def test_function_prefix_reads_module_constants_but_not_its_arguments() -> None:
    prog = program(
        """
        shots = ["a", "b"]
        mutable = ["x"]
        mutable.append("y")
        later = "p"
        def qa(question, header="H"):
            "{header}"
            for s in shots:
                "{s};"
            "{mutable}"
        def qb(question):
            for s in shots:
                "{s};"
            "{later}|{question}"
        later = "q"
        """
    )
    assert set(module_constants(prog)) == {"shots"}
    assert function_prefix(func(prog, "qa"), prog).prompt == Prompt(())
    assert function_prefix(func(prog, "qb"), prog).prompt == Prompt((Text("a;b;"),))
    # a function from another file does not see this file's constants
    assert function_prefix(func(prog, "qb"), None).prompt == Prompt(())


def test_the_examples_have_the_expected_prefixes() -> None:
    batch_qa = program_prefix(Loader().load(Path("examples/batch_qa.sgl")))
    system = "You are a concise assistant. Answer with a single word."
    assert batch_qa.prompt == Prompt(
        (Message("system", system), Message("user", "Question: ")), "user"
    )
    few_shot = Loader().load(Path("examples/few_shot_qa.sgl"))
    qa = function_prefix(func(few_shot, "qa"), few_shot).prompt
    assert qa.segments[0].text.startswith("Q: What is the capital of Italy?\nA: Rome\n\n")  # type: ignore[union-attr]
    assert qa.segments[0].text.endswith("A: Ottawa\n\nQ: ")  # type: ignore[union-attr]


def test_run_batch_sends_the_function_prefix_once() -> None:
    prog = program(
        """
        header = "Answer in one word.\\n"
        def ask(q):
            "{header}Q: {q}\\nA:"
            gen a(max_tokens=4)
        states = run_batch(ask, [{"q": "one"}, {"q": "two"}, {"q": "three"}])
        """
    )
    backend = TestBackend()
    asyncio.run(Interpreter(backend).run_program(prog))
    assert backend.prefix_hints == [Prompt((Text("Answer in one word.\nQ: "),))]


@pytest.mark.parametrize("hint", [True, False])
def test_batch_rows_send_the_program_prefix_once(hint: bool) -> None:
    prog = Loader().load(Path("examples/batch_qa.sgl"))
    backend = TestBackend()
    rows = [{"question": "a?"}, {"question": "b?"}]
    results = asyncio.run(run_rows(prog, Loader(), backend, rows, RunConfig(), prefix_hint=hint))
    assert [r["error"] for r in results] == [None, None]
    assert len(backend.prefix_hints) == (1 if hint else 0)
