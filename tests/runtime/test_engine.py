"""The engine's public API on its background thread: async streaming, cancellation, scoring,
cache_prefix, stats, chat templates; and greedy parity with transformers on the real SmolLM2."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from conftest import greedy, run_all, token_ids

from sgl_lang.protocol import choice_scores
from sgl_lang.runtime.config import EngineConfig
from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.model_runner import ForwardBatch, ModelRunner
from sgl_lang.runtime.request import Chunk, FinishReason, RequestError

PAGE_SIZES = (1, 32)  # every engine test runs with pages of 1 and of 32 slots


def sync_engine_state(engine: Any) -> None:
    """Return once the engine thread has handled every command sent before (flush is a
    round trip through its queue), so its state can be read."""
    engine.flush_cache()


def direct_logprobs(model: Any, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1 from one plain forward over a fresh pool."""
    c = model.config
    pool = KVPool(c.num_layers, len(ids), c.num_kv_heads, c.head_dim)
    slots = torch.arange(1, len(ids) + 1)
    batch = ForwardBatch(
        input_ids=torch.tensor(ids),
        positions=torch.arange(len(ids)),
        out_slots=slots,
        seq_slots=[slots],
        extend_lens=[len(ids)],
        logits_indices=torch.arange(len(ids) - 1),
    )
    logits = ModelRunner(model.model, pool).run(batch)
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_async_generate_streams_the_same_tokens_as_a_stepped_engine(make_engine: Any) -> None:
    prompts = [token_ids(20 + i, 15 + i) for i in range(6)]
    expected = run_all(make_engine(), prompts, greedy(10))
    engine = make_engine(threaded=True)

    async def one(prompt: list[int]) -> list[Chunk]:
        return [chunk async for chunk in engine.generate(prompt, greedy(10, return_logprobs=True))]

    async def main() -> list[list[Chunk]]:
        return await asyncio.gather(*(one(p) for p in prompts))

    for chunks, want in zip(asyncio.run(main()), expected, strict=True):
        meta = chunks[-1].meta
        assert meta is not None and all(c.meta is None for c in chunks[:-1])
        assert meta.output_ids == want.meta.output_ids
        assert "".join(c.text for c in chunks) == want.text
        assert sum((c.token_ids for c in chunks), ()) == meta.output_ids  # one id per step
        assert meta.output_logprobs is not None and len(meta.output_logprobs) == 10
        assert all(lp <= 0 for lp in meta.output_logprobs)
    again = engine.generate_many([prompts[0]], greedy(10))[0]
    assert again.meta.output_ids == expected[0].meta.output_ids


def test_leaving_the_stream_early_cancels_and_frees_the_slots(make_engine: Any) -> None:
    engine = make_engine(threaded=True)
    allocator = engine.kv_pool.allocator

    async def read_three() -> int:
        num = 0
        async for _ in engine.generate(token_ids(30, 20), greedy(2000, ignore_eos=True)):
            num += 1
            if num == 3:
                break
        return num

    assert asyncio.run(read_three()) == 3
    sync_engine_state(engine)  # the cancel has been handled, the flush emptied the tree
    stats = engine.stats()
    assert stats.num_running == stats.num_waiting == 0
    assert allocator.num_free_pages == allocator.num_pages
    assert stats.num_decode_tokens < 1999  # it did not run to the end


def test_cancel_by_rid(make_engine: Any) -> None:
    engine = make_engine(threaded=True)

    async def main() -> Chunk:
        chunks = engine.generate(token_ids(31, 20), greedy(2000, ignore_eos=True), rid="victim")
        await chunks.__anext__()
        engine.cancel("victim")
        return [c async for c in chunks][-1]

    last = asyncio.run(main())
    assert last.meta is not None and last.meta.finish_reason is FinishReason.ABORT
    assert last.meta.completion_tokens < 2000


def test_score_matches_a_direct_forward_and_computes_the_prefix_once(
    make_engine: Any, tiny_model: Any
) -> None:
    engine = make_engine(threaded=True)
    tokenizer = tiny_model.tokenizer
    prefix = "The quick brown fox jumps over the lazy dog. " * 4
    choices = [" yes", " no", " maybe later"]
    scores = asyncio.run(engine.score(prefix, choices, unconditional=True))
    prefix_ids = tokenizer.encode(prefix)
    assert len(prefix_ids) >= 32  # long enough for in-batch sharing
    for score, choice in zip(scores, choices, strict=True):
        ids = tokenizer.encode(choice, add_special_tokens=False)
        assert score.text == choice and list(score.token_ids) == ids
        want = direct_logprobs(tiny_model, prefix_ids + ids)[len(prefix_ids) - 1 :]
        assert torch.allclose(torch.tensor(score.token_logprobs), want, atol=1e-4)
        neutral = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0]
        uncond = direct_logprobs(tiny_model, neutral + ids)
        assert score.unconditional_logprobs is not None
        assert torch.allclose(torch.tensor(score.unconditional_logprobs), uncond, atol=1e-4)
    stats = engine.stats()
    choice_lens = [len(s.token_ids) for s in scores]
    conditional = len(prefix_ids) + choice_lens[0] + sum(1 + n for n in choice_lens[1:])
    assert stats.num_extend_tokens == conditional + sum(1 + n for n in choice_lens)


