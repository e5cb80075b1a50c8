"""Where the peer engines live (`benchmarks/peers/setup.sh` puts them there) and how the
benchmark finds the model files they read."""

from __future__ import annotations

import os
from pathlib import Path

from .base import Unavailable

PEERS_DIR = Path(os.environ.get("SGL_PEERS_DIR", Path.home() / ".cache" / "sgl-lang" / "peers"))


def peer_python(peer: str) -> Path:
    """The Python of a peer's own virtual environment; Unavailable when it is not set up."""
    python = PEERS_DIR / peer / "bin" / "python"
    if not python.exists():
        raise Unavailable(f"{python} not found: run `benchmarks/peers/setup.sh {peer}` first")
    return python


def safetensors_dir() -> Path:
    """The safetensors copy of the embedded GGUF that `runtime/model_loader.py` writes."""
    from sgl_lang.runtime.model_loader import hf_folder

    return hf_folder(None)


def gguf_path() -> Path:
    from sgl_lang.runtime.model_loader import embedded_model_path

    return embedded_model_path()
