"""SGLang's own Python frontend (`sglang.RuntimeEndpoint`) against `sgl serve` on the real
SmolLM2: gen, regex, select, fork, run_batch, role messages and streaming with logprobs give
the answers the same program gives through our `http://` backend (both greedy), and SGLang's
frontend test programs (`sglang.test.test_programs`) run."""

from __future__ import annotations

import asyncio
import gc
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sglang as sgl
from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
from sglang.test import test_programs

from sgl_lang.backends import get_backend
from sgl_lang.grammar import parse_text
from sgl_lang.interpreter import Interpreter

pytestmark = [
    pytest.mark.model,
    # SGLang's frontend leaves its HTTP responses to the garbage collector
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

QUESTION = "Q: What is the capital of France?\nA:"
MAX_NEW_TOKENS = 16  # the frontend programs that write long texts are capped to this


class CappedEndpoint(RuntimeEndpoint):
    """SGLang's endpoint with generations capped at MAX_NEW_TOKENS (test time)."""

    def generate(self, s: Any, sampling_params: Any) -> Any:
        sampling_params.max_new_tokens = min(sampling_params.max_new_tokens, MAX_NEW_TOKENS)
        return super().generate(s, sampling_params)

    def generate_stream(self, s: Any, sampling_params: Any) -> Any:
        sampling_params.max_new_tokens = min(sampling_params.max_new_tokens, MAX_NEW_TOKENS)
        return super().generate_stream(s, sampling_params)


@pytest.fixture(scope="module")
def endpoint(live_server: Any) -> Iterator[RuntimeEndpoint]:
    """SGLang's frontend on the server, with the ChatML template SmolLM2's is."""
    backend = RuntimeEndpoint(live_server.url, chat_template_name="chatml")
    sgl.set_default_backend(backend)
    yield backend
    sgl.set_default_backend(None)
    # SGLang's frontend leaves the responses it streamed with `requests` open: collect them
    # here, not in whichever later test the garbage collector happens to run in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def run_sgl(source: str, live_server: Any) -> dict[str, Any]:
    """The variables of an sgl-lang program run on our `http://` backend."""
    interpreter = Interpreter(get_backend(live_server.url))
    asyncio.run(interpreter.run_program(parse_text(source, "t.sgl")))
    return interpreter.scope.vars


def test_gen_regex_and_select_give_the_http_backends_answers(
    endpoint: RuntimeEndpoint, live_server: Any
) -> None:
    @sgl.function
    def program(s: Any) -> None:
        s += QUESTION + sgl.gen("answer", max_tokens=8, stop="\n", temperature=0)
        s += "\nPopulation in millions:" + sgl.gen("number", max_tokens=6, regex=" [0-9]+")
        s += "\nIs it in Europe?" + sgl.select("europe", [" yes", " no"])

    state = program.run(temperature=0)
    ours = run_sgl(
        '"Q: What is the capital of France?\\nA:"\n'
        'gen answer(max_tokens=8, stop="\\n", temperature=0, heal=false)\n'
        '"\\nPopulation in millions:"\n'
        'gen number(max_tokens=6, regex=" [0-9]+", temperature=0, heal=false)\n'
        '"\\nIs it in Europe?"\n'
        'select europe from [" yes", " no"]\n',
        live_server,
    )
    assert state["answer"] == ours["answer"] and "Paris" in state["answer"]
    assert state["number"] == ours["number"] and state["number"].strip().isdigit()
    assert state["europe"] == ours["europe"]
    meta = state.get_meta_info("answer")
    assert meta["finish_reason"]["type"] in ("stop", "length") and meta["prompt_tokens"] > 0


def test_fork_and_run_batch_give_the_http_backends_answers(
    endpoint: RuntimeEndpoint, live_server: Any
) -> None:
    @sgl.function
    def tips(s: Any) -> None:
        s += "Two tips for staying healthy: 1. Sleep. 2. Exercise.\n"
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"Tip {i + 1} in one sentence:"
            f += sgl.gen("detail", max_tokens=10, stop="\n", temperature=0)
        forks.join()
        s["details"] = [f["detail"] for f in forks]

    state = tips.run()
    ours = run_sgl(
        '"Two tips for staying healthy: 1. Sleep. 2. Exercise.\\n"\n'
        "tips = fork i in [1, 2]:\n"
        '    "Tip {i} in one sentence:"\n'
        '    gen detail(max_tokens=10, stop="\\n", temperature=0, heal=false)\n'
        "details = [t.detail for t in tips]\n",
        live_server,
    )
    assert state["details"] == ours["details"]

    @sgl.function
    def capital(s: Any, country: str) -> None:
        s += f"Q: What is the capital of {country}?\nA:"
        s += sgl.gen("answer", max_tokens=6, stop="\n")

    countries = ["France", "Italy", "Japan"]
    states = capital.run_batch([{"country": c} for c in countries], temperature=0)
    for country, batched in zip(countries, states, strict=True):
        one = run_sgl(
            f'"Q: What is the capital of {country}?\\nA:"\n'
            'gen answer(max_tokens=6, stop="\\n", temperature=0, heal=false)\n',
            live_server,
        )
        assert batched["answer"] == one["answer"]


def test_role_messages_stream_with_logprobs(endpoint: RuntimeEndpoint, live_server: Any) -> None:
    @sgl.function
    def chat(s: Any) -> None:
        s += sgl.system("You are a concise assistant.")
        s += sgl.user("What is the capital of France?")
        s += sgl.assistant(sgl.gen("answer", max_tokens=8, temperature=0))

    streamed = chat.run(stream=True, return_logprob=True, top_logprobs_num=2)
    pieces = list(streamed.text_iter("answer"))
    meta = streamed.get_meta_info("answer")
    whole = chat.run()
    ours = run_sgl(
        'system "You are a concise assistant."\n'
        'user "What is the capital of France?"\n'
        "assistant gen answer(max_tokens=8, temperature=0, heal=false)\n",
        live_server,
    )
    assert len(pieces) > 1 and "".join(pieces) == whole["answer"] == ours["answer"]
    logprobs = meta["output_token_logprobs"]
    assert len(logprobs) == meta["completion_tokens"] >= 1
    assert all(lp <= 0 and isinstance(token_id, int) for lp, token_id, _ in logprobs)
    assert len(meta["input_token_logprobs"]) == 1  # SGLang's default: the last prompt token
    assert [m["role"] for m in whole.messages()] == ["system", "user", "assistant"]


def answer_check_off(program: Callable[[], None]) -> Callable[[], None]:
    """`program` with its final answer check off: an assertion on `answer` that a 135M model
    cannot pass still lets the test pass, once the whole program has run."""

    def run() -> None:
        try:
            program()
        except AssertionError as exc:
            failed_line = traceback.extract_tb(exc.__traceback__)[-1].line or ""
            if not (failed_line.startswith("assert") and "answer" in failed_line):
                raise

    return run


# every program of sglang.test.test_programs but those needing an image model (image_qa), an
# API backend's speculative execution (*_speculative), a download (hellaswag_select) or
# min_tokens (gen_min_new_tokens; the server refuses `min_new_tokens`)
PROGRAMS: dict[str, Callable[[], None]] = {
    "few_shot_qa": answer_check_off(test_programs.test_few_shot_qa),
    "mt_bench": test_programs.test_mt_bench,
    "select": lambda: test_programs.test_select(check_answer=False),
    "decode_int": test_programs.test_decode_int,
    "decode_json_regex": test_programs.test_decode_json_regex,
    "decode_json": test_programs.test_decode_json,
    "expert_answer": lambda: test_programs.test_expert_answer(check_answer=False),
    "tool_use": test_programs.test_tool_use,
    "react": answer_check_off(test_programs.test_react),
    "parallel_decoding": test_programs.test_parallel_decoding,
    "parallel_encoding": lambda: test_programs.test_parallel_encoding(check_answer=False),
    "stream": test_programs.test_stream,
    "regex": test_programs.test_regex,
    "dtype_gen": test_programs.test_dtype_gen,
}


@pytest.fixture(scope="module")
def capped(live_server: Any, endpoint: RuntimeEndpoint) -> Iterator[None]:
    sgl.set_default_backend(CappedEndpoint(live_server.url, chat_template_name="chatml"))
    yield
    sgl.set_default_backend(endpoint)


@pytest.mark.parametrize("name", PROGRAMS)
def test_sglang_test_programs_run(capped: None, name: str) -> None:
    PROGRAMS[name]()