def test_cache_prefix_then_generate_hits_the_cache(make_engine: Any) -> None:
    engine = make_engine(threaded=True)
    prefix = token_ids(40, 50)

    async def main() -> tuple[Any, Any]:
        cached = await engine.cache_prefix(prefix)
        chunks = [c async for c in engine.generate(prefix + token_ids(41, 3), greedy(4))]
        return cached, chunks[-1].meta

    cached, meta = asyncio.run(main())
    assert cached.completion_tokens == 0 and cached.finish_reason is FinishReason.STOP
    assert meta.cached_tokens == 50 and meta.prompt_tokens == 53
    stats = engine.stats()
    assert stats.num_cached_tokens == 50 and stats.cache_hit_rate == pytest.approx(50 / 103)


def test_errors_reach_the_caller_while_others_continue(make_engine: Any) -> None:
    engine = make_engine(threaded=True, max_context_len=64)

    async def generate(prompt: list[int]) -> list[Chunk]:
        return [c async for c in engine.generate(prompt, greedy(4))]

    async def main() -> list[Any]:
        return await asyncio.gather(
            generate(token_ids(50, 100)), generate(token_ids(52, 10)), return_exceptions=True
        )

    too_long, fine = asyncio.run(main())
    assert isinstance(too_long, RequestError) and "100 tokens" in str(too_long)
    assert too_long.meta.finish_reason is FinishReason.ERROR and "context" in too_long.meta.error
    assert fine[-1].meta.completion_tokens == 4
    batch = engine.generate_many([token_ids(50, 100)], greedy(4))  # no raise: a failed row
    assert batch[0].meta.finish_reason is FinishReason.ERROR
    with pytest.raises(RequestError, match="context"):
        asyncio.run(engine.score(token_ids(51, 100), [" a"]))
    with pytest.raises(ValueError, match="choices"):
        asyncio.run(engine.score("x", [""]))


def test_close_aborts_pending_requests_and_refuses_new_ones(make_engine: Any) -> None:
    engine = make_engine()  # unthreaded: nothing runs until close
    reqs = [engine.submit(token_ids(60, 10), greedy(4)) for _ in range(2)]
    engine.close()
    assert all(r.finish_reason is FinishReason.ABORT for r in reqs)
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(token_ids(61, 10), greedy(4))


def test_stats_count_tokens_batches_and_memory(make_engine: Any, page_size: int) -> None:
    engine = make_engine()
    prefix = token_ids(70, 40)
    run_all(engine, [[*prefix, i + 100] for i in range(4)], greedy(5))
    stats = engine.stats()
    assert stats.num_prompt_tokens == 4 * 41
    assert stats.num_cached_tokens == 3 * 40
    assert stats.cache_hit_rate == pytest.approx(120 / 164)
    assert stats.num_decode_tokens == 4 * 4  # the first token of each comes from its prefill
    # the first request runs a step ahead (the others wait to share its prefix), then all four
    assert stats.decode_batch_sizes == {1: 1, 4: 3, 3: 1}
    assert stats.mean_decode_batch_size == pytest.approx(16 / 5)
    assert stats.tree_tokens == 40 + 4 * 5  # prompt + output - last
    assert stats.kv_slots_used == engine.kv_pool.allocator.num_used_pages * page_size
    assert stats.num_finished == 4 and stats.num_waiting == stats.num_running == 0
    assert stats.prefill_tokens_per_s > 0 and stats.decode_tokens_per_s > 0


def test_apply_chat_template(make_engine: Any) -> None:
    engine = make_engine()
    text = engine.apply_chat_template([{"role": "user", "content": "Hi there"}])
    assert "Hi there" in text and text.rstrip().endswith("assistant")
    assert (
        not engine.apply_chat_template(
            [{"role": "user", "content": "Hi"}], add_generation_prompt=False
        )
        .rstrip()
        .endswith("assistant")
    )


def test_chat_messages_are_rendered_with_the_chat_template(make_engine: Any) -> None:
    engine = make_engine()
    messages = [{"role": "user", "content": "Hi there"}]
    ids = engine.encode(messages)
    text = engine.apply_chat_template(messages)
    assert ids == engine.tokenizer.encode(text, add_special_tokens=False)
    assert ids.count(engine.tokenizer.bos_token_id) == text.count("<|im_start|>")  # no extra BOS
    completion = engine.generate_many([messages], greedy(3))[0]
    assert completion.meta.prompt_tokens == len(ids) and completion.meta.completion_tokens == 3


