"""Runtime throughput on this machine, in one run: our engine on each kernel set vs transformers
vs vLLM-CPU vs a matmul ceiling.

    .venv/bin/python benchmarks/bench_engine.py [--quick] [--threads 2] [--model PATH] [--no-vllm]
        [--quantize none,int8,int4] [--group-size 32] [--only-quantize]

Rows: prefill tok/s at 128/512/2048 tokens (logits of the last token only), decode tok/s at
batch 1/8/32 (128-token prompts), and a shared-prefix workload (N requests = one long prefix +
N different suffixes) with the radix cache on vs off; then the same prefill/decode rows as bare
forwards over a pool of 32-token pages with hand-laid-out contexts (the attention the kernels
do through block tables, whatever the engine's slot allocator). Columns: our engine with
`--kernels torch` and `--kernels vllm` (when vLLM's ops import here) side by side. The "ceiling"
of a row is the time of the model's weight matmuls alone at that many rows (the fastest of
F.linear and each kernel set's prepared linear over every layer's weights, measured now), i.e.
what a perfect runtime without attention, norms or Python overhead would reach.
The vLLM column is vLLM's offline engine (`vllm.LLM`, when installed) on the same token ids,
with the settings of the `vllm` backend (`sgl_lang/bridge/vllm_engine.py`: fp32, eager, prefix
caching on, its OpenMP threads pinned to `--threads` CPUs), its prefix cache emptied before each
measurement; its decode tok/s is timed by its engine core, from the batch's first token to its
last.

The quantized section (`--quantize`, docs/quantization.md) runs our engine (kernels: auto) with
each weight layout on the same prompt ids as llama.cpp on the Q4_1 GGUF (its own venv, 2
threads; a column "not set up" when `benchmarks/peers/setup.sh llamacpp` has not run): prefill
512 tokens, decode at batch 1 and 32, and each row's ratio to llama.cpp's batch-1 decode and to
our fp32.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sgl_lang.bridge.vllm_engine import ENGINE_SETTINGS, configure, kv_cache_bytes
from sgl_lang.protocol import BackendError
from sgl_lang.runtime.config import QUANT_MODES
from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.kernels import KernelsUnavailableError, load_kernels
from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.model_loader import LoadedModel, load_model
from sgl_lang.runtime.model_runner import ForwardBatch, ModelRunner
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


def available_kernels(head_dim: int) -> list[str]:
    """The kernel sets that run here: torch, and vllm when its ops import."""
    try:
        load_kernels("vllm", "cpu", head_dim)
    except KernelsUnavailableError:
        return ["torch"]
    return ["torch", "vllm"]


def matmul_ceiling(loaded: LoadedModel, num_rows: int, repeat: int) -> float:
    """Tokens/s of the weight matmuls alone for `num_rows` tokens (lm_head for one row), the
    fastest of `F.linear(x, W)` and each kernel set's prepared linear."""
    model = loaded.model
    x = torch.randn(num_rows, loaded.config.hidden_size)
    mlp_in = torch.randn(num_rows, loaded.config.intermediate_size)
    attn_in = torch.randn(num_rows, loaded.config.num_heads * loaded.config.head_dim)
    weights = [(x, layer.qkv_weight) for layer in model.layers]
    weights += [(attn_in, layer.o_weight) for layer in model.layers]
    weights += [(x, layer.gate_up_weight) for layer in model.layers]
    weights += [(mlp_in, layer.down_weight) for layer in model.layers]
    weights.append((x[-1:], model.lm_head))
    candidates = [[lambda a=a, w=w: F.linear(a, w) for a, w in weights]]
    for name in available_kernels(loaded.config.head_dim):
        kernels = load_kernels(name, "cpu", loaded.config.head_dim)
        prepared = [(a, kernels.prepare_linear(w)) for a, w in weights]
        candidates.append([lambda a=a, p=p: p(a) for a, p in prepared])

    def run(calls: list[Callable[[], torch.Tensor]]) -> None:
        with torch.inference_mode():
            for call in calls:
                call()

    seconds = []
    for calls in candidates:
        run(calls)
        seconds.append(best_seconds(lambda calls=calls: run(calls), repeat))
    return num_rows / min(seconds)


def engine_prefill(loaded: LoadedModel, kernels: str, num_tokens: int, repeat: int) -> float:
    engine = Engine(model=loaded, threaded=False, enable_cache=False, kv_cache_tokens=4096,
                    prefill_chunk_tokens=4096, kernels=kernels)  # fmt: skip
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


def engine_decode(loaded: LoadedModel, kernels: str, batch_size: int, num_steps: int) -> float:
    engine = Engine(model=loaded, threaded=False, enable_cache=False, kv_cache_tokens=8192,
                    max_running_requests=batch_size, prefill_chunk_tokens=128 * batch_size,
                    kernels=kernels)  # fmt: skip
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


PAGE_SIZE = 32


def versus(tok_s: list[float]) -> str:
    """The last kernel set's rate over torch's (the first), when there are two."""
    return f"{tok_s[-1] / tok_s[0]:>12.2f}" if len(tok_s) > 1 else f"{'':>12}"


def paged_runner(loaded: LoadedModel, kernels: str, num_slots: int) -> ModelRunner:
    c = loaded.config
    pool = KVPool(c.num_layers, num_slots, c.num_kv_heads, c.head_dim, page_size=PAGE_SIZE,
                  kernels=load_kernels(kernels, "cpu", c.head_dim))  # fmt: skip
    return ModelRunner(loaded.model, pool)


