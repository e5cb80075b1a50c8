"""Where an engine step's time goes: our Engine on a mixed load, each step broken into parts.

    .venv/bin/python benchmarks/profile_engine.py [--quick] [--threads 2] [--workload mmlu]

Shapes (synthetic token ids, greedy, submitted at once, stepped in this thread):
  mmlu-like  4 few-shot prefixes of 420 tokens; N requests each = its subject's prefix + a
             60-token question, 4 new tokens each (the prefixes are shared via the radix tree)
  decode B   B requests with distinct 128-token prompts, each decoding 64 tokens (ignore_eos)
`--workload NAME` also runs that benchmark workload as `benchmarks/run.py` does (its .sgl
programs through the interpreter, the engine on its own thread) and says how that thread
spent the run: steps vs idle, and how much CPU the interpreter's thread took meanwhile.

Two passes per shape, on fresh engines. Timing: this script wraps the engine's calls
(schedule, run, postprocess, sample, radix tree, detokenizer, stream) and the ops of its kernel
set (`linear` labelled by weight, norms, rope, activation, attention and its plan, K/V writes) with
perf_counter; each part's *self* time per step is printed (the runtime code is not changed; the
wrappers are removed afterwards; they add ~1 us per call). Profile: torch.profiler over the same
shape attributes every top-level aten op to the part it ran in, which splits attention into the
KV gather (`index_select` of each request's K/V out of the pool) and the math (SDPA), and shows
how much of a step no aten op was running (Python, dispatch, profiler overhead).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.autograd.profiler import record_function

from sgl_lang.runtime.detokenizer import IncrementalDecoder
from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.model_loader import LoadedModel, load_model
from sgl_lang.runtime.request import Request
from sgl_lang.runtime.sampling import SamplingParams
from sgl_lang.runtime.scheduler import BatchKind

# part label -> the family it is reported under (the rows of the share table, in this order)
FAMILIES = {
    "linear.qkv": "matmul qkv/o/mlp",
    "linear.o": "matmul qkv/o/mlp",
    "linear.gate_up": "matmul qkv/o/mlp",
    "linear.down": "matmul qkv/o/mlp",
    "linear.lm_head": "lm_head (logits)",
    "attention": "attention (gather+SDPA)",
    "kv.write": "attention (gather+SDPA)",
    "plan": "attention (gather+SDPA)",
    "norm": "norms",
    "rope": "rope+elementwise+glue",
    "forward": "rope+elementwise+glue",
    "sample": "sampling",
    "schedule": "scheduler (Python)",
    "postprocess": "scheduler (Python)",
    "radix": "radix tree",
    "detok": "detokenize",
    "stream": "stream out",
    "run": "other",
    "step": "other",
}


@dataclass
class Step:
    kind: BatchKind | None  # None: the step found nothing to run
    seconds: float
    num_tokens: int
    batch_size: int
    parts: dict[str, float]  # label -> self seconds


@dataclass
class StepTimer:
    """Self time per label, nested; counts only inside `step` regions of one thread."""

    annotate: bool = False  # also open torch.profiler ranges ("sgl/<label>")
    steps: list[Step] = field(default_factory=list)
    _local: threading.local = field(default_factory=threading.local)

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack = getattr(self._local, "stack", None)
            if not stack:
                return fn(*args, **kwargs)  # outside a step (or another thread)
            return self._timed(stack, label, fn, args, kwargs)

        return timed

    def wrap_linear(self, fn: Callable[..., Any], names: dict[int, str]) -> Callable[..., Any]:
        wrapped = {name: self.wrap(f"linear.{name}", fn) for name in set(names.values())}

        def linear(x: torch.Tensor, weight: Any, *rest: Any) -> torch.Tensor:
            return wrapped[names[id(weight)]](x, weight, *rest)

        return linear

    def _timed(self, stack: list[float], label: str, fn: Callable, args: Any, kwargs: Any) -> Any:
        stack.append(0.0)  # the time of the regions nested in this one
        started = time.perf_counter()
        try:
            if self.annotate:
                with record_function(f"sgl/{label}"):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - started
            self._local.parts[label] += elapsed - stack.pop()
            if stack:
                stack[-1] += elapsed

    def step(self, engine: Engine, step_fn: Callable[[], bool]) -> Callable[[], bool]:
        """Wrap `Engine.step`: each step that ran a batch is recorded with its parts."""

        def timed_step() -> bool:
            self._local.stack, self._local.parts = [], defaultdict(float)
            self._local.batch = (0, 0)
            started = time.perf_counter()
            ran = self._timed(self._local.stack, "step", step_fn, (), {})
            seconds = time.perf_counter() - started
            self._local.stack = None
            kind = engine.scheduler.last_kind if ran else None
            num_tokens, batch_size = self._local.batch
            self.steps.append(Step(kind, seconds, num_tokens, batch_size, dict(self._local.parts)))
            return ran

        return timed_step

    def note_batch(self, num_tokens: int, batch_size: int) -> None:
        self._local.batch = (num_tokens, batch_size)


@contextlib.contextmanager
def instrumented(engine: Engine, timer: StepTimer) -> Iterator[None]:
    """Install the timing wrappers on `engine` and its kernel set (instance attributes) and on
    two runtime classes; remove them all on exit."""
    model, sched, kernels = engine.runner.model, engine.scheduler, engine.kv_pool.kernels
    prepared = engine.runner.prepared
    names = {id(prepared.lm_head): "lm_head"}
    for layer in prepared.layers:
        names |= {id(w): name for name, w in layer._asdict().items()}
    run = engine.runner.run

    def timed_run(batch: Any) -> torch.Tensor:
        timer.note_batch(batch.num_tokens, batch.batch_size)
        return run(batch)

    on_instances: list[tuple[Any, str, Callable]] = [
        (engine, "step", timer.step(engine, engine.step)),
        (sched, "schedule", timer.wrap("schedule", sched.schedule)),
        (engine.runner, "run", timer.wrap("run", timed_run)),
        (model, "forward", timer.wrap("forward", model.forward)),
        (kernels, "attention", timer.wrap("attention", kernels.attention)),
        (kernels, "plan_attention", timer.wrap("plan", kernels.plan_attention)),
        (kernels, "write_kv", timer.wrap("kv.write", kernels.write_kv)),
        (kernels, "linear", timer.wrap_linear(kernels.linear, names)),
        (kernels, "rms_norm", timer.wrap("norm", kernels.rms_norm)),
        (kernels, "add_rms_norm", timer.wrap("norm", kernels.add_rms_norm)),
        (kernels, "rotary", timer.wrap("rope", kernels.rotary)),
        (kernels, "silu_and_mul", timer.wrap("act", kernels.silu_and_mul)),
        (sched, "postprocess", timer.wrap("postprocess", sched.postprocess)),
        (sched.sampler, "sample", timer.wrap("sample", sched.sampler.sample)),
    ]
    cache = engine.prefix_cache
    for name in ("match_prefix", "insert", "lock", "unlock", "evict"):
        on_instances.append((cache, name, timer.wrap("radix", getattr(cache, name))))
    on_classes: list[tuple[Any, str, Callable]] = [
        (IncrementalDecoder, "push", timer.wrap("detok", IncrementalDecoder.push)),
        (IncrementalDecoder, "flush", timer.wrap("detok", IncrementalDecoder.flush)),
        (Request, "emit", timer.wrap("stream", Request.emit)),
        (Request, "emit_final", timer.wrap("stream", Request.emit_final)),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in on_classes]
    for obj, name, fn in on_instances:
        object.__setattr__(obj, name, fn)  # shadows the bound method (nn.Module too)
    for obj, name, fn in on_classes:
        setattr(obj, name, fn)
    try:
        yield
    finally:
        for obj, name, _ in on_instances:
            object.__delattr__(obj, name)
        for obj, name, fn in saved:
            setattr(obj, name, fn)


def compare_kernels(loaded: LoadedModel, shape: Shape, threads: int) -> None:
    """The shape uninstrumented on the torch kernels, then on vllm's: tok/s and greedy outputs."""
    results = []
    for kernels in ("torch", "vllm"):
        engine = new_engine(loaded, shape, threads, kernels=kernels)
        started = time.perf_counter()
        outs = engine.generate_many(shape.prompts, shape.params)
        seconds = time.perf_counter() - started
        stats = engine.stats()
        engine.close()
        results.append((seconds, stats, [c.meta.output_ids for c in outs]))
    (base_s, base, base_ids), (dnn_s, dnn, dnn_ids) = results
    same = sum(a == b for a, b in zip(base_ids, dnn_ids, strict=True))
    print(f"{shape.name:<22}{base_s:>9.2f}{dnn_s:>9.2f}{base_s / dnn_s:>8.2f}x"
          f"{base.prefill_tokens_per_s:>10.0f}{dnn.prefill_tokens_per_s:>8.0f}"
          f"{base.decode_tokens_per_s:>10.1f}{dnn.decode_tokens_per_s:>8.1f}"
          f"{same:>8}/{len(base_ids)}")  # fmt: skip


