"""The `local` backend on the real embedded SmolLM2: rendering, sampling, stops, healing,
concurrency, prefix caching, scoring and errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import replace
from typing import Any

import lark
import pytest

from sgl_lang.backends import get_backend
from sgl_lang.backends.local import LocalBackend
from sgl_lang.bridge.render import Rendered, encode, render_prompt
from sgl_lang.protocol import BackendError, GenRequest, Grammar, Image, Message, Prompt, Text
from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.sampling import SamplingParams

pytestmark = pytest.mark.model

QUESTION = (Message("user", "What is the capital of France?"),)


@pytest.fixture(scope="module")
def backend(local_backend: LocalBackend) -> LocalBackend:
    return local_backend


@pytest.fixture(scope="module")
def engine(backend: LocalBackend) -> Engine:
    return asyncio.run(backend.bridged()).engine


def engine_text(engine: Engine, prompt: str | list[int], max_tokens: int) -> str:
    async def collect() -> str:
        params = SamplingParams(max_new_tokens=max_tokens, temperature=0)
        return "".join([chunk.text async for chunk in engine.generate(prompt, params)])

    return asyncio.run(collect())


def test_creating_a_local_backend_loads_nothing() -> None:
    code = (
        "import sys; from sgl_lang.backends import get_backend; b = get_backend('local'); "
        "print(b.name, sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
        "or m.startswith('sgl_lang.runtime')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout == "local []\n", result.stderr
    with pytest.raises(BackendError, match="local model not found: /no/such/model"):
        get_backend("local:/no/such/model")


def test_greedy_is_deterministic_streams_and_equals_the_engine(
    backend: LocalBackend, engine: Engine
) -> None:
    prompt = Prompt(QUESTION, open_role="assistant")
    pieces: list[str] = []
    first = asyncio.run(backend.generate(GenRequest(prompt, max_tokens=8), pieces.append))
    again = asyncio.run(backend.generate(GenRequest(prompt, max_tokens=8)))
    assert first.text and first == replace(again, cached_tokens=first.cached_tokens)
    assert "".join(pieces) == first.text and len(pieces) > 1
    rendered = render_prompt(engine.tokenizer, prompt).text
    assert engine_text(engine, rendered, 8) == first.text
    assert first.prompt_tokens == len(engine.tokenizer.encode(rendered))


def test_stop_strings_are_excluded_and_max_tokens_is_length(backend: LocalBackend) -> None:
    prompt = Prompt((Text("1, 2, 3, 4, 5,"),))
    stopped = asyncio.run(backend.generate(GenRequest(prompt, max_tokens=8, stop=(",",))))
    assert (stopped.text, stopped.finish_reason) == (" 6", "stop")
    cut = asyncio.run(backend.generate(GenRequest(prompt, max_tokens=3)))
    assert (cut.finish_reason, cut.completion_tokens) == ("length", 3)
    # healing backed up the final "," and generated it again, outside the 3 counted tokens
    assert cut.text == " 6,"


def test_an_open_assistant_message_renders_as_the_generation_prompt(engine: Engine) -> None:
    tokenizer = engine.tokenizer
    for messages in (QUESTION, (Message("system", "Be brief."), *QUESTION)):
        expected = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.text} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        rendered = render_prompt(tokenizer, Prompt(messages, open_role="assistant"))
        assert rendered == Rendered(expected, True, False)
        # without a system message, the template brings its own
        assert ("named SmolLM" in expected) == (messages is QUESTION)


def test_open_messages_continue_their_content_and_text_goes_between(engine: Engine) -> None:
    tokenizer = engine.tokenizer
    answer = Message("assistant", "The answer is")
    rendered = render_prompt(tokenizer, Prompt((*QUESTION, answer), open_role="assistant"))
    assert rendered.text.endswith("?<|im_end|>\n<|im_start|>assistant\nThe answer is")
    assert rendered.ends_with_content
    user = render_prompt(tokenizer, Prompt((Message("user", "Tell me"),), open_role="user"))
    assert user.text.endswith("<|im_start|>user\nTell me") and "<|im_end|>" in user.text
    assert user.text.count("<|im_end|>") == 1  # the default system prompt only
    mixed = render_prompt(tokenizer, Prompt((*QUESTION, Text("[note]"), Message("user", "Hi"))))
    assert mixed.text.endswith("?<|im_end|>\n[note]<|im_start|>user\nHi<|im_end|>\n")
    assert mixed.text.count("named SmolLM") == 1
    assert render_prompt(tokenizer, Prompt((Text("a "), Text("b")))) == Rendered("a b", False, True)


def test_healing_lets_the_first_token_carry_the_trailing_space(
    backend: LocalBackend, engine: Engine
) -> None:
    prompt = Prompt((Text("The capital of France is "),))
    healed = asyncio.run(backend.generate(GenRequest(prompt, max_tokens=4)))
    unhealed = engine_text(engine, "The capital of France is", 5)  # " Paris" + 4 counted
    assert unhealed.startswith(" Paris") and healed.text == unhealed.removeprefix(" ")
    assert healed.completion_tokens == 4
    raw = asyncio.run(backend.generate(GenRequest(prompt, max_tokens=4, heal=False)))
    assert raw.text == engine_text(engine, "The capital of France is ", 4)


def test_a_healed_one_token_gen_still_generates_a_token(backend: LocalBackend) -> None:
    prompt = Prompt((Text("The capital of France is"),))  # " is" is backed up and regenerated
    one = asyncio.run(backend.generate(GenRequest(prompt, max_tokens=1)))
    assert (one.text, one.completion_tokens, one.finish_reason) == (" Paris", 1, "length")


def test_concurrent_requests_all_complete(backend: LocalBackend) -> None:
    async def four() -> list[Any]:
        prompts = [Prompt((Text(f"Count: {i},"),)) for i in range(4)]
        return await asyncio.gather(
            *(backend.generate(GenRequest(p, max_tokens=4)) for p in prompts)
        )

    results = asyncio.run(four())
    assert [r.completion_tokens for r in results] == [4, 4, 4, 4]


def test_a_cancelled_request_leaves_the_engine(backend: LocalBackend, engine: Engine) -> None:
    async def cancel_after_first_chunk() -> int:
        started = asyncio.Event()
        request = GenRequest(Prompt((Text("Once upon a time"),)), max_tokens=500, ignore_eos=True)
        task = asyncio.create_task(backend.generate(request, lambda _: started.set()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if engine.stats().num_running == 0:
                break
            await asyncio.sleep(0.01)
        return engine.stats().num_running

    assert asyncio.run(cancel_after_first_chunk()) == 0


def test_cache_prefix_is_reused_by_the_next_request(backend: LocalBackend, engine: Engine) -> None:
    shared = (Message("user", "Name a colour of the rainbow, please, in one word."),)

    async def run() -> Any:
        await backend.cache_prefix(Prompt(shared))
        return await backend.generate(GenRequest(Prompt(shared, open_role="assistant"), 2))

    result = asyncio.run(run())
    num_prefix = len(encode(engine, render_prompt(engine.tokenizer, Prompt(shared))))
    assert result.cached_tokens >= num_prefix > 0


def test_score_gives_one_float_per_choice_and_picks_the_easy_answer(
    backend: LocalBackend, engine: Engine
) -> None:
    prompt = Prompt((Text("The capital of France is"),))
    choices = [" London", " Paris", " banana"]
    scores = asyncio.run(backend.score(prompt, choices, "normalized"))
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert scores.index(max(scores)) == 1
    direct = asyncio.run(engine.score("The capital of France is", choices))
    means = [sum(s.token_logprobs) / len(s.token_logprobs) for s in direct]
    assert scores == pytest.approx(means, abs=1e-4)  # batching may differ
    spaced = asyncio.run(
        backend.score(Prompt((Text("The capital of France is "),)), ["Paris"], "greedy")
    )
    assert spaced == [0.0]
    with pytest.raises(BackendError, match="unknown select method"):
        asyncio.run(backend.score(prompt, choices, "best"))


def test_request_errors_are_backend_errors(backend: LocalBackend) -> None:
    too_long = Prompt((Text("hello " * 8300),))
    with pytest.raises(BackendError, match=r"the prompt has \d+ tokens; the model context"):
        asyncio.run(backend.generate(GenRequest(too_long, max_tokens=2)))
    with pytest.raises(BackendError, match="cannot see images"):
        asyncio.run(backend.generate(GenRequest(Prompt((Image("cat.png"),)), max_tokens=2)))
    with pytest.raises(BackendError, match="max_new_tokens must be >= 1"):
        asyncio.run(backend.generate(GenRequest(Prompt((Text("Hi"),)), max_tokens=0)))
    closed = LocalBackend()
    asyncio.run(closed.close())
    with pytest.raises(BackendError, match="backend is closed"):
        asyncio.run(closed.generate(GenRequest(Prompt((Text("Hi"),)), max_tokens=2)))


ARITHMETIC = r"""
start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,3}/
"""


def test_a_grammar_constrains_every_output_to_parse(backend: LocalBackend) -> None:
    parser = lark.Lark(ARITHMETIC, parser="earley")
    questions = ["two plus three", "seven times six", "the sum of 1 and 2", "ten minus four"]
    outputs = []
    for question in questions:  # "The expression: " ends in text: the grammar is healed
        prompt = Prompt((Text(f"Write {question} as arithmetic. The expression: "),))
        request = GenRequest(prompt, max_tokens=12, constraint=Grammar(ARITHMETIC))
        result = asyncio.run(backend.generate(request))
        assert result.finish_reason == "eos", result
        parser.parse(result.text)  # raises if the output is not an expression
        outputs.append(result.text)
    assert len(set(outputs)) > 1


def test_token_logprobs_sum_to_the_engines_score_of_the_output(
    backend: LocalBackend, engine: Engine
) -> None:
    prompt = Prompt((Text("The capital of France is"),))
    request = GenRequest(prompt, max_tokens=6, logprobs=3, heal=False)
    result = asyncio.run(backend.generate(request))
    assert result.logprobs is not None and len(result.logprobs) == result.completion_tokens
    assert "".join(token.text for token in result.logprobs) == result.text
    for token in result.logprobs:  # greedy: the token is the most likely of its top 3
        assert len(token.top) == 3 and token.top[0] == (token.text, token.logprob)
    counting = GenRequest(Prompt((Text("1, 2, 3, 4, 5,"),)), max_tokens=4, logprobs=1)
    healed = asyncio.run(backend.generate(counting))  # the backed-up "," is not listed
    assert healed.logprobs and "".join(t.text for t in healed.logprobs) == healed.text
    prompt_ids = engine.tokenizer.encode("The capital of France is")
    [scored] = asyncio.run(engine.score(prompt_ids, [result.text]))
    assert sum(scored.token_logprobs) == pytest.approx(
        sum(token.logprob for token in result.logprobs), abs=1e-3
    )


def test_min_tokens_stop_regex_and_include_stop(backend: LocalBackend) -> None:
    prompt = Prompt(QUESTION, open_role="assistant")
    short = asyncio.run(backend.generate(GenRequest(prompt, max_tokens=40)))
    assert short.finish_reason == "eos"
    longer = asyncio.run(
        backend.generate(GenRequest(prompt, max_tokens=40, min_tokens=short.completion_tokens + 3))
    )
    assert longer.completion_tokens >= short.completion_tokens + 3
    counting = Prompt((Text("1, 2, 3, 4, 5,"),))
    regex = GenRequest(counting, max_tokens=12, stop_regex=r"[0-9]+,", heal=False)
    stopped = asyncio.run(backend.generate(regex))
    assert (stopped.text, stopped.finish_reason) == (" ", "stop")
    kept = asyncio.run(backend.generate(replace(regex, include_stop=True)))
    assert (kept.text, kept.finish_reason) == (" 6,", "stop")
