"""ModelConfig: the shape of a Llama-family decoder, read from a Hugging Face config.json."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """The sizes and options of a Llama-family decoder; validated on construction."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    eos_token_ids: tuple[int, ...] = ()
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    rope_scaling: tuple[tuple[str, Any], ...] = ()  # (key, value) pairs; rope_type linear/llama3

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "intermediate_size", "max_position_embeddings"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if dict(self.rope_scaling).get("rope_type", "default") not in (
            "default",
            "linear",
            "llama3",
        ):
            raise ValueError(f"ModelConfig.rope_scaling: unsupported {dict(self.rope_scaling)}")

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any]) -> ModelConfig:
        """Read a transformers config dict (v4 `rope_theta`/`rope_scaling` or v5 `rope_parameters`)."""
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        rope_theta = rope.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0
        if rope.get("rope_type", rope.get("type", "default")) == "default":
            rope = {}
        elif "type" in rope:
            rope["rope_type"] = rope.pop("type")
        num_heads = hf["num_attention_heads"]
        eos = hf.get("eos_token_id")
        max_positions = hf.get("max_position_embeddings", 2048)
        window = hf.get("sliding_window")
        if window and hf.get("use_sliding_window", True):
            max_positions = min(max_positions, window)  # we never attend through a sliding window
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
            intermediate_size=hf["intermediate_size"],
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            max_position_embeddings=max_positions,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
            attention_bias=bool(hf.get("attention_bias", hf.get("model_type") == "qwen2")),
            rope_scaling=tuple(sorted(rope.items())),
        )
