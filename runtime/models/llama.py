"""Our forward pass for Llama-family decoders (Llama, SmolLM, Qwen2, Mistral) over a paged KV pool."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgl_lang.runtime.kernels import Kernels, PreparedLinear
from sgl_lang.runtime.kernels.base import cos_sin_cache
from sgl_lang.runtime.models.config import ModelConfig
from sgl_lang.runtime.quantization import QuantizedLinear, QuantizedWeight

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


def _prepare_linear(
    kernels: Kernels, weight: Tensor | QuantizedWeight, bias: Tensor | None = None
) -> PreparedLinear:
    """A tensor is prepared by the kernel set; a quantized weight runs its own kernel, and the
    kernel set's linear of its dequantized form at many rows (runtime/quantization.py)."""
    if isinstance(weight, QuantizedWeight):
        dense = kernels.prepare_linear(weight.dequantize()) if weight.dense_rows else None
        return QuantizedLinear(weight, bias, dense)
    return kernels.prepare_linear(weight, bias)


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


class PreparedLayer(NamedTuple):
    """One layer's linear weights, prepared by the kernel set."""

    qkv: PreparedLinear
    o: PreparedLinear
    gate_up: PreparedLinear
    down: PreparedLinear


@dataclass
class PreparedModel:
    """A model's weights made ready once for one kernel set (`LlamaModel.prepare`)."""

    kernels: Kernels
    layers: list[PreparedLayer]
    lm_head: PreparedLinear
    cos_sin_cache: Tensor  # [positions, head_dim], grown when a longer context comes


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

    def prepare(self, kernels: Kernels) -> PreparedModel:
        """The linear weights (lm_head too) prepared by `kernels`, and the rotary table."""
        layers = [
            PreparedLayer(
                _prepare_linear(kernels, layer.qkv_weight, layer.qkv_bias),
                _prepare_linear(kernels, layer.o_weight),
                _prepare_linear(kernels, layer.gate_up_weight),
                _prepare_linear(kernels, layer.down_weight),
            )
            for layer in self.layers
        ]
        cos_sin = cos_sin_cache(self.inv_freq, self.config.max_position_embeddings, self.dtype)
        return PreparedModel(kernels, layers, _prepare_linear(kernels, self.lm_head), cos_sin)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.dtype

    def forward(self, batch: ForwardBatch, kv_pool: KVPool, prepared: PreparedModel) -> Tensor:
        """Run the new tokens of `batch` on the kernels of `prepared` (those of `kv_pool`), write
        their K/V into `kv_pool`, return fp32 logits `[len(batch.logits_indices), vocab]`."""
        c, ops = self.config, prepared.kernels
        num_q, num_kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        num_positions = int(batch.positions.max()) + 1
        if num_positions > prepared.cos_sin_cache.shape[0]:
            prepared.cos_sin_cache = cos_sin_cache(self.inv_freq, 2 * num_positions, self.dtype)
        plan = ops.plan_attention(batch, kv_pool.page_size, c.num_heads, kv_pool.k[0])
        residual = F.embedding(batch.input_ids, self.embed_tokens)
        h = ops.rms_norm(residual, self.layers[0].input_norm, c.rms_norm_eps)
        last = len(self.layers) - 1
        for i, (layer, weights) in enumerate(zip(self.layers, prepared.layers, strict=True)):
            qkv = ops.linear(h, weights.qkv)
            q, k = ops.rotary(batch.positions, qkv[:, :num_q], qkv[:, num_q : num_q + num_kv],
                              c.head_dim, prepared.cos_sin_cache)  # fmt: skip
            v = qkv[:, num_q + num_kv :]
            kv_pool.write(
                i, batch.out_slots, *(t.view(-1, c.num_kv_heads, c.head_dim) for t in (k, v))
            )
            out = ops.attention(
                q.view(-1, c.num_heads, c.head_dim), kv_pool.k[i], kv_pool.v[i], plan
            )
            if i == last:  # the last layer's output is needed only where logits are
                out, residual = out[batch.logits_indices], residual[batch.logits_indices]
            h, residual = ops.add_rms_norm(ops.linear(out, weights.o), residual, layer.post_norm,
                                           c.rms_norm_eps)  # fmt: skip
            mlp_out = ops.linear(ops.silu_and_mul(ops.linear(h, weights.gate_up)), weights.down)
            next_norm = self.layers[i + 1].input_norm if i < last else self.norm
            h, residual = ops.add_rms_norm(mlp_out, residual, next_norm, c.rms_norm_eps)
        return ops.linear(h, prepared.lm_head).float()


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
