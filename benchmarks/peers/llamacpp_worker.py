"""Runs inside the llama.cpp peer's venv (`benchmarks/peers/setup.sh llamacpp`): one `Llama`
on the GGUF, driven by JSON lines on stdin, one answer line per request on stdout.

    {"op": "generate", "ids": [...], "max_tokens": N, "temperature": T, "top_p": P,
     "top_k": K, "stop": [...], "seed": S, "ignore_eos": B, "grammar": GBNF or null}
    {"op": "score", "prefix": [...], "choices": [[...], ...]}   -> token log-probs per choice
    {"op": "reset"}                                               -> forget the cached prompt

llama.cpp keeps the KV of the last evaluated tokens and re-evaluates only what differs from
them (its prompt cache within a context); `cached_tokens` reports that common prefix.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
from llama_cpp import Llama, LlamaGrammar


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Worker:
    """Two contexts on the model: `llm` for generation computes the logits of the last token
    only, as llama.cpp does by default; `scorer` (`logits_all`) those of every prompt token, which
    `score` needs and which would cost generation a 49k-wide lm_head per prompt token. Each
    keeps its own previous prompt's KV."""

    def __init__(self, model_path: str, n_ctx: int) -> None:
        self.llm, self.scorer = (
            _llama(model_path, n_ctx, logits_all) for logits_all in (False, True)
        )
        self.eos = self.llm.token_eos()

    def cached(self, ids: list[int], llm: Llama) -> int:
        return common_prefix_len(list(llm._input_ids[: llm.n_tokens]), ids)

    def generate(self, r: dict) -> dict:
        ids = r["ids"]
        cached = min(self.cached(ids, self.llm), len(ids) - 1)
        grammar = (
            LlamaGrammar.from_string(r["grammar"], verbose=False) if r.get("grammar") else None
        )
        out = self.llm.create_completion(
            prompt=ids,
            max_tokens=r["max_tokens"],
            temperature=r["temperature"],
            top_p=r["top_p"],
            top_k=r["top_k"] or 0,
            stop=r["stop"] or None,
            seed=r.get("seed"),
            grammar=grammar,
            logit_bias={self.eos: -math.inf} if r["ignore_eos"] else None,
        )
        choice, usage = out["choices"][0], out["usage"]
        return {
            "text": choice["text"],
            "finish_reason": choice["finish_reason"],
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "cached_tokens": cached,
        }

    def score(self, r: dict) -> dict:
        prefix, results, cached_total = r["prefix"], [], 0
        for choice in r["choices"]:
            ids = prefix + choice
            cached = min(self.cached(ids, self.scorer), len(ids) - 1)
            cached_total += cached
            self.scorer.n_tokens = cached  # eval() drops the KV after n_tokens and goes on
            self.scorer.eval(ids[cached:])
            logprobs = []
            for offset, token in enumerate(choice):
                row = self.scorer.scores[len(prefix) + offset - 1].astype(np.float64)
                top = row.max()
                logprobs.append(float(row[token] - top - np.log(np.exp(row - top).sum())))
            results.append(logprobs)
        return {
            "logprobs": results,
            "prompt_tokens": len(prefix) * len(r["choices"]) + sum(map(len, r["choices"])),
            "cached_tokens": cached_total,
        }

    def reset(self, r: dict) -> dict:
        self.llm.reset()
        self.scorer.reset()
        return {}


def _llama(model_path: str, n_ctx: int, logits_all: bool) -> Llama:
    return Llama(
        model_path=model_path,
        n_ctx=n_ctx,
        n_threads=2,
        n_threads_batch=2,
        n_batch=512,
        logits_all=logits_all,
        verbose=False,
    )


def main() -> None:
    worker = Worker(sys.argv[1], int(sys.argv[2]))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = getattr(worker, request["op"])(request)
        except Exception as exc:  # reported to the harness, which fails that call only
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
