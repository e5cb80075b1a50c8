"""Runtime throughput on this machine, in one run: our engine vs transformers vs a matmul ceiling.

    .venv/bin/python benchmarks/bench_engine.py [--quick] [--threads 2] [--model PATH]
        [--quantize none,int8,int4] [--group-size 32] [--only-quantize]

Rows: prefill tok/s at 128/512/2048 tokens (logits of the last token only), decode tok/s at
batch 1/8/32 (128-token prompts), and a shared-prefix workload (N requests = one long prefix +
N different suffixes) with the radix cache on vs off. The "ceiling" of a row is the time of the
model's weight matmuls alone at that many rows (F.linear over every layer's weights, measured
now), i.e. what a perfect runtime without attention, norms or Python overhead would reach.

The quantized section (`--quantize`, docs/quantization.md) runs our engine with each weight
layout on the same prompt ids as llama.cpp on the Q4_1 GGUF (its own venv, 2 threads; a column
"not set up" when `benchmarks/peers/setup.sh llamacpp` has not run): prefill 512 tokens, decode
at batch 1 and 32, and each row's ratio to llama.cpp's batch-1 decode and to our fp32.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sgl_lang.runtime.config import QUANT_MODES
from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.model_loader import LoadedModel, load_model
from sgl_lang.runtime.quantization import QuantSpec
from sgl_lang.runtime.sampling import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from systems.base import Unavailable
from systems.llamacpp import LlamaCpp


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


def llamacpp_rates(num_prompt: int, num_steps: int, repeat: int) -> tuple[float, float] | str:
    """llama.cpp's (prefill tok/s, batch-1 decode tok/s) on `random_ids(num_prompt, 10)`, the
    prompt `engine_decode` uses; decode = the extra time of `num_steps` more tokens. A string
    says why it did not run."""
    system = LlamaCpp()
    try:
        system.start()
    except Unavailable as exc:
        return str(exc)
    ids = random_ids(num_prompt, 10)

    def generate(max_tokens: int) -> None:
        system.call({"op": "reset"})
        system.call({"op": "generate", "ids": ids, "max_tokens": max_tokens, "temperature": 0.0,
                     "top_p": 1.0, "top_k": 0, "stop": [], "seed": 0, "ignore_eos": True})  # fmt: skip

    try:
        generate(4)  # warm-up
        prefill = best_seconds(lambda: generate(1), repeat)
        total = best_seconds(lambda: generate(num_steps + 1), repeat)
    finally:
        system.close()
    return num_prompt / prefill, num_steps / (total - prefill)


def quantized_section(args: argparse.Namespace, repeat: int) -> None:
    """Our prefill/decode per weight layout beside llama.cpp's Q4_1, same prompt ids."""
    num_steps = 16 if args.quick else 64
    rows = []
    for mode in args.quantize.split(","):
        loaded = load_model(args.model, quantize=QuantSpec(mode, args.group_size))
        rows.append((QuantSpec(mode, args.group_size).tag, engine_prefill(loaded, 512, repeat),
                     engine_decode(loaded, 1, num_steps),
                     engine_decode(loaded, 32, num_steps // 4)))  # fmt: skip
        print(f"  {rows[-1][0]}: prefill, decode b1, b32 tok/s {rows[-1][1:]}", flush=True)
        del loaded
    peer = llamacpp_rates(128, num_steps, repeat)
    base = next((row for row in rows if row[0] == "none"), None)
    print(f"\nbatch-1 decode vs llama.cpp Q4_1 ({args.threads} threads, 128-token prompt)")
    print(f"{'weights':<14}{'prefill512':>11}{'dec b1':>9}{'dec b32':>9}{'b1/llama':>10}"
          f"{'pre/fp32':>10}{'b32/fp32':>10}")  # fmt: skip
    for tag, prefill, decode1, decode32 in rows:
        vs_peer = f"{decode1 / peer[1]:.2f}x" if isinstance(peer, tuple) else "-"
        vs_pre = f"{prefill / base[1]:.2f}x" if base else "-"
        vs_b32 = f"{decode32 / base[3]:.2f}x" if base else "-"
        print(f"{tag:<14}{prefill:>11.1f}{decode1:>9.1f}{decode32:>9.1f}{vs_peer:>10}"
              f"{vs_pre:>10}{vs_b32:>10}")  # fmt: skip
    if isinstance(peer, tuple):
        print(f"{'llama.cpp Q4_1':<14}{peer[0]:>11.1f}{peer[1]:>9.1f}{'-':>9}{'1.00x':>10}")
    else:
        print(f"llama.cpp: not run ({peer})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--model", default=None, help="model path (default: embedded SmolLM2)")
    parser.add_argument("--quantize", default=",".join(QUANT_MODES),
                        help="weight layouts of the quantized section, comma-separated")  # fmt: skip
    parser.add_argument("--group-size", type=int, default=32, help="int4 group size")
    parser.add_argument("--only-quantize", action="store_true",
                        help="run only the quantized section")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeat = 1 if args.quick else 2
    if args.only_quantize:
        quantized_section(args, repeat)
        return
    loaded = load_model(args.model)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(loaded.model_dir, dtype=torch.float32).eval()
    rows: list[tuple[str, float, float | None, float | None]] = []
    for num_tokens in (128, 512) if args.quick else (128, 512, 2048):
        rows.append((f"prefill {num_tokens} tok", engine_prefill(loaded, num_tokens, repeat),
                     hf_prefill(hf, num_tokens, repeat),
                     matmul_ceiling(loaded, num_tokens, repeat)))  # fmt: skip
    num_steps = 8 if args.quick else 16
    for batch_size in (1, 8, 32):
        rows.append((f"decode batch {batch_size}", engine_decode(loaded, batch_size, num_steps),
                     hf_decode(hf, batch_size, num_steps),
                     matmul_ceiling(loaded, batch_size, 3)))  # fmt: skip
    print(f"\n{'tok/s':<20}{'ours':>10}{'HF':>10}{'ceiling':>10}{'ours/HF':>10}{'ours/ceil':>11}")
    for name, ours, ref, ceiling in rows:
        assert ref is not None and ceiling is not None
        print(f"{name:<20}{ours:>10.1f}{ref:>10.1f}{ceiling:>10.1f}{ours / ref:>10.2f}"
              f"{ours / ceiling:>11.0%}")  # fmt: skip

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
    quantized_section(args, repeat)


if __name__ == "__main__":
    main()
