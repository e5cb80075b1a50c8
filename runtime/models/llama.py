"""Our forward pass for Llama-family decoders (Llama, SmolLM, Qwen2, Mistral) over a paged KV pool."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgl_lang.runtime.models.config import ModelConfig
from sgl_lang.runtime.quantization import QuantizedWeight

if TYPE_CHECKING:
    from sgl_lang.runtime.kv_pool import KVPool
    from sgl_lang.runtime.model_runner import ForwardBatch


def rope_inv_freq(config: ModelConfig) -> Tensor:
    """Inverse RoPE frequencies [head_dim / 2], fp32, as transformers computes them."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.float, device="cpu") / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scaling = dict(config.rope_scaling)
    if scaling.get("rope_type") == "linear":
        return inv_freq / scaling["factor"]
    if scaling.get("rope_type") == "llama3":
        factor, old_len = scaling["factor"], scaling["original_max_position_embeddings"]
        low_wavelen = old_len / scaling["low_freq_factor"]
        high_wavelen = old_len / scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - scaling["low_freq_factor"]) / (
            scaling["high_freq_factor"] - scaling["low_freq_factor"]
        )
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    if x.dtype == torch.float32:  # the fused kernel; bit-identical to the steps below in fp32
        return F.rms_norm(x, weight.shape, weight, eps)
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _linear(x: Tensor, weight: Tensor | QuantizedWeight, bias: Tensor | None = None) -> Tensor:
    """`F.linear`, or the quantized weight's own kernel. On CPU, 2..256 rows run as (W @ x^T)^T: measured 1.1-4x faster there
    (oneDNN picks a poor kernel for a short x against a tall W, e.g. the lm_head in decode)."""
    if isinstance(weight, QuantizedWeight):
        return weight.linear(x, bias)
    if x.is_cpu and 2 <= x.shape[0] <= 256:
        out = torch.mm(weight, x.t()).t().contiguous()
        return out if bias is None else out + bias
    return F.linear(x, weight, bias)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _param(t: Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class LlamaLayer(nn.Module):
    """One decoder layer's weights, with q/k/v and gate/up fused into single matrices."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        qkv_rows = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        self.input_norm = _param(torch.ones(c.hidden_size))
        self.qkv_weight = _param(torch.empty(qkv_rows, c.hidden_size))
        self.qkv_bias = _param(torch.zeros(qkv_rows)) if c.attention_bias else None
        self.o_weight = _param(torch.empty(c.hidden_size, c.num_heads * c.head_dim))
        self.post_norm = _param(torch.ones(c.hidden_size))
        self.gate_up_weight = _param(torch.empty(2 * c.intermediate_size, c.hidden_size))
        self.down_weight = _param(torch.empty(c.hidden_size, c.intermediate_size))


class _Attention(NamedTuple):
    """Per-forward attention metadata, shared by all layers.

    Decode batches (one new token per request) use one padded SDPA call: `gather_slots` [B, L_max]
    (padding = slot 0, the sink) and `key_mask` [B, 1, 1, L_max] (None when all lengths agree).
    Other batches attend per request: `requests` holds (first token, num tokens, slots, mask);
    mask is None for a single token or a prefill without prefix (SDPA's `is_causal` square).
    """

    gather_slots: Tensor | None
    key_mask: Tensor | None
    requests: list[tuple[int, int, Tensor, Tensor | None]]


def plan_attention(batch: ForwardBatch) -> _Attention:
    """Build the gather indices and causal masks for `batch` once per forward."""
    seq_slots, extend_lens = batch.seq_slots, batch.extend_lens
    if len(seq_slots) > 1 and all(n == 1 for n in extend_lens):
        gather = nn.utils.rnn.pad_sequence(list(seq_slots), batch_first=True, padding_value=0)
        seq_lens = torch.tensor([len(s) for s in seq_slots], device=gather.device)
        mask = None
        if int(seq_lens.min()) != gather.shape[1]:
            mask = torch.arange(gather.shape[1], device=gather.device) < seq_lens[:, None]
            mask = mask[:, None, None, :]
        return _Attention(gather, mask, [])
    requests, start = [], 0
    for slots, num_new in zip(seq_slots, extend_lens, strict=True):
        ctx_len, mask = len(slots), None
        if 1 < num_new < ctx_len:  # bottom-right aligned: new token j sees keys[: prefix + j + 1]
            key_pos = torch.arange(ctx_len, device=slots.device)
            query_pos = torch.arange(ctx_len - num_new, ctx_len, device=slots.device)
            mask = key_pos[None, :] <= query_pos[:, None]
        requests.append((start, num_new, slots, mask))
        start += num_new
    return _Attention(None, None, requests)


class LlamaModel(nn.Module):
    """A Llama-family decoder whose attention reads and writes K/V through slot indices."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = _param(torch.empty(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(LlamaLayer(config) for _ in range(config.num_layers))
        self.norm = _param(torch.ones(config.hidden_size))
        self.lm_head = (
            self.embed_tokens
            if config.tie_word_embeddings
            else _param(torch.empty(config.vocab_size, config.hidden_size))
        )
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    @classmethod
    def from_state_dict(cls, config: ModelConfig, state_dict: Mapping[str, Tensor]) -> LlamaModel:
        """Build from transformers' `LlamaForCausalLM` parameter names (`model.layers.0....`).
        Unfused tensors are used as they are (no copy); dtypes are unified by a later `.to()`."""
        with torch.device("meta"):  # shapes only; every parameter is replaced below
            model = cls(config)
        sd = {k.removeprefix("model."): v for k, v in state_dict.items()}

        def put(module: nn.Module, name: str, tensor: Tensor, key: str) -> None:
            expected = getattr(module, name).shape
            if tensor.shape != expected:
                raise ValueError(f"{key}: shape {tuple(tensor.shape)} != {tuple(expected)}")
            setattr(module, name, _param(tensor))

        put(model, "embed_tokens", sd["embed_tokens.weight"], "embed_tokens.weight")
        put(model, "norm", sd["norm.weight"], "norm.weight")
        if config.tie_word_embeddings:
            model.lm_head = model.embed_tokens
        else:
            put(model, "lm_head", state_dict["lm_head.weight"], "lm_head.weight")
        for i, layer in enumerate(model.layers):
            p = f"layers.{i}."
            attn, mlp = p + "self_attn.", p + "mlp."
            qkv = torch.cat([sd[f"{attn}{n}_proj.weight"] for n in "qkv"])
            put(layer, "qkv_weight", qkv, attn + "qkv_proj.weight")
            if config.attention_bias:
                qkv_bias = torch.cat([sd[f"{attn}{n}_proj.bias"] for n in "qkv"])
                put(layer, "qkv_bias", qkv_bias, attn + "qkv_proj.bias")
            put(layer, "o_weight", sd[attn + "o_proj.weight"], attn + "o_proj.weight")
            gate_up = torch.cat([sd[mlp + "gate_proj.weight"], sd[mlp + "up_proj.weight"]])
            put(layer, "gate_up_weight", gate_up, mlp + "gate_up_proj.weight")
            put(layer, "down_weight", sd[mlp + "down_proj.weight"], mlp + "down_proj.weight")
            put(layer, "input_norm", sd[p + "input_layernorm.weight"], p + "input_layernorm")
            put(layer, "post_norm", sd[p + "post_attention_layernorm.weight"], p + "post_norm")
        model.inv_freq = rope_inv_freq(config)
        return model

    @classmethod
    def random(cls, config: ModelConfig, seed: int = 0) -> LlamaModel:
        """A randomly initialised model (for tests); see `random_state_dict`."""
        return cls.from_state_dict(config, random_state_dict(config, seed))

    def forward(self, batch: ForwardBatch, kv_pool: KVPool) -> Tensor:
        """Run the new tokens of `batch`, write their K/V into `kv_pool`, return fp32 logits
        `[len(batch.logits_indices), vocab]`."""
        c = self.config
        num_tokens = batch.input_ids.shape[0]
        num_q, num_kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        x = F.embedding(batch.input_ids, self.embed_tokens)
        freqs = batch.positions[:, None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        plan = plan_attention(batch)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.input_norm, c.rms_norm_eps)
            qkv = _linear(h, layer.qkv_weight, layer.qkv_bias)
            qk = qkv[:, : num_q + num_kv].view(num_tokens, -1, c.head_dim)
            qk = qk * cos + _rotate_half(qk) * sin
            q, k = qk[:, : c.num_heads], qk[:, c.num_heads :]
            v = qkv[:, num_q + num_kv :].view(num_tokens, c.num_kv_heads, c.head_dim)
            kv_pool.write(i, batch.out_slots, k, v)
            out = self._attend(q, kv_pool.k[i], kv_pool.v[i], plan)
            if i == last:  # the last layer's output is needed only where logits are
                out, x = out[batch.logits_indices], x[batch.logits_indices]
            x = x + _linear(out, layer.o_weight)
            h = _rms_norm(x, layer.post_norm, c.rms_norm_eps)
            gate, up = _linear(h, layer.gate_up_weight).chunk(2, dim=-1)
            x = x + _linear(F.silu(gate) * up, layer.down_weight)
        x = _rms_norm(x, self.norm, c.rms_norm_eps)
        return _linear(x, self.lm_head).float()

    def _attend(self, q: Tensor, k_pool: Tensor, v_pool: Tensor, plan: _Attention) -> Tensor:
        """q [T, H, D] -> attention output [T, H * D]."""
        num_tokens = q.shape[0]
        if plan.gather_slots is not None:
            # index_select on the flat slots is several times faster than 2-D fancy indexing
            flat, shape = plan.gather_slots.view(-1), (*plan.gather_slots.shape, *k_pool.shape[1:])
            k = k_pool.index_select(0, flat).view(shape).transpose(1, 2)  # [B, KV, L, D]
            v = v_pool.index_select(0, flat).view(shape).transpose(1, 2)
            out = F.scaled_dot_product_attention(
                q[:, :, None, :], k, v, attn_mask=plan.key_mask, enable_gqa=True
            )
            return out.reshape(num_tokens, -1)
        outs = []
        for start, num_new, slots, mask in plan.requests:
            q_i = q[start : start + num_new].transpose(0, 1)[None]  # [1, H, n, D]
            k = k_pool.index_select(0, slots).transpose(0, 1)[None]  # [1, KV, L, D]
            v = v_pool.index_select(0, slots).transpose(0, 1)[None]
            is_causal = mask is None and num_new > 1  # no prefix: the plain causal square
            o = F.scaled_dot_product_attention(
                q_i, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True
            )
            outs.append(o[0].transpose(0, 1).reshape(num_new, -1))
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def random_state_dict(config: ModelConfig, seed: int = 0) -> dict[str, Tensor]:
    """Random weights under transformers' parameter names, scaled (std 1/sqrt(fan_in), unit
    embeddings) so that a tiny model's next-token distributions are peaked, not near-uniform."""
    c = config
    gen = torch.Generator().manual_seed(seed)

    def linear(rows: int, cols: int) -> Tensor:
        return torch.randn(rows, cols, generator=gen) / math.sqrt(cols)

    def norm() -> Tensor:
        return 1.0 + 0.1 * torch.randn(c.hidden_size, generator=gen)

    sd = {"model.embed_tokens.weight": torch.randn(c.vocab_size, c.hidden_size, generator=gen)}
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = linear(c.num_heads * c.head_dim, c.hidden_size)
        sd[p + "self_attn.k_proj.weight"] = linear(c.num_kv_heads * c.head_dim, c.hidden_size)
        sd[p + "self_attn.v_proj.weight"] = linear(c.num_kv_heads * c.head_dim, c.hidden_size)
        if c.attention_bias:
            for n, rows in (("q", c.num_heads), ("k", c.num_kv_heads), ("v", c.num_kv_heads)):
                sd[f"{p}self_attn.{n}_proj.bias"] = 0.1 * torch.randn(
                    rows * c.head_dim, generator=gen
                )
        sd[p + "self_attn.o_proj.weight"] = linear(c.hidden_size, c.num_heads * c.head_dim)
        sd[p + "mlp.gate_proj.weight"] = linear(c.intermediate_size, c.hidden_size)
        sd[p + "mlp.up_proj.weight"] = linear(c.intermediate_size, c.hidden_size)
        sd[p + "mlp.down_proj.weight"] = linear(c.hidden_size, c.intermediate_size)
        sd[p + "input_layernorm.weight"] = norm()
        sd[p + "post_attention_layernorm.weight"] = norm()
    sd["model.norm.weight"] = norm()
    if not c.tie_word_embeddings:
        sd["lm_head.weight"] = linear(c.vocab_size, c.hidden_size)
    return sd
