"""The systems the benchmark compares, by name; each is built lazily (peers import nothing
until they are asked for)."""

from __future__ import annotations

from collections.abc import Callable

from .base import System, TokenCounts, Unavailable


def _test() -> System:
    from .test import TestSystem

    return TestSystem()


def _ours(name: str, description: str, **config: object) -> Callable[[], System]:
    def make() -> System:
        from .ours import Ours

        return Ours(name, description, **config)

    return make


def _transformers() -> System:
    from .transformers_calls import TransformersCalls

    return TransformersCalls()


def _vllm() -> System:
    from .vllm import Vllm

    return Vllm()


def _llamacpp() -> System:
    from .llamacpp import LlamaCpp

    return LlamaCpp()


SYSTEMS: dict[str, Callable[[], System]] = {
    "sgl": _ours("sgl", "sgl-lang: radix cache on, cache-aware policy (lpm)", policy="lpm"),
    "sgl-nocache": _ours("sgl-nocache", "sgl-lang: radix cache off", enable_cache=False),
    "sgl-fcfs": _ours(
        "sgl-fcfs", "sgl-lang: radix cache on, first come first served", policy="fcfs"
    ),
    "sgl-torch": _ours(
        "sgl-torch", "sgl-lang: radix cache on, lpm, the portable torch kernels", kernels="torch"
    ),
    "sgl-page32": _ours(
        "sgl-page32", "sgl-lang: radix cache on, lpm, KV pages of 32 tokens", page_size=32
    ),
    "sgl-int8": _ours(
        "sgl-int8", "sgl-lang, int8 weights (quantized), radix cache on", quantize="int8"
    ),
    "sgl-int4": _ours(
        "sgl-int4", "sgl-lang, int4 weights (quantized), radix cache on", quantize="int4"
    ),
    "transformers": _transformers,
    "vllm": _vllm,
    "llamacpp": _llamacpp,
    "test": _test,
}


def make_system(name: str) -> System:
    return SYSTEMS[name]()


__all__ = ["SYSTEMS", "System", "TokenCounts", "Unavailable", "make_system"]
