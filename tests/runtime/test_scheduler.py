"""Scheduling on the tiny random Llama, stepped by hand with an integrity check after every step:
outputs do not depend on cache, policy, chunking, batching or memory pressure; the policies,
aging, in-batch prefix sharing, retraction, errors and cancellation do what they promise."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from conftest import (
    assert_idle_and_leak_free,
    collect,
    greedy,
    run_all,
    run_steps,
    token_ids,
)

from sgl_lang.runtime.config import EngineConfig
from sgl_lang.runtime.policy import dfs_weight_order
from sgl_lang.runtime.prefix_cache import NoOpPrefixCache
from sgl_lang.runtime.request import FinishReason, OutputStream, RequestKind, RequestStatus

PAGE_SIZES = (1, 32)  # every engine test runs with pages of 1 and of 32 slots


def shared_prefix_prompts(num: int, num_groups: int = 4, prefix_len: int = 40) -> list[list[int]]:
    """Groups sharing prefixes of varying lengths (partial matches split tree nodes)."""
    return [
        token_ids(i % num_groups, prefix_len)[: prefix_len - (i % 3) * 7]
        + token_ids(1000 + i, 3 + i % 7)
        for i in range(num)
    ]


def output_ids(completions: list[Any]) -> list[tuple[int, ...]]:
    return [c.meta.output_ids for c in completions]


@pytest.fixture
def reference(make_engine: Any) -> Any:
    """Greedy outputs computed one request at a time, without the cache."""

    def compute(prompts: list[list[int]], params: Any) -> list[tuple[int, ...]]:
        engine = make_engine(enable_cache=False, max_running_requests=1)
        return output_ids(run_all(engine, prompts, params))

    return compute


@pytest.mark.parametrize(
    "options",
    [
        {"policy": "lpm"},
        {"policy": "dfs-weight"},
        {"policy": "fcfs"},
        {"policy": "lpm", "enable_cache": False},
        {"policy": "lpm", "prefill_chunk_tokens": 16},
        {"policy": "fcfs", "prefill_chunk_tokens": 7, "max_running_requests": 3},
        {"policy": "dfs-weight", "enable_cache": False, "prefill_chunk_tokens": 5},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_greedy_outputs_do_not_depend_on_cache_policy_chunking_or_batching(
    make_engine: Any, reference: Any, options: dict[str, Any]
) -> None:
    prompts = shared_prefix_prompts(24)
    expected = reference(prompts, greedy(8))
    assert len(set(expected)) == len(prompts)  # the tiny model's outputs depend on the prompt
    engine = make_engine(**options)
    completions = run_all(engine, prompts, greedy(8))
    assert output_ids(completions) == expected
    assert all(c.meta.finish_reason is FinishReason.LENGTH for c in completions)
    cached = sum(c.meta.cached_tokens for c in completions)
    assert cached > 0 if options.get("enable_cache", True) else cached == 0
    assert_idle_and_leak_free(engine)


def test_200_requests_in_a_pool_a_tenth_of_their_need_all_finish_unchanged(
    make_engine: Any,
) -> None:
    prompts = [
        token_ids(i % 8, 48)[: 48 - (i % 5) * 6] + token_ids(5000 + i, 4 + i % 9)
        for i in range(200)
    ]
    params = [greedy(6 + i % 5) for i in range(200)]
    total_need = sum(len(p) + sp.max_new_tokens for p, sp in zip(prompts, params, strict=True))
    roomy = make_engine(kv_cache_tokens=total_need * 2, max_running_requests=256)
    expected = output_ids(run_all(roomy, prompts, params, check=False))

    tight = make_engine(
        kv_cache_tokens=total_need // 10, new_token_ratio=0.2, max_running_requests=256
    )
    completions = run_all(tight, prompts, params)  # check_integrity after every step
    assert output_ids(completions) == expected
    assert [len(ids) for ids in expected] == [sp.max_new_tokens for sp in params]
    stats = tight.stats()
    assert stats.num_retracted > 0  # memory pressure was real
    assert stats.num_finished == 200
    assert_idle_and_leak_free(tight)


def test_chunked_prefill_splits_long_prompts_across_steps(make_engine: Any) -> None:
    prompt = token_ids(7, 300)
    whole = make_engine(prefill_chunk_tokens=512)
    expected = run_all(whole, [prompt], greedy(5))[0].meta.output_ids
    chunked = make_engine(prefill_chunk_tokens=64)
    stream = OutputStream()
    chunked.submit(prompt, greedy(5), stream=stream)
    num_steps = run_steps(chunked)
    assert collect(stream).meta.output_ids == expected
    assert chunked.stats().num_extend_tokens == 300
    assert num_steps == 5 + 4  # ceil(300 / 64) extend steps, then 4 decode steps


def test_policies_order_admission_differently(make_engine: Any) -> None:
    cached_prefix, light_prefix = token_ids(1, 40), token_ids(2, 40)
    heavy_prefix = token_ids(3, 40)

    def first_admitted(policy: str) -> list[str]:
        engine = make_engine(policy=policy, max_running_requests=1)
        run_all(engine, [[*cached_prefix, 7]], greedy(1))
        reqs = [
            engine.submit([*light_prefix, 1], greedy(1), rid="light"),
            engine.submit([*heavy_prefix, 1], greedy(1), rid="heavy-1"),
            engine.submit([*heavy_prefix, 2], greedy(1), rid="heavy-2"),
            engine.submit([*cached_prefix, 8], greedy(1), rid="cached"),
        ]
        order = []
        while engine.step():
            order += [
                r.rid for r in reqs if r.status is not RequestStatus.WAITING and r.rid not in order
            ]
        return order

    assert first_admitted("fcfs") == ["light", "heavy-1", "heavy-2", "cached"]
    assert first_admitted("lpm")[0] == "cached"  # longest cached match first
    assert first_admitted("dfs-weight")[:2] == ["heavy-1", "heavy-2"]  # heavier subtree first


def test_dfs_weight_visits_heavier_subtrees_first(make_engine: Any) -> None:
    engine = make_engine()
    reqs = [
        engine.submit(ids, greedy(1), rid=rid)
        for rid, ids in [
            ("a", [1, 2, 3]),
            ("b", [5, 6]),
            ("c", [1, 2, 4, 9]),
            ("d", [1, 7]),
            ("e", [1, 2, 4, 8]),
            ("f", [5, 6, 1]),
        ]
    ]
    engine.close()
    # subtree [1]: 4 requests ([1,2]: 3 of them ([1,2,4]: 2)); subtree [5,6]: 2, "b" ends first
    assert [r.rid for r in dfs_weight_order(reqs)] == ["c", "e", "a", "d", "b", "f"]


@pytest.mark.parametrize("max_queue_match", [2, 3, 128])
def test_only_the_head_of_a_long_queue_is_matched(make_engine: Any, max_queue_match: int) -> None:
    engine = make_engine(policy="lpm", max_running_requests=1, max_queue_match=max_queue_match)
    cached_prefix = token_ids(1, 40)
    run_all(engine, [[*cached_prefix, 7]], greedy(1))
    reqs = [engine.submit(token_ids(2 + i, 20), greedy(1), rid=f"plain-{i}") for i in range(2)]
    reqs.append(engine.submit([*cached_prefix, 8], greedy(1), rid="cached"))
    reqs += [engine.submit(token_ids(10 + i, 20), greedy(1)) for i in range(37)]
    engine.loop.run_commands()
    tree, num_matches = engine.prefix_cache, [0]
    match_prefix = tree.match_prefix

    def counting_match(ids: Any) -> Any:
        num_matches[0] += 1
        return match_prefix(ids)

    tree.match_prefix = counting_match  # type: ignore[method-assign]
    batch = engine.scheduler.schedule()
    assert batch is not None and len(batch.requests) == 1
    # one tree walk per head request, and one more for the admitted one before it is locked
    assert num_matches[0] == min(max_queue_match, 40) + 1
    assert batch.requests[0].rid == ("plain-0" if max_queue_match == 2 else "cached")
    engine.scheduler.postprocess(batch, engine.runner.run(batch.forward))  # finish the step
    tree.match_prefix = match_prefix  # type: ignore[method-assign]
    run_steps(engine)
    assert all(r.finished for r in reqs)
    assert_idle_and_leak_free(engine)


@pytest.mark.parametrize("aging_steps", [8, None])
def test_aging_stops_a_cache_aware_policy_from_starving_a_request(
    make_engine: Any, aging_steps: int | None
) -> None:
    engine = make_engine(policy="lpm", max_running_requests=1, aging_steps=aging_steps)
    prefix = token_ids(1, 40)
    run_all(engine, [[*prefix, 5]], greedy(1))
    lonely = engine.submit(token_ids(2, 10), greedy(2))
    admitted_at = None
    for step in range(60):  # a steady stream of requests that always match better
        engine.submit(prefix + token_ids(100 + step, 2), greedy(2))
        engine.step()
        engine.check_integrity()
        if admitted_at is None and lonely.status is not RequestStatus.WAITING:
            admitted_at = step
    if aging_steps is None:
        assert admitted_at is None  # starved: this is what aging prevents
    else:
        assert admitted_at is not None and admitted_at <= aging_steps + 4


@pytest.mark.parametrize("share", [True, False])
def test_in_batch_prefix_sharing_computes_a_shared_prefix_once(
    make_engine: Any, share: bool
) -> None:
    prefix = token_ids(3, 100)
    prompts = [prefix + token_ids(50 + i, 5) for i in range(4)]
    engine = make_engine(in_batch_share_min_tokens=32 if share else 10_000)
    completions = run_all(engine, prompts, greedy(1))
    stats = engine.stats()
    if share:
        assert stats.num_extend_tokens == 105 + 3 * 5
        assert [c.meta.cached_tokens for c in completions] == [0, 100, 100, 100]
    else:
        assert stats.num_extend_tokens == 4 * 105
    assert_idle_and_leak_free(engine)


def test_zero_token_cache_prefix_then_generate_hits_the_cache(make_engine: Any) -> None:
    engine = make_engine()
    prefix = token_ids(4, 60)
    first, again = OutputStream(), OutputStream()
    engine.submit(prefix, stream=first, kind=RequestKind.PREFILL)
    run_steps(engine)
    assert collect(first).meta.completion_tokens == 0
    assert engine.prefix_cache.total_size == 60
    engine.submit(prefix, stream=again, kind=RequestKind.PREFILL)  # already cached: no work
    assert run_steps(engine) == 0
    assert collect(again).meta.cached_tokens == 60
    completion = run_all(engine, [prefix + token_ids(5, 4)], greedy(3))[0]
    assert completion.meta.cached_tokens == 60
    assert engine.stats().num_extend_tokens == 60 + 4


def test_without_cache_nothing_is_matched_or_kept(make_engine: Any) -> None:
    engine = make_engine(enable_cache=False)
    prompts = [[*token_ids(6, 30), i + 100] for i in range(3)] * 2
    completions = run_all(engine, prompts, greedy(4))
    assert all(c.meta.cached_tokens == 0 for c in completions)
    assert isinstance(engine.prefix_cache, NoOpPrefixCache)
    assert engine.kv_pool.allocator.num_free_pages == engine.kv_pool.allocator.num_pages
    assert engine.stats().num_extend_tokens == sum(len(p) for p in prompts)


def test_too_long_requests_fail_clearly_while_others_finish(make_engine: Any) -> None:
    engine = make_engine(kv_cache_tokens=200, max_context_len=120)
    prompts = [token_ids(1, 20), token_ids(2, 150), token_ids(3, 30), token_ids(4, 119)]
    completions = run_all(engine, prompts, greedy(5))
    reasons = [c.meta.finish_reason for c in completions]
    assert reasons == [FinishReason.LENGTH, FinishReason.ERROR, FinishReason.LENGTH,
                       FinishReason.LENGTH]  # fmt: skip
    error = completions[1].meta.error
    assert error is not None and "150 tokens" in error and "context" in error
    assert [c.meta.completion_tokens for c in completions] == [5, 0, 5, 1]  # 119 + 1 = 120

    pool_engine = make_engine(kv_cache_tokens=64)
    big = run_all(pool_engine, [token_ids(5, 80), token_ids(6, 10)], greedy(3))
    assert big[0].meta.finish_reason is FinishReason.ERROR and "KV slots" in big[0].meta.error
    assert big[1].meta.completion_tokens == 3


def test_generation_stops_at_the_context_limit(make_engine: Any) -> None:
    engine = make_engine(max_context_len=64)
    completion = run_all(engine, [token_ids(8, 60)], greedy(10))[0]
    assert completion.meta.finish_reason is FinishReason.LENGTH
    assert completion.meta.completion_tokens == 4


def test_cancel_mid_stream_frees_slots_and_spares_the_others(make_engine: Any) -> None:
    prompts = [token_ids(10 + i, 20) for i in range(3)]
    expected = output_ids(run_all(make_engine(), prompts, greedy(12)))
    engine = make_engine()
    streams = [OutputStream() for _ in prompts]
    reqs = [engine.submit(p, greedy(12), stream=s) for p, s in zip(prompts, streams, strict=True)]
    while len(reqs[1].output_ids) < 4:
        engine.step()
    engine.cancel(reqs[1].rid)
    run_steps(engine)
    completions = [collect(s) for s in streams]
    assert completions[1].meta.finish_reason is FinishReason.ABORT
    assert 4 <= completions[1].meta.completion_tokens < 12
    assert completions[0].meta.output_ids == expected[0]
    assert completions[2].meta.output_ids == expected[2]
    assert_idle_and_leak_free(engine)


def test_finish_reasons_stop_token_stop_string_eos_and_length(
    make_engine: Any, tiny_model: Any
) -> None:
    prompt = token_ids(9, 12)
    free = run_all(make_engine(), [prompt], greedy(8, ignore_eos=True))[0]
    ids = free.meta.output_ids
    assert free.meta.finish_reason is FinishReason.LENGTH and len(ids) == 8

    engine = make_engine()
    by_id = run_all(engine, [prompt], greedy(8, stop_token_ids=(ids[3],)))[0]
    assert by_id.meta.finish_reason is FinishReason.STOP
    assert by_id.meta.output_ids == ids[: ids.index(ids[3]) + 1]

    tokenizer = tiny_model.tokenizer
    stop = tokenizer.decode(ids[4:6])
    by_text = run_all(engine, [prompt], greedy(8, stop=(stop,)))[0]
    assert by_text.meta.finish_reason is FinishReason.STOP
    assert stop not in by_text.text and by_text.text == free.text[: free.text.index(stop)]

    eos_model = tiny_model._replace(config=replace(tiny_model.config, eos_token_ids=(ids[2],)))
    eos_engine = make_engine(model=eos_model)
    by_eos = run_all(eos_engine, [prompt], greedy(8))[0]
    assert by_eos.meta.finish_reason is FinishReason.STOP
    assert by_eos.meta.output_ids[-1] == ids[2] and len(by_eos.meta.output_ids) <= 3
    ignored = run_all(eos_engine, [prompt], greedy(8, ignore_eos=True))[0]
    assert ignored.meta.output_ids == ids


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("policy", "random"),
        ("prefill_chunk_tokens", 0),
        ("max_running_requests", -1),
        ("new_token_ratio", 1.5),
        ("kv_cache_gb", 0.0),
        ("dtype", "int8"),
        ("device", "tpu"),
        ("aging_steps", 0),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        EngineConfig(**{field: value})


def test_config_rejects_unknown_options_and_sizes_the_default_budget() -> None:
    with pytest.raises(ValueError, match="kv_cache_size"):
        EngineConfig.from_kwargs(kv_cache_size=1)
    with pytest.raises(ValueError, match="exclusive"):
        EngineConfig(kv_cache_gb=1, kv_cache_tokens=100)
    assert 0 < EngineConfig().kv_cache_bytes() <= 2 * 1024**3
    assert EngineConfig(kv_cache_gb=0.5).kv_cache_bytes() == 512 * 1024**2
