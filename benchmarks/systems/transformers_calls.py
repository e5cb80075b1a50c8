"""transformers, call by call: every `gen` is its own `model.generate()` and every `select`
choice its own forward, one call at a time, nothing reused between calls — how
Guidance/LMQL-style tools drive a local model. Constraints use the same llguidance masks as
our runtime (as a `LogitsProcessor`), so only the engine differs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from sgl_lang.protocol import (
    Backend,
    BackendError,
    Capabilities,
    Choices,
    GenRequest,
    GenResult,
    JsonSchema,
    Prompt,
    Regex,
)

from .base import System, TokenCounts, cut_at_stop, normalized_scores, prompt_ids, score_inputs


class TransformersCalls(System):
    name = "transformers"
    description = "transformers, call by call (no reuse)"
    parallel = 64  # the backend serialises calls; this only keeps programs queued

    def __init__(self) -> None:
        self._state: tuple[Any, Any, Any] | None = None
        self._counts = [0, 0]  # prompt tokens computed, cached (always 0)

    def start(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from sgl_lang.runtime.constrained import ConstraintCache
        from sgl_lang.runtime.model_loader import load_model

        loaded = load_model(None)  # the converted safetensors folder of the embedded GGUF
        model = AutoModelForCausalLM.from_pretrained(loaded.model_dir, dtype=torch.float32)
        model.eval()
        tokenizer = loaded.tokenizer
        c = loaded.config
        constraints = ConstraintCache(tokenizer, c.vocab_size, c.eos_token_ids)
        self._state = (model, tokenizer, constraints)

    def backend(self) -> Backend:
        assert self._state is not None, "start() first"
        return TransformersBackend(*self._state, self._counts)

    def token_counts(self) -> TokenCounts:
        return TokenCounts(*self._counts)

    def close(self) -> None:
        self._state = None


class TransformersBackend(Backend):
    """A `Backend` over a plain HF model; one call at a time."""

    def __init__(self, model: Any, tokenizer: Any, constraints: Any, counts: list[int]) -> None:
        self.name = "transformers"
        self.capabilities = Capabilities(
            frozenset({"regex", "json", "choices"}), frozenset({"normalized"})
        )
        self.model, self.tokenizer, self.constraints = model, tokenizer, constraints
        self._lock = asyncio.Lock()
        self._counts = counts

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        async with self._lock:
            result = await asyncio.to_thread(self._generate, request)
        if on_chunk is not None and result.text:
            on_chunk(result.text)
        return result

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        if method != "normalized":
            raise BackendError(f"select method `{method}` is not measured on transformers")
        prefix, choice_ids = score_inputs(self.tokenizer, prompt, choices)
        logprobs = []
        for ids in choice_ids:  # one forward per choice, the prefix computed every time
            self._counts[0] += len(prefix) + len(ids)
            async with self._lock:
                logprobs.append(await asyncio.to_thread(self._choice_logprobs, prefix, ids))
        return normalized_scores(logprobs)

    def _choice_logprobs(self, prefix: list[int], ids: list[int]) -> list[float]:
        import torch

        with torch.inference_mode():
            logits = self.model(torch.tensor([prefix + ids])).logits[0, len(prefix) - 1 : -1]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            return logprobs[torch.arange(len(ids)), torch.tensor(ids)].tolist()

    def _generate(self, request: GenRequest) -> GenResult:
        import torch

        ids = prompt_ids(self.tokenizer, request.prompt)
        self._counts[0] += len(ids)
        eos = self.model.generation_config.eos_token_id
        eos_ids = [self.tokenizer.eos_token_id] if eos is None else list(_as_list(eos))
        options: dict[str, Any] = {"max_new_tokens": request.max_tokens, "do_sample": False}
        if request.temperature > 0:
            options.update(
                do_sample=True,
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=request.top_k or None,
            )
        if request.ignore_eos:
            options["min_new_tokens"] = request.max_tokens
        if request.stop:
            options.update(stop_strings=list(request.stop), tokenizer=self.tokenizer)
        if request.constraint is not None:
            options["logits_processor"] = [self._masker(request, len(ids))]
        if request.seed is not None:
            torch.manual_seed(request.seed)
        with torch.inference_mode():
            output = self.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                pad_token_id=eos_ids[0],
                **options,
            )
        new_ids = output[0, len(ids) :].tolist()
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, request.stop)
        if stopped:
            reason = "stop"
        elif new_ids and new_ids[-1] in eos_ids and not request.ignore_eos:
            reason = "eos"
        else:
            reason = "length"
        return GenResult(text, reason, len(ids), len(new_ids), 0)

    def _masker(self, request: GenRequest, prompt_len: int) -> Any:
        from sgl_lang.runtime.constrained import ConstraintSpec

        constraint = request.constraint
        if isinstance(constraint, Regex):
            spec = ConstraintSpec.regex(constraint.pattern)
        elif isinstance(constraint, JsonSchema):
            spec = ConstraintSpec.json(constraint.schema)
        elif isinstance(constraint, Choices):
            spec = ConstraintSpec.choices(constraint.options)
        else:
            raise BackendError(f"unknown constraint {constraint!r}")
        token_constraint = self.constraints.get(spec).start()

        def process(input_ids: Any, scores: Any) -> Any:
            output_ids = input_ids[0, prompt_len:].tolist()
            scores[0] = token_constraint.process_logits(scores[0], output_ids)
            return scores

        return process


def _as_list(value: int | Sequence[int]) -> Sequence[int]:
    return [value] if isinstance(value, int) else value
