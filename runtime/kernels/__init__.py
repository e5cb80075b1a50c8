"""The kernel sets a forward pass can run on, chosen by name: `torch` (portable reference),
`vllm` (vLLM-CPU's ops) or `auto` (vllm where its ops import, else torch); docs/kernels.md."""

from __future__ import annotations

import torch

from sgl_lang.runtime.config import KERNELS
from sgl_lang.runtime.kernels.base import Kernels, KernelsUnavailableError, PreparedLinear
from sgl_lang.runtime.kernels.torch_kernels import TorchKernels
from sgl_lang.runtime.kernels.vllm_kernels import VllmKernels

__all__ = ["Kernels", "KernelsUnavailableError", "PreparedLinear", "load_kernels"]


def load_kernels(name: str, device: str | torch.device, head_dim: int) -> Kernels:
    """The kernel set `name` on `device` for a model with heads of `head_dim`. `auto` falls back
    to torch when vLLM's ops cannot run here; an explicit `vllm` raises KernelsUnavailableError
    saying why."""
    device = torch.device(device)
    if name == "torch":
        return TorchKernels()
    if name == "vllm":
        return VllmKernels.load(device, head_dim)
    if name != "auto":
        raise ValueError(f"kernels: expected one of {KERNELS}, got {name!r}")
    try:
        return VllmKernels.load(device, head_dim)
    except KernelsUnavailableError:
        return TorchKernels()
