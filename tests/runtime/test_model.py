"""Our paged forward matches transformers' LlamaForCausalLM: prefill, chunked prefill + decode,
ragged batches sharing prefix slots (tiny random Llama; once on the real SmolLM2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.model_loader import LoadedModel, load_model
from sgl_lang.runtime.model_runner import ForwardBatch, ModelRunner
from sgl_lang.runtime.models.config import ModelConfig
from sgl_lang.runtime.models.llama import LlamaModel, random_state_dict, rope_inv_freq

TOLERANCE = 1e-3

TINY = ModelConfig(
    vocab_size=256,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=96,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)


def hf_config(config: ModelConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        intermediate_size=config.intermediate_size,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
    )


class Fixture:
    """Our model and the transformers reference on the same weights, plus a fresh KV pool."""

    def __init__(self, model: LlamaModel, reference: LlamaForCausalLM, num_slots: int = 64) -> None:
        torch.set_num_threads(2)
        c = model.config
        self.model, self.reference = model, reference
        self.pool = KVPool(c.num_layers, num_slots, c.num_kv_heads, c.head_dim)
        self.runner = ModelRunner(model, self.pool)

    def run(self, requests: Sequence[tuple[list[int], torch.Tensor, int]]) -> torch.Tensor:
        """Each request: (new token ids, slots of its whole context, number of prefix tokens).
        Returns logits of every new token."""
        batch = make_batch(requests)
        return self.runner.run(batch)

    def reference_logits(self, token_ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.reference(torch.tensor([token_ids])).logits[0].float()


def make_batch(requests: Sequence[tuple[list[int], torch.Tensor, int]]) -> ForwardBatch:
    input_ids, positions, out_slots = [], [], []
    for new_ids, slots, prefix_len in requests:
        assert len(slots) == prefix_len + len(new_ids)
        input_ids += new_ids
        positions += range(prefix_len, prefix_len + len(new_ids))
        out_slots.append(slots[prefix_len:])
    return ForwardBatch(
        input_ids=torch.tensor(input_ids),
        positions=torch.tensor(positions),
        out_slots=torch.cat(out_slots),
        seq_slots=[slots for _, slots, _ in requests],
        extend_lens=[len(new_ids) for new_ids, _, _ in requests],
        logits_indices=torch.arange(len(input_ids)),
    )


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.fixture(scope="session")
def embedded_model() -> LoadedModel:
    """The embedded SmolLM2 (converted from its GGUF once, then read from the cache)."""
    return load_model()


@pytest.fixture(scope="module")
def tiny() -> tuple[LlamaModel, LlamaForCausalLM]:
    state_dict = random_state_dict(TINY, seed=0)
    reference = LlamaForCausalLM(hf_config(TINY)).eval()
    missing, unexpected = reference.load_state_dict(state_dict, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    return LlamaModel.from_state_dict(TINY, state_dict).eval(), reference


def prompt(seed: int, length: int, vocab: int = TINY.vocab_size) -> list[int]:
    return torch.randint(
        0, vocab, (length,), generator=torch.Generator().manual_seed(seed)
    ).tolist()


def test_random_is_deterministic_and_peaked() -> None:
    a, b = LlamaModel.random(TINY, seed=3), LlamaModel.random(TINY, seed=3)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(
        a.layers[0].qkv_weight, LlamaModel.random(TINY, seed=4).layers[0].qkv_weight
    )
    assert a.lm_head is a.embed_tokens
    logits = Fixture(a, LlamaForCausalLM(hf_config(TINY))).run(
        [(prompt(0, 6), torch.arange(1, 7), 0)]
    )
    probs = logits.softmax(-1).max(-1).values
    assert float(probs.min()) > 0.2  # a tiny model's greedy choices are not near-ties


def test_prefill_matches_reference_at_every_position(tiny) -> None:
    f = Fixture(*tiny)
    ids = prompt(1, 20)
    slots = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:20] + 1
    logits = f.run([(ids, slots, 0)])
    assert max_diff(logits, f.reference_logits(ids)) <= TOLERANCE


def test_logits_only_at_logits_indices(tiny) -> None:
    f = Fixture(*tiny)
    ids, slots = prompt(2, 10), torch.arange(1, 11)
    batch = make_batch([(ids, slots, 0)])
    batch.logits_indices = torch.tensor([9, 3])
    logits = f.runner.run(batch)
    assert logits.shape == (2, TINY.vocab_size) and logits.dtype == torch.float32
    assert max_diff(logits, f.reference_logits(ids)[[9, 3]]) <= TOLERANCE


def test_no_logits_still_fills_the_cache(tiny) -> None:
    f = Fixture(*tiny)
    ids, slots = prompt(2, 10), torch.arange(1, 11)
    batch = make_batch([(ids[:9], slots[:9], 0)])
    batch.logits_indices = torch.tensor([], dtype=torch.int64)
    assert f.runner.run(batch).shape == (0, TINY.vocab_size)
    logits = f.run([(ids[9:], slots, 9)])
    assert max_diff(logits[0], f.reference_logits(ids)[-1]) <= TOLERANCE


def test_chunked_prefill_then_decode(tiny) -> None:
    f = Fixture(*tiny)
    ids = prompt(3, 12)
    slots = torch.arange(40, 0, -1)  # descending, non-contiguous with positions
    logits = torch.cat([f.run([(ids[:5], slots[:5], 0)]), f.run([(ids[5:], slots[:12], 5)])])
    assert max_diff(logits, f.reference_logits(ids)) <= TOLERANCE
    for _ in range(5):
        ids.append(int(logits[-1].argmax()))
        n = len(ids)
        logits = f.run([(ids[-1:], slots[:n], n - 1)])
        assert max_diff(logits[0], f.reference_logits(ids)[-1]) <= TOLERANCE


def test_ragged_batch_sharing_prefix_slots(tiny) -> None:
    f = Fixture(*tiny)
    prefix = prompt(4, 8)
    prefix_slots = torch.tensor([9, 3, 17, 5, 30, 2, 11, 8])
    f.run([(prefix, prefix_slots, 0)])
    suffix_a, suffix_b = prompt(5, 4), prompt(6, 7)
    slots_a = torch.cat([prefix_slots, torch.tensor([40, 41, 42, 43])])
    slots_b = torch.cat([prefix_slots, torch.arange(50, 57)])
    logits = f.run([(suffix_a, slots_a, 8), (suffix_b, slots_b, 8)])
    ids_a, ids_b = prefix + suffix_a, prefix + suffix_b
    assert max_diff(logits[:4], f.reference_logits(ids_a)[8:]) <= TOLERANCE
    assert max_diff(logits[4:], f.reference_logits(ids_b)[8:]) <= TOLERANCE
    # decode both (different context lengths: padded batch with a key mask); the padding sink
    # slot 0 holds garbage that must be masked out
    for layer in range(TINY.num_layers):
        f.pool.k[layer][0] = 50.0
        f.pool.v[layer][0] = -50.0
    for step in range(3):
        ids_a.append(int(logits[3 if step == 0 else 0].argmax()))
        ids_b.append(int(logits[-1].argmax()))
        slots_a = torch.cat([slots_a, torch.tensor([44 + step])])
        slots_b = torch.cat([slots_b, torch.tensor([57 + step])])
        logits = f.run(
            [(ids_a[-1:], slots_a, len(ids_a) - 1), (ids_b[-1:], slots_b, len(ids_b) - 1)]
        )
        assert max_diff(logits[0], f.reference_logits(ids_a)[-1]) <= TOLERANCE
        assert max_diff(logits[1], f.reference_logits(ids_b)[-1]) <= TOLERANCE


def test_mixed_batch_of_prefill_and_single_tokens(tiny) -> None:
    f = Fixture(*tiny)
    ids_a, ids_b, ids_c = prompt(7, 6), prompt(8, 1), prompt(9, 5)
    slots_a, slots_b, slots_c = torch.arange(1, 7), torch.tensor([7]), torch.arange(8, 13)
    f.run([(ids_a[:5], slots_a[:5], 0)])
    logits = f.run([(ids_a[5:], slots_a, 5), (ids_b, slots_b, 0), (ids_c, slots_c, 0)])
    assert max_diff(logits[0], f.reference_logits(ids_a)[-1]) <= TOLERANCE
    assert max_diff(logits[1], f.reference_logits(ids_b)[-1]) <= TOLERANCE
    assert max_diff(logits[2:], f.reference_logits(ids_c)) <= TOLERANCE


def test_decode_batch_of_equal_lengths(tiny) -> None:
    f = Fixture(*tiny)
    seqs = [prompt(10 + r, 4) for r in range(3)]
    slots = [torch.arange(1 + 4 * r, 5 + 4 * r) for r in range(3)]
    f.run([(s[:3], sl[:3], 0) for s, sl in zip(seqs, slots, strict=True)])
    logits = f.run([(s[3:], sl, 3) for s, sl in zip(seqs, slots, strict=True)])
    for r in range(3):
        assert max_diff(logits[r], f.reference_logits(seqs[r])[-1]) <= TOLERANCE


def test_forward_batch_validation(tiny) -> None:
    f = Fixture(*tiny)
    batch = make_batch([(prompt(0, 3), torch.arange(1, 4), 0)])
    batch.extend_lens = [2]
    with pytest.raises(ValueError, match="extend_lens"):
        f.runner.run(batch)
    batch = make_batch([(prompt(0, 3), torch.arange(1, 4), 0)])
    batch.logits_indices = torch.tensor([3])
    with pytest.raises(ValueError, match="logits_indices"):
        f.runner.run(batch)


def test_model_config_from_hf_dict() -> None:
    hf = hf_config(TINY).to_dict()
    assert ModelConfig.from_hf_dict(hf) == ModelConfig(**{**asdict(TINY), "eos_token_ids": (2,)})
    old_style = {**hf, "rope_theta": 5e5, "rope_parameters": None, "eos_token_id": [1, 2]}
    config = ModelConfig.from_hf_dict(old_style)
    assert config.rope_theta == 5e5 and config.eos_token_ids == (1, 2)
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(**{**asdict(TINY), "num_kv_heads": 3})


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64},
    ],
)  # fmt: skip
def test_rope_scaling_matches_transformers(rope: dict) -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = hf_config(TINY)
    hf.rope_parameters = {**rope, "rope_theta": 500000.0}
    config = ModelConfig.from_hf_dict(hf.to_dict())
    assert dict(config.rope_scaling)["rope_type"] == rope["rope_type"]
    expected, attention_factor = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf)
    assert attention_factor == 1.0
    torch.testing.assert_close(rope_inv_freq(config), expected)


@pytest.mark.model
def test_smollm2_matches_reference(embedded_model) -> None:
    """Chunked prefill of a shared prefix, a ragged batch of two continuations, then decode."""
    reference = LlamaForCausalLM.from_pretrained(embedded_model.model_dir, dtype=torch.float32)
    f = Fixture(embedded_model.model, reference.eval(), num_slots=128)
    tok = embedded_model.tokenizer
    prefix = tok.encode("The capital of France is Paris. The capital of")
    conts = [tok.encode(" Italy is"), tok.encode(" Germany, a large country, is")]
    n = len(prefix)
    prefix_slots = torch.arange(1, n + 1)
    logits = torch.cat(
        [f.run([(prefix[:4], prefix_slots[:4], 0)]), f.run([(prefix[4:], prefix_slots, 4)])]
    )
    assert max_diff(logits, f.reference_logits(prefix)) <= TOLERANCE
    seqs = [prefix + c for c in conts]
    slots = [
        torch.cat([prefix_slots, torch.arange(40 * r + 40, 40 * r + 40 + len(c))])
        for r, c in enumerate(conts)
    ]
    logits = f.run([(c, s, n) for c, s in zip(conts, slots, strict=True)])
    assert max_diff(logits[: len(conts[0])], f.reference_logits(seqs[0])[n:]) <= TOLERANCE
    assert max_diff(logits[len(conts[0]) :], f.reference_logits(seqs[1])[n:]) <= TOLERANCE
    last = [len(conts[0]) - 1, logits.shape[0] - 1]
    for _ in range(2):
        for r in range(2):
            seqs[r].append(int(logits[last[r]].argmax()))
            slots[r] = torch.cat([slots[r], slots[r][-1:] + 1])
        logits, last = (
            f.run([(s[-1:], sl, len(s) - 1) for s, sl in zip(seqs, slots, strict=True)]),
            [0, 1],
        )
        for r in range(2):
            assert max_diff(logits[r], f.reference_logits(seqs[r])[-1]) <= TOLERANCE
    assert tok.decode(seqs[0][n:]).startswith(" Italy is Rome")