# -- shapes --------------------------------------------------------------------------------


def random_ids(num: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, 49000, (num,), generator=gen).tolist()


@dataclass(frozen=True)
class Shape:
    name: str
    prompts: list[list[int]]
    params: SamplingParams
    max_running: int = 64


def mmlu_like(num_per_group: int, num_new: int) -> Shape:
    prefixes = [random_ids(420, 1000 + g) for g in range(4)]
    prompts = [  # interleaved subjects, as the benchmark submits them
        prefixes[i % 4] + random_ids(60, 2000 + i) for i in range(4 * num_per_group)
    ]
    params = SamplingParams(max_new_tokens=num_new, temperature=0.0, ignore_eos=True)
    return Shape(f"mmlu-like ({len(prompts)} req)", prompts, params)


def decode_heavy(batch_size: int, num_new: int) -> Shape:
    prompts = [random_ids(128, 3000 + i) for i in range(batch_size)]
    params = SamplingParams(max_new_tokens=num_new, temperature=0.0, ignore_eos=True)
    return Shape(f"decode B={batch_size}", prompts, params, max_running=batch_size)


def new_engine(
    loaded: LoadedModel, shape: Shape, threads: int, threaded: bool = False, kernels: str = "auto"
) -> Engine:
    return Engine(model=loaded, threaded=threaded, kv_cache_tokens=32768, num_threads=threads,
                  max_running_requests=shape.max_running, kernels=kernels)  # fmt: skip