def test_from_model_loads_a_model_folder(tmp_path: Any) -> None:
    from test_model_loader import save_tiny_model

    save_tiny_model(tmp_path)
    with Engine.from_model(tmp_path, EngineConfig(kv_cache_tokens=64, policy="fcfs")) as engine:
        assert engine.config.model_path == tmp_path and engine.kv_pool.num_slots == 64
        meta = engine.generate_many([[5, 6, 7]], greedy(4, ignore_eos=True))[0].meta
        assert meta.completion_tokens == 4 and meta.prompt_tokens == 3
    with pytest.raises(ValueError, match="kv_cache_size"):
        Engine.from_model(tmp_path, kv_cache_size=3)


@pytest.mark.model
def test_real_model_greedy_matches_transformers_generate_in_any_order_with_or_without_cache(
    real_model: Any, make_engine: Any
) -> None:
    from transformers import LlamaForCausalLM

    questions = ("What is the capital of France?", "What is the capital of Italy?", "Hi!")
    engine = make_engine(model=real_model, kv_cache_tokens=1024, in_batch_share_min_tokens=8)
    prompts = [engine.encode([{"role": "user", "content": q}]) for q in questions]
    hf = LlamaForCausalLM.from_pretrained(real_model.model_dir, dtype=torch.float32).eval()
    expected = []
    for ids in prompts:
        out = hf.generate(torch.tensor([ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False)
        expected.append(tuple(out[0, len(ids) :].tolist()))
    params = greedy(6, ignore_eos=True)
    together = run_all(engine, prompts, params)
    assert [c.meta.output_ids for c in together] == expected
    assert [c.meta.cached_tokens > 0 for c in together] == [
        False,
        True,
        True,
    ]  # shared system prompt
    reversed_again = run_all(engine, prompts[::-1], params)[::-1]  # now answers are cached too
    assert [c.meta.output_ids for c in reversed_again] == expected
    assert all(
        c.meta.cached_tokens == len(p) - 1 for c, p in zip(reversed_again, prompts, strict=True)
    )
    uncached = make_engine(model=real_model, enable_cache=False, max_running_requests=2)
    assert [c.meta.output_ids for c in run_all(uncached, prompts[1:] + prompts[:1], params)] == (
        expected[1:] + expected[:1]
    )
    assert "Paris" in together[0].text


@pytest.mark.model
def test_real_model_scores_choices_by_every_method(real_model: Any, make_engine: Any) -> None:
    engine = make_engine(model=real_model, kv_cache_tokens=512, threaded=True)
    prefix = [{"role": "user", "content": "What is the capital of France?"}]
    choices = [" London", " Paris", " Berlin"]
    for method in ("normalized", "greedy", "unconditional"):
        scored = asyncio.run(engine.score(prefix, choices, unconditional=True))
        scores = choice_scores(
            method,
            [s.token_logprobs for s in scored],
            [s.unconditional_logprobs or () for s in scored],
        )
        best = max(range(3), key=scores.__getitem__)
        assert choices[best] == " Paris", (method, scores)
    assert engine.stats().num_cached_tokens > 0  # the prefix was computed once per method


def test_top_logprobs_list_the_most_likely_tokens_of_every_step(make_engine: Any) -> None:
    prompts = [token_ids(7, 12), token_ids(8, 9)]
    params = [greedy(6, return_logprobs=True, top_logprobs_num=3), greedy(6)]
    with_top, without = run_all(make_engine(), prompts, params)
    meta = with_top.meta
    assert meta.output_top_logprobs is not None and without.meta.output_top_logprobs is None
    assert len(meta.output_top_logprobs) == meta.completion_tokens == 6
    for token_id, logprob, top in zip(
        meta.output_ids, meta.output_logprobs or (), meta.output_top_logprobs, strict=True
    ):
        assert len(top) == 3 and [lp for _, lp in top] == sorted(
            (lp for _, lp in top), reverse=True
        )
        assert top[0] == (token_id, pytest.approx(logprob))  # greedy picks the most likely


def test_top_logprobs_num_is_bounded() -> None:
    with pytest.raises(ValueError, match="top_logprobs_num"):
        greedy(4, top_logprobs_num=21)


def test_prefill_lists_the_most_likely_tokens_of_every_scored_prompt_position(
    make_engine: Any, tiny_model: Any
) -> None:
    engine = make_engine(threaded=True)
    ids = token_ids(10, 12)
    meta = asyncio.run(engine.prefill(ids, 4, top_logprobs_num=3))
    want = direct_logprobs(tiny_model, ids)  # row t: log p(. | ids[:t+1]) of ids[t+1]
    assert meta.prompt_logprobs is not None and meta.prompt_top_logprobs is not None
    assert len(meta.prompt_top_logprobs) == len(meta.prompt_logprobs) == len(ids) - 4
    assert torch.allclose(torch.tensor(meta.prompt_logprobs), want[3:], atol=1e-4)
    for top in meta.prompt_top_logprobs:
        assert len(top) == 3 and [lp for _, lp in top] == sorted(
            (lp for _, lp in top), reverse=True
        )
    plain = asyncio.run(engine.prefill(ids, 4))
    assert plain.prompt_top_logprobs is None
