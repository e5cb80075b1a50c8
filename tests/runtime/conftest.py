"""Shared runtime fixtures: the real SmolLM2 (session-scoped) and a tiny random Llama with the
real vocabulary and tokenizer, plus helpers that drive an unthreaded Engine step by step (test modules import them with
`from conftest import ...`). Engines from `make_engine` run once per kernel set available here
(`KERNELS`: torch, and vllm where its ops import)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.kernels import vllm_kernels
from sgl_lang.runtime.model_loader import LoadedModel, ModelNotFoundError, load_model
from sgl_lang.runtime.models.config import ModelConfig
from sgl_lang.runtime.models.llama import LlamaModel, random_state_dict
from sgl_lang.runtime.request import Completion, OutputStream
from sgl_lang.runtime.sampling import SamplingParams

TINY_CONFIG = ModelConfig(
    vocab_size=49152,  # SmolLM2's, so the real tokenizer decodes its tokens
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,  # the smallest head vLLM's CPU attention has
    intermediate_size=128,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    eos_token_ids=(2,),
)


def available_kernels() -> list[str]:
    try:
        vllm_kernels.import_ops()
    except ImportError:
        return ["torch"]
    return ["torch", "vllm"]


KERNELS = available_kernels()


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def real_model() -> LoadedModel:
    """The embedded SmolLM2-135M (first conversion ~30 s, later loads a few seconds)."""
    try:
        return load_model()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tokenizer(real_model: LoadedModel) -> Any:
    return real_model.tokenizer


@pytest.fixture(scope="session")
def tiny_model(tokenizer: Any) -> LoadedModel:
    """A 2-layer, hidden-64 random Llama. Attention and MLP outputs are scaled up 4x: with the
    plain init the tied embedding dominates and the model just repeats its input token, so
    outputs would not depend on the context (and could not reveal a KV mix-up)."""
    state_dict = random_state_dict(TINY_CONFIG, seed=0)
    for name in state_dict:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            state_dict[name] = state_dict[name] * 4
    model = LlamaModel.from_state_dict(TINY_CONFIG, state_dict).eval()
    return LoadedModel(TINY_CONFIG, model, tokenizer, Path("."))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Engine tests run once per kernel set available here, and a module that sets `PAGE_SIZES`
    runs them at each of those page sizes too (the vllm kernels only at multiples of 32)."""
    marked = {name for m in metafunc.definition.iter_markers("parametrize") for name in _names(m)}
    if "kernels" not in metafunc.fixturenames or "kernels" in marked:
        return  # a test choosing its kernels itself
    sizes = getattr(metafunc.module, "PAGE_SIZES", None)
    if sizes is None or "page_size" not in metafunc.fixturenames:
        metafunc.parametrize("kernels", KERNELS)
        return
    combos = [(k, p) for k in KERNELS for p in sizes if k != "vllm" or p % 32 == 0]
    metafunc.parametrize(("kernels", "page_size"), combos, ids=[f"{k}-{p}" for k, p in combos])


def _names(mark: pytest.Mark) -> list[str]:
    names = mark.args[0]
    return [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)


@pytest.fixture
def kernels() -> str:
    """The kernel set of the engines `make_engine` builds (see `pytest_generate_tests`)."""
    return "auto"


@pytest.fixture
def page_size() -> int | None:
    """The KV page size of the engines `make_engine` builds; None: what the kernels need."""
    return None


@pytest.fixture
def make_engine(
    tiny_model: LoadedModel, kernels: str, page_size: int | None
) -> Iterator[Callable[..., Engine]]:
    """Build unthreaded engines on the tiny model (`model=` overrides) with `kernels` and
    `page_size` (`kernels=`, `page_size=` override); closed at teardown."""
    engines: list[Engine] = []

    def make(**options: Any) -> Engine:
        options.setdefault("model", tiny_model)
        options.setdefault("kernels", kernels)
        options.setdefault("page_size", page_size)
        options.setdefault("threaded", False)
        options.setdefault("kv_cache_tokens", 4096)
        engine = Engine(**options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def greedy(max_new_tokens: int = 8, **fields: Any) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, **fields)


def run_steps(engine: Engine, *, check: bool = True, max_steps: int = 100_000) -> int:
    """Step an unthreaded engine until idle, checking slot ownership after every step."""
    for num_steps in range(max_steps):
        if not engine.step():
            return num_steps
        if check:
            engine.check_integrity()
    raise AssertionError(f"the engine was still busy after {max_steps} steps")


def run_all(
    engine: Engine,
    prompts: Sequence[str | Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams],
    *,
    check: bool = True,
) -> list[Completion]:
    """Submit all prompts at once, run to the end, return their completions in prompt order."""
    all_params = params if isinstance(params, Sequence) else [params] * len(prompts)
    streams = [OutputStream() for _ in prompts]
    reqs = [
        engine.submit(p, sp, stream=s)
        for p, sp, s in zip(prompts, all_params, streams, strict=False)
    ]
    run_steps(engine, check=check)
    assert all(r.finished for r in reqs)
    return [collect(s) for s in streams]


def collect(stream: OutputStream) -> Completion:
    parts = []
    while True:
        chunk = stream.get_sync(timeout=60)
        parts.append(chunk.text)
        if chunk.meta is not None:
            return Completion("".join(parts), chunk.meta)


def assert_idle_and_leak_free(engine: Engine) -> None:
    """Nothing running, every page either free or in the tree; a flush frees them all."""
    allocator = engine.kv_pool.allocator
    assert not engine.scheduler.has_work
    engine.check_integrity()  # no request holds a page: each is free or the tree's
    assert engine.prefix_cache.protected_size == 0
    engine.flush_cache()
    assert allocator.num_free_pages == allocator.num_pages
    engine.check_integrity()


def token_ids(seed: int, num: int) -> list[int]:
    """Deterministic ordinary token ids (no special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, 49000, (num,), generator=gen).tolist()