def time_shape(loaded: LoadedModel, shape: Shape, threads: int) -> tuple[StepTimer, float, float]:
    """(timer, wall seconds instrumented, wall seconds of the same run without wrappers)."""
    plain = new_engine(loaded, shape, threads)
    started = time.perf_counter()
    plain.generate_many(shape.prompts, shape.params)
    plain_seconds = time.perf_counter() - started
    plain.close()
    engine, timer = new_engine(loaded, shape, threads), StepTimer()
    with instrumented(engine, timer):
        started = time.perf_counter()
        engine.generate_many(shape.prompts, shape.params)
        seconds = time.perf_counter() - started
    engine.close()
    return timer, seconds, plain_seconds


# -- the profiler pass ---------------------------------------------------------------------


@dataclass
class OpProfile:
    """Per step kind: aten time per (part label, op family), and the steps' profiled wall."""

    ops: dict[BatchKind, Counter[tuple[str, str]]]
    num_ops: Counter[BatchKind]
    steps: list[Step]


def op_family(name: str) -> str:
    name = name.removeprefix("aten::")
    if name in ("mm", "addmm", "linear", "matmul"):
        return "mm"
    if "scaled_dot_product" in name:
        return "sdpa"
    if name in ("index_select", "index", "index_copy_", "embedding", "rms_norm"):
        return name
    return "other"


