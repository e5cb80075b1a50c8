"""Weight-only int8/int4 quantization of a model's linear layers, on torch's packed CPU kernels.

int8: one symmetric scale per output row, `aten._weight_int8pack_mm`. int4: asymmetric groups
of `group_size` input columns (scale and zero per group), `aten._weight_int4pack_mm_for_cpu`.
Both kernels take bf16 activations (their fp32 paths are several times slower, see
docs/quantization.md), so `x` is rounded to bf16 and the result cast back to `x.dtype`.
At many rows (prefill, large decode batches) they are slower than a dense fp32 matmul, so a
`QuantizedLinear` runs such steps on a dense copy of the dequantized weight.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sgl_lang.runtime.config import DENSE_ROWS, GROUP_SIZES, QUANT_MODES

if TYPE_CHECKING:
    from sgl_lang.runtime.models.llama import LlamaModel

LAYER_WEIGHTS = ("qkv_weight", "o_weight", "gate_up_weight", "down_weight")
_ACT_DTYPE = torch.bfloat16  # what both kernels multiply in


@dataclass(frozen=True)
class QuantSpec:
    """How a model's linear weights are stored: `mode` in QUANT_MODES; int4 groups of
    `group_size` input columns (or gcd(group_size, in_features) when that does not divide);
    `lm_head` quantizes the output projection too, always as int8 (int4 there costs ~6x the
    logit error of int4 elsewhere: docs/quantization.md); steps of `dense_rows` rows or more
    multiply by a dense fp32 copy of the dequantized weights (0: never, saving its memory)."""

    mode: str = "none"
    group_size: int = 32
    lm_head: bool = True
    dense_rows: int = DENSE_ROWS

    def __post_init__(self) -> None:
        if self.mode not in QUANT_MODES:
            raise ValueError(f"quantize: expected one of {QUANT_MODES}, got {self.mode!r}")
        if self.group_size not in GROUP_SIZES:
            raise ValueError(
                f"quantize_group_size: expected one of {GROUP_SIZES}, got {self.group_size!r}"
            )
        if self.dense_rows < 0:
            raise ValueError(f"quantize_dense_rows: expected >= 0, got {self.dense_rows!r}")

    @property
    def tag(self) -> str:
        """A short name of the layout, for cache keys and benchmark rows."""
        head = "" if self.lm_head else "-nohead"
        group = f"-g{self.group_size}" if self.mode == "int4" else ""
        return f"{self.mode}{group}{head}"


class QuantizedWeight(ABC):
    """A linear layer's weight `W [out_features, in_features]` stored quantized; prepared once at
    load. `linear(x)` computes `x @ W^T (+ bias)` in `x.dtype`; `tensors()`/`from_tensors` are
    its cacheable form; `dense_rows` (set by `install`) is when `QuantizedLinear` goes dense."""

    dense_rows = 0

    def __init__(self, out_features: int, in_features: int) -> None:
        self.out_features, self.in_features = out_features, in_features

    def linear(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        out = self._mm(x.to(_ACT_DTYPE)).to(x.dtype)
        return out if bias is None else out + bias

    @abstractmethod
    def _mm(self, x: Tensor) -> Tensor:
        """`x @ W^T` for a bf16 `x` [M, K], bf16 out."""

    @abstractmethod
    def dequantize(self) -> Tensor:
        """The fp32 weight [N, K] this one stands for (for tests and error accounting)."""

    @abstractmethod
    def tensors(self) -> dict[str, Tensor]:
        """The tensors that rebuild this weight through `from_tensors`."""


class Int8Weight(QuantizedWeight):
    """int8 rows `q [N, K]` with one scale per row: W ≈ q * scale[:, None]."""

    def __init__(self, q: Tensor, scales: Tensor) -> None:
        super().__init__(*q.shape)
        self.q, self.scales = q.contiguous(), scales.to(_ACT_DTYPE)

    @classmethod
    def quantize(cls, weight: Tensor) -> Int8Weight:
        w = weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q, scales.to(_ACT_DTYPE))

    def _mm(self, x: Tensor) -> Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.q, self.scales)

    def dequantize(self) -> Tensor:
        return self.q.float() * self.scales.float()[:, None]

    def tensors(self) -> dict[str, Tensor]:
        return {"q": self.q, "scales": self.scales}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> Int8Weight:
        return cls(tensors["q"], tensors["scales"])


class Int4Weight(QuantizedWeight):
    """uint4 values in groups of `group_size` columns: W ≈ (q - 8) * scale + zero per group,
    packed by `_convert_weight_to_int4pack_for_cpu`; `scales_zeros` is [K / group, N, 2]."""

    def __init__(self, packed: Tensor, scales_zeros: Tensor) -> None:
        out_features, in_features = packed.shape[0], 2 * packed.shape[1]  # two values a byte
        super().__init__(out_features, in_features)
        self.packed, self.scales_zeros = packed, scales_zeros.to(_ACT_DTYPE)
        self.group_size = in_features // scales_zeros.shape[0]

    @classmethod
    def quantize(cls, weight: Tensor, group_size: int) -> Int4Weight:
        n, k = weight.shape
        group = math.gcd(group_size, k)
        w = weight.detach().float().view(n, k // group, group)
        low, high = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
        scales = ((high - low) / 15).clamp(min=1e-12)
        q = torch.round((w - low) / scales).clamp(0, 15).to(torch.int32).view(n, k)
        zeros = low + 8 * scales
        scales_zeros = torch.stack([scales[..., 0], zeros[..., 0]], dim=-1).transpose(0, 1)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        return cls(packed, scales_zeros.contiguous())

    def _mm(self, x: Tensor) -> Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, self.packed, self.group_size, self.scales_zeros
        )

    def dequantize(self) -> Tensor:
        # the kernel's own arithmetic, applied to an identity: column j of I @ W^T is W[:, j]
        eye = torch.eye(self.in_features, dtype=_ACT_DTYPE)
        return self._mm(eye).float().t().contiguous()

    def tensors(self) -> dict[str, Tensor]:
        return {"packed": self.packed, "scales_zeros": self.scales_zeros}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> Int4Weight:
        return cls(tensors["packed"], tensors["scales_zeros"])


class QuantizedLinear:
    """A quantized weight prepared for one kernel set: steps of fewer than `weight.dense_rows`
    rows run its quantized kernel, larger ones `dense`, the kernel set's linear of
    `weight.dequantize()` (faster there: docs/quantization.md), on `x` as it is: exactly fp32's
    matmul, where the quantized kernels round `x` and their output to bf16."""

    def __init__(
        self,
        weight: QuantizedWeight,
        bias: Tensor | None,
        dense: Callable[[Tensor], Tensor] | None,
    ) -> None:
        self.weight, self.bias, self.dense = weight, bias, dense

    def __call__(self, x: Tensor) -> Tensor:
        if self.dense is None or x.shape[0] < self.weight.dense_rows:
            return self.weight.linear(x, self.bias)
        out = self.dense(x)
        return out if self.bias is None else out + self.bias


def quantize_weight(weight: Tensor, mode: str, group_size: int) -> QuantizedWeight:
    """`weight` [out, in] as `mode` ("int8" or "int4", in groups of `group_size` columns)."""
    if mode == "int8":
        return Int8Weight.quantize(weight)
    if mode == "int4":
        return Int4Weight.quantize(weight, group_size)
    raise ValueError(f"quantize_weight: nothing to do for mode {mode!r}")


def weight_names(model: LlamaModel, spec: QuantSpec) -> list[str]:
    """The dotted names (`layers.3.qkv_weight`, `lm_head`) of the weights `spec` quantizes."""
    names = [f"layers.{i}.{name}" for i in range(len(model.layers)) for name in LAYER_WEIGHTS]
    return [*names, "lm_head"] if spec.lm_head else names


def quantize_model(model: LlamaModel, spec: QuantSpec) -> dict[str, QuantizedWeight]:
    """Quantize the weights `spec` names (from the model's fp weights), keyed by name."""
    return {
        name: quantize_weight(
            _get(model, name), "int8" if name == "lm_head" else spec.mode, spec.group_size
        )
        for name in weight_names(model, spec)
    }


def install(model: LlamaModel, weights: dict[str, QuantizedWeight], dense_rows: int) -> LlamaModel:
    """Put `weights` in place of the model's parameters of the same names (the fp tensors are
    dropped; the embedding stays fp even when `lm_head` was tied to it); steps of `dense_rows`
    rows or more will run them dense (`QuantizedLinear`; 0: never)."""
    for name, weight in weights.items():
        weight.dense_rows = dense_rows
        owner, attr = _owner(model, name)
        if attr in owner._parameters:
            del owner._parameters[attr]
        object.__setattr__(owner, attr, weight)
    return model


def to_tensors(weights: dict[str, QuantizedWeight]) -> dict[str, Tensor]:
    """Flatten `weights` into one `{name.part: tensor}` dict (the cache's safetensors form)."""
    return {f"{name}.{part}": t for name, w in weights.items() for part, t in w.tensors().items()}


def from_tensors(tensors: dict[str, Tensor]) -> dict[str, QuantizedWeight]:
    """Rebuild the weights `to_tensors` flattened (int8 ones have a `q`, int4 ones `packed`)."""
    grouped: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        name, part = key.rsplit(".", 1)
        grouped.setdefault(name, {})[part] = tensor
    return {
        name: (Int8Weight if "q" in parts else Int4Weight).from_tensors(parts)
        for name, parts in grouped.items()
    }


def _owner(model: LlamaModel, name: str) -> tuple[torch.nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def _get(model: LlamaModel, name: str) -> Tensor:
    owner, attr = _owner(model, name)
    weight = getattr(owner, attr)
    if not isinstance(weight, Tensor):
        raise ValueError(f"{name} is already quantized")
    return weight