def forward_prefill(loaded: LoadedModel, kernels: str, num_tokens: int, repeat: int) -> float:
    """Tokens/s of one prefill forward (last-token logits) into pages 1, 2, ..."""
    runner = paged_runner(loaded, kernels, PAGE_SIZE + num_tokens)
    slots = torch.arange(PAGE_SIZE, PAGE_SIZE + num_tokens)
    batch = ForwardBatch(torch.tensor(random_ids(num_tokens, 1)), torch.arange(num_tokens), slots,
                         [slots], [num_tokens], torch.tensor([num_tokens - 1]))  # fmt: skip
    runner.run(batch)
    return num_tokens / best_seconds(lambda: runner.run(batch), repeat)


def forward_decode(loaded: LoadedModel, kernels: str, batch_size: int, num_steps: int) -> float:
    """Tokens/s of decode forwards for `batch_size` 128-token contexts, each in its own pages."""
    prompt_len = 128
    region = -(-(prompt_len + num_steps) // PAGE_SIZE) * PAGE_SIZE  # slots of one request
    runner = paged_runner(loaded, kernels, PAGE_SIZE + batch_size * region)
    bases = [PAGE_SIZE + r * region for r in range(batch_size)]
    prompts = [torch.arange(b, b + prompt_len) for b in bases]
    ids = torch.tensor([i for r in range(batch_size) for i in random_ids(prompt_len, 10 + r)])
    runner.run(ForwardBatch(ids, torch.arange(prompt_len).repeat(batch_size), torch.cat(prompts),
                            prompts, [prompt_len] * batch_size,
                            torch.arange(batch_size) * prompt_len))  # fmt: skip
    started = time.perf_counter()
    for step in range(num_steps):
        seq_slots = [torch.arange(b, b + prompt_len + step + 1) for b in bases]
        runner.run(ForwardBatch(torch.full((batch_size,), 1000), torch.full((batch_size,),
                                prompt_len + step), torch.stack([s[-1] for s in seq_slots]),
                                seq_slots, [1] * batch_size, torch.arange(batch_size)))  # fmt: skip
    return batch_size * num_steps / (time.perf_counter() - started)


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
    except BackendError as exc:  # the worker died: the column says so, the section goes on
        return str(exc)
    finally:
        system.close()
    return num_prompt / prefill, num_steps / (total - prefill)


def quantized_section(args: argparse.Namespace, repeat: int) -> None:
    """Our prefill/decode per weight layout beside llama.cpp's Q4_1, same prompt ids."""
    num_steps = 16 if args.quick else 64
    rows = []
    for mode in args.quantize.split(","):
        loaded = load_model(args.model, quantize=QuantSpec(mode, args.group_size))
        rows.append((QuantSpec(mode, args.group_size).tag,
                     engine_prefill(loaded, "auto", 512, repeat),
                     engine_decode(loaded, "auto", 1, num_steps),
                     engine_decode(loaded, "auto", 32, num_steps // 4)))  # fmt: skip
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
    parser.add_argument("--no-vllm", action="store_true", help="leave out the vLLM column")
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
    kernel_sets = available_kernels(loaded.config.head_dim)
    num_steps = 8 if args.quick else 16
    prefill_lens = (128, 512) if args.quick else (128, 512, 2048)
    shapes = [("prefill", n, f"prefill {n} tok") for n in prefill_lens]
    shapes += [("decode", b, f"decode batch {b}") for b in (1, 8, 32)]
    with_vllm = not args.no_vllm and importlib.util.find_spec("vllm") is not None
    vllm = (vllm_column(loaded.model_dir, args.threads, prefill_lens, num_steps, repeat)
            if with_vllm else [float("nan")] * len(shapes))  # fmt: skip
    best = kernel_sets[-1]
    ratio = f"{best}/torch" if best != "torch" else ""
    header = f"{'tok/s':<20}" + "".join(f"{k:>10}" for k in kernel_sets) + f"{ratio:>12}"
    print(f"\nour engine\n{header}{'HF':>10}{'vLLM':>10}{'ceiling':>10}{best + '/HF':>12}"
          f"{best + '/vLLM':>12}{best + '/ceil':>12}")  # fmt: skip
    for (kind, size, name), theirs in zip(shapes, vllm, strict=True):
        if kind == "prefill":
            ours = [engine_prefill(loaded, k, size, repeat) for k in kernel_sets]
            ref, ceiling = hf_prefill(hf, size, repeat), matmul_ceiling(loaded, size, repeat)
        else:
            ours = [engine_decode(loaded, k, size, num_steps) for k in kernel_sets]
            ref, ceiling = hf_decode(hf, size, num_steps), matmul_ceiling(loaded, size, 3)
        print(f"{name:<20}" + "".join(f"{t:>10.1f}" for t in ours) + versus(ours)
              + f"{ref:>10.1f}{theirs:>10.1f}{ceiling:>10.1f}{ours[-1] / ref:>12.2f}"
              f"{ours[-1] / theirs:>12.2f}{ours[-1] / ceiling:>12.0%}")  # fmt: skip
    if with_vllm:
        bind = os.environ["VLLM_CPU_OMP_THREADS_BIND"]
        print(f"vLLM-CPU: offline engine, VLLM_CPU_OMP_THREADS_BIND={bind}, prefix caching on, "
              "fp32, eager")  # fmt: skip
    print(f"\nbare forwards over {PAGE_SIZE}-token pages\n{header}")
    for kind, size, name in shapes:
        forward = [forward_prefill(loaded, k, size, repeat) if kind == "prefill"
                   else forward_decode(loaded, k, size, num_steps) for k in kernel_sets]  # fmt: skip
        print(f"{name:<20}" + "".join(f"{t:>10.1f}" for t in forward) + versus(forward))

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