def profile_shape(loaded: LoadedModel, shape: Shape, threads: int) -> OpProfile:
    engine, timer = new_engine(loaded, shape, threads), StepTimer(annotate=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with instrumented(engine, timer), torch.profiler.profile(activities=activities) as prof:
        engine.generate_many(shape.prompts, shape.params)
    engine.close()
    kinds = iter(s.kind for s in timer.steps)
    ops: dict[BatchKind, Counter[tuple[str, str]]] = defaultdict(Counter)
    num_ops: Counter[BatchKind] = Counter()
    step_kind: dict[int, BatchKind] = {}
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        if event.name == "sgl/step" and (kind := next(kinds)) is not None:
            step_kind[id(event)] = kind
    for event in prof.events():
        parent = event.cpu_parent
        if not event.name.startswith("aten::") or (parent and parent.name.startswith("aten::")):
            continue  # only top-level aten ops: their time includes their children's
        label, step = "?", None
        while parent is not None:
            if label == "?" and parent.name.startswith("sgl/"):
                label = parent.name.removeprefix("sgl/")
            if parent.name == "sgl/step":
                step = parent
            parent = parent.cpu_parent
        if step is not None and id(step) in step_kind:
            kind = step_kind[id(step)]
            ops[kind][label, op_family(event.name)] += event.cpu_time_total / 1e6
            num_ops[kind] += 1
    return OpProfile(ops, num_ops, timer.steps)


# -- reports -------------------------------------------------------------------------------


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def report_steps(title: str, steps: list[Step], wall: float, plain_wall: float | None) -> None:
    steps = [s for s in steps if s.kind is not None]
    extra = f", uninstrumented {plain_wall:.2f} s" if plain_wall is not None else ""
    print(f"\n## {title}: {len(steps)} steps, {wall:.2f} s wall{extra} ({load()})")
    print(f"{'kind':<8}{'steps':>6}{'ms/step':>9}{'tok/step':>9}{'req/step':>9}{'tok/s':>8}"
          f"{'% of wall':>10}")  # fmt: skip
    kinds = [k for k in BatchKind if any(s.kind is k for s in steps)]
    by_kind = {k: [s for s in steps if s.kind is k] for k in kinds}
    for kind, mine in by_kind.items():
        seconds, tokens = sum(s.seconds for s in mine), sum(s.num_tokens for s in mine)
        print(f"{kind.value:<8}{len(mine):>6}{1e3 * seconds / len(mine):>9.1f}"
              f"{tokens / len(mine):>9.1f}{sum(s.batch_size for s in mine) / len(mine):>9.1f}"
              f"{tokens / seconds:>8.1f}{seconds / wall:>10.0%}")  # fmt: skip
    parts: dict[str, dict[BatchKind | None, float]] = defaultdict(lambda: defaultdict(float))
    for s in steps:
        for label, seconds in s.parts.items():
            parts[label][s.kind] += seconds
            parts[FAMILIES[label]][s.kind] += seconds
    header = "".join(f"{k.value + ' ms/step':>18}{'%':>6}" for k in kinds)
    for title_, names in (
        ("part (self time)", [n for n in FAMILIES if n in parts]),
        ("family", list(dict.fromkeys(FAMILIES.values()))),
    ):
        print(f"\n{title_:<26}{header}")
        for name in [*names, "(step wall)"]:
            cells = ""
            for kind, mine in by_kind.items():
                total = sum(s.seconds for s in mine)
                value = total if name == "(step wall)" else parts[name][kind]
                cells += f"{1e3 * value / len(mine):>18.2f}{value / total:>6.0%}"
            print(f"{name:<26}{cells}")


def report_ops(title: str, prof: OpProfile, timed: list[Step]) -> None:
    """The profile's per-op split; the attention split is also scaled onto the timing pass."""
    print(f"\n## {title}: torch.profiler, top-level aten ops by the part they ran in ({load()})")
    for kind, ops in prof.ops.items():
        steps = [s for s in prof.steps if s.kind is kind]
        per_step = 1e3 / len(steps)
        wall = sum(s.seconds for s in steps) * per_step
        aten = sum(ops.values()) * per_step
        gather = ops["attention", "index_select"] * per_step
        sdpa = ops["attention", "sdpa"] * per_step
        scatter = sum(v for (label, _), v in ops.items() if label == "kv.write") * per_step
        attn_other = sum(v for (lb, f), v in ops.items() if lb == "attention") * per_step - (
            gather + sdpa
        )
        matmul = sum(v for (lb, f), v in ops.items() if lb.startswith("linear.")) * per_step
        print(f"{kind.value}: {len(steps)} steps, {wall:.1f} ms/step profiled, "
              f"{prof.num_ops[kind] / len(steps):.0f} top-level aten ops/step, "
              f"aten ops busy {aten:.1f} ms ({aten / wall:.0%}); "
              f"no aten op running {wall - aten:.1f} ms ({1 - aten / wall:.0%})")  # fmt: skip
        for name, ms in (
            ("KV gather (index_select)", gather),
            ("attention math (SDPA)", sdpa),
            ("attention other (views)", attn_other),
            ("KV scatter (index_copy_)", scatter),
            ("weight matmuls + lm_head", matmul),
        ):
            print(f"  {name:<28}{ms:>8.2f} ms/step {ms / wall:>5.0%}")
        mine = [s for s in timed if s.kind is kind]
        step_ms = 1e3 * sum(s.seconds for s in mine) / len(mine)
        attn_ms = 1e3 * sum(s.parts.get("attention", 0.0) for s in mine) / len(mine)
        share = gather / (gather + sdpa + attn_other)
        print(f"  timing pass: attention {attn_ms:.1f} of {step_ms:.1f} ms/step; at the profile's"
              f" ratio KV gather {share * attn_ms:.1f} ms ({share * attn_ms / step_ms:.0%} of the"
              f" step), SDPA + views {(1 - share) * attn_ms:.1f} ms "
              f"({(1 - share) * attn_ms / step_ms:.0%})")  # fmt: skip


# -- a benchmark workload, threaded as in benchmarks/run.py ----------------------------------


def run_benchmark_workload(name: str, quick: bool, threads: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import run_workload, token_counter
    from suite import WORKLOADS
    from systems import make_system

    workload = WORKLOADS[name]
    items = workload.items("quick" if quick else "default", token_counter(["sgl"]))
    system = make_system("sgl")
    system.start()
    engine: Engine = system._shared.engine  # type: ignore[attr-defined]
    torch.set_num_threads(threads)
    asyncio.run(run_workload(system, workload, items))  # warm-up, fills nothing we keep
    system.reset()
    timer = StepTimer()
    with instrumented(engine, timer):
        cpu_started, started = time.thread_time(), time.perf_counter()
        result = asyncio.run(run_workload(system, workload, items))
        wall, main_cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    system.close()
    busy = sum(s.seconds for s in timer.steps)
    report_steps(f"workload {name} ({len(items)} programs, threaded engine)", timer.steps, wall,
                 None)  # fmt: skip
    print(f"\nengine thread: stepping {busy:.2f} s ({busy / wall:.0%} of wall), idle "
          f"{wall - busy:.2f} s ({1 - busy / wall:.0%}); interpreter thread CPU {main_cpu:.2f} s "
          f"({main_cpu / wall:.0%} of wall); {result.programs_per_s:.2f} programs/s, "
          f"hit rate {result.cache_hit_rate or 0:.0%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--model", default=None, help="model path (default: embedded SmolLM2)")
    parser.add_argument("--workload", default=None, help="also a benchmark workload, e.g. mmlu")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler pass")
    parser.add_argument("--no-shapes", action="store_true", help="only the --workload")
    parser.add_argument(
        "--compare-kernels",
        action="store_true",
        help="also run the shapes on the torch kernels and on vllm's, uninstrumented",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    new_tokens = 16 if args.quick else 64
    shapes = [mmlu_like(3 if args.quick else 8, 4), decode_heavy(8, new_tokens)]
    if not args.quick:
        shapes.append(decode_heavy(32, new_tokens))
    warm = decode_heavy(2, 2)
    with new_engine(loaded, warm, args.threads) as engine:
        engine.generate_many(warm.prompts, warm.params)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {load()}")
    for shape in [] if args.no_shapes else shapes:
        timer, wall, plain_wall = time_shape(loaded, shape, args.threads)
        report_steps(shape.name, timer.steps, wall, plain_wall)
        if not args.no_profile:
            report_ops(shape.name, profile_shape(loaded, shape, args.threads), timer.steps)
    if args.compare_kernels:
        print(f"\n## kernels: torch vs vllm, uninstrumented ({load()})")
        print(f"{'shape':<22}{'torch s':>9}{'vllm s':>9}{'speedup':>9}{'prefill tok/s':>18}"
              f"{'decode tok/s':>18}{'same greedy':>12}")  # fmt: skip
        for shape in shapes:
            compare_kernels(loaded, shape, args.threads)
    if args.workload:
        run_benchmark_workload(args.workload, args.quick, args.threads)


if __name__ == "__main__":
    main()
