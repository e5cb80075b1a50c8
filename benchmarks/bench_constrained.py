"""Constrained decoding cost on this machine, in one run: masked vs free decoding of the same length.

    .venv/bin/python benchmarks/bench_constrained.py [--quick] [--threads 2] [--num-docs 4]
        [--engines llguidance,xgrammar]

Every part runs per grammar engine (llguidance; xgrammar when installed), on one loaded model.

Part 1, one row per constraint kind and engine (jump-forward on): a batch of chat prompts decoded greedily under the
constraint, then the same prompts decoded free for exactly as many tokens (`ignore_eos`). The
prompts are cached first, so both runs are decode steps. Columns: compile ms (first use, the
llguidance tokenizer excluded), mask ms/token (mask + apply, and advance), decode tok/s of both
runs, the overhead of the constrained run (wall time, noisy for short outputs) and the share of
the constrained run's time spent in masks (the robust number).

Part 2, the SGLang paper's json_decode workload (../shared/data/SOURCES.md): per document, five
regex-constrained fields generated one after another (a batch across documents), vs the same
program with free fields of the same lengths. Documents are cut to `--doc-chars` characters.
One row per engine with jump-forward on and off (same outputs, `forced` tokens skip a step),
then the free run. `mask share` is the constrained run's time in masks and advances.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from sgl_lang.runtime.config import GRAMMAR_ENGINES
from sgl_lang.runtime.constrained import ConstraintSpec
from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.model_loader import LoadedModel, load_model
from sgl_lang.runtime.request import Completion, OutputStream, Request
from sgl_lang.runtime.sampling import SamplingParams

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "json_decode" / "questions.jsonl"

KIND_CASES = {
    "regex int": (ConstraintSpec.regex(r"-?(0|[1-9][0-9]*)"), "How many legs has a spider?"),
    "regex date": (ConstraintSpec.regex(r"\d{4}-\d{2}-\d{2}"), "When did Apollo 11 land?"),
    "choices": (ConstraintSpec.choices(["yes", "no", "maybe"]), "Is the sky blue?"),
    "json schema": (
        ConstraintSpec.json(
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 24},
                    "age": {"type": "integer"},
                    "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}},
                    "role": {"enum": ["admin", "user"]},
                },
                "required": ["name", "age", "hobbies", "role"],
                "additionalProperties": False,
            }
        ),
        "Describe a person as JSON.",
    ),
}

# json_decode (sglang python/sglang/lang/ir.py regexes; the program of benchmark/json_decode_regex)
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_STR = r'"[\w\d\s]*"'
FIELDS = [
    ('{\n  "name": ', REGEX_STR + ",", 8),
    ('\n  "country": ', REGEX_STR + ",", 8),
    ('\n  "latitude": ', REGEX_FLOAT + ",", 8),
    ('\n  "population": ', REGEX_INT + ",", 8),
    ('\n  "top 3 landmarks": ', rf"\[({REGEX_STR}, )*{REGEX_STR}\]", 24),
]


def run(engine: Engine, prompts: Sequence, params: Sequence[SamplingParams]):
    """Submit all at once, wait for all; (completions, requests, wall seconds)."""
    started = time.perf_counter()
    streams = [OutputStream() for _ in prompts]
    reqs = [
        engine.submit(p, sp, stream=s) for p, sp, s in zip(prompts, params, streams, strict=True)
    ]
    completions = [_collect(s) for s in streams]
    return completions, reqs, time.perf_counter() - started


def _collect(stream: OutputStream) -> Completion:
    parts = []
    while (chunk := stream.get_sync()).meta is None:
        parts.append(chunk.text)
    return Completion("".join([*parts, chunk.text]), chunk.meta)


def mask_ms(reqs: Sequence[Request]) -> tuple[float, float]:
    """Mean ms per token over the requests: (mask + apply, advance)."""
    tcs = [r.constraint for r in reqs if r.constraint is not None]
    num = sum(tc.num_masks for tc in tcs) or 1
    mask = sum(tc.mask_seconds for tc in tcs) * 1000 / num
    return mask, sum(tc.advance_seconds for tc in tcs) * 1000 / num


def same_length_free(completions: Sequence[Completion]) -> list[SamplingParams]:
    return [
        SamplingParams(
            max_new_tokens=max(1, c.meta.completion_tokens), temperature=0, ignore_eos=True
        )
        for c in completions
    ]


def bench_kinds(engine: Engine, batch_size: int, max_new_tokens: int, repeat: int) -> None:
    for name, (spec, question) in KIND_CASES.items():
        prompts = [[{"role": "user", "content": f"{question} ({i})"}] for i in range(batch_size)]
        constrained = [
            SamplingParams(max_new_tokens=max_new_tokens, temperature=0, constraint=spec)
        ]
        compile_ms = _compile_ms(engine, spec)
        completions, _, _ = run(engine, prompts, constrained * batch_size)  # warm-up, caches
        free = same_length_free(completions)
        num_tokens = sum(c.meta.completion_tokens for c in completions)
        best_c, best_f, reqs = float("inf"), float("inf"), []
        for _ in range(repeat):
            best_f = min(best_f, run(engine, prompts, free)[2])
            _, reqs, seconds = run(engine, prompts, constrained * batch_size)
            best_c = min(best_c, seconds)
        mask, advance = mask_ms(reqs)
        share = (mask + advance) * num_tokens / 1000 / best_c
        print(f"| {engine.config.grammar_engine} | {name} | {compile_ms:.2f} | {mask:.3f} | {advance:.3f} | {num_tokens} | "
              f"{num_tokens / best_c:.1f} | {num_tokens / best_f:.1f} | "
              f"{(best_c / best_f - 1) * 100:+.1f}% | {share * 100:.1f}% |")  # fmt: skip


def _compile_ms(engine: Engine, spec: ConstraintSpec) -> float:
    return engine.constraints.get(spec).compile_seconds * 1000


def json_decode_program(engine: Engine, docs: Sequence[str], constrained: bool,
                        lengths: list[list[int]] | None):  # fmt: skip
    """Run the five fields for every document (batched); returns (texts, tokens, seconds, reqs,
    per-document field lengths)."""
    prompts = [
        "Please extract the information of a city from the following wikipedia page.\n"
        f"Page begin.\n{doc}Page end.\n"
        "Here is the name, country, and symbol of the city in JSON format.\n"
        for doc in docs
    ]
    all_reqs, num_tokens, seconds = [], 0, 0.0
    field_lengths: list[list[int]] = [[] for _ in docs]
    for f, (text, regex, max_tokens) in enumerate(FIELDS):
        prompts = [p + text for p in prompts]
        if constrained:
            spec = ConstraintSpec.regex(regex)
            params = [SamplingParams(max_new_tokens=max_tokens, temperature=0, constraint=spec)]
            params *= len(docs)
        else:
            assert lengths is not None
            params = [
                SamplingParams(max_new_tokens=lengths[d][f], temperature=0, ignore_eos=True)
                for d in range(len(docs))
            ]
        completions, reqs, took = run(engine, prompts, params)
        seconds += took
        all_reqs += reqs
        for d, c in enumerate(completions):
            field_lengths[d].append(max(1, c.meta.completion_tokens))
            num_tokens += c.meta.completion_tokens
        prompts = [p + c.text for p, c in zip(prompts, completions, strict=True)]
    return [p + "\n}\n" for p in prompts], num_tokens, seconds, all_reqs, field_lengths


def bench_json_decode(loaded: LoadedModel, engines: Sequence[str], num_docs: int,
                      doc_chars: int) -> None:  # fmt: skip
    lines = DATA.read_text().splitlines()[:num_docs]
    docs = [json.loads(line)["document"][:doc_chars] + "\n" for line in lines]
    print(f"\n## json_decode ({num_docs} documents cut to {doc_chars} chars, 5 fields each)\n")
    print("| run | jump-forward | tokens | forced | decode steps | seconds (incl. prefill) | "
          "tok/s | mask ms/token | mask share |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    outputs, lengths = {}, None
    for name in engines:
        for jump_forward in (True, False):
            engine = make_engine(loaded, name, jump_forward)
            json_decode_program(engine, docs, True, None)  # warm-up: compiles, first steps
            engine.flush_cache()
            before = engine.stats()
            texts, num, seconds, reqs, lengths = json_decode_program(engine, docs, True, None)
            after = engine.stats()
            engine.close()
            outputs[name, jump_forward] = texts
            mask, advance = mask_ms(reqs)
            num_masks = sum(r.constraint.num_masks for r in reqs if r.constraint is not None)
            share = (mask + advance) * num_masks / 1000 / seconds
            forced = after.num_forced_tokens - before.num_forced_tokens
            steps = after.num_decode_steps - before.num_decode_steps
            print(f"| {name} | {'on' if jump_forward else 'off'} | {num} | {forced} | {steps} | "
                  f"{seconds:.2f} | {num / seconds:.1f} | {mask:.3f} (+{advance:.3f}) | "
                  f"{share * 100:.1f}% |")  # fmt: skip
    engine = make_engine(loaded, engines[0], True)
    json_decode_program(engine, docs, False, lengths)  # warm-up
    engine.flush_cache()
    before = engine.stats()
    _, num_f, seconds_f, _, _ = json_decode_program(engine, docs, False, lengths)
    steps = engine.stats().num_decode_steps - before.num_decode_steps
    engine.close()
    print(f"| free, same lengths | - | {num_f} | - | {steps} | {seconds_f:.2f} | "
          f"{num_f / seconds_f:.1f} | - | - |")  # fmt: skip
    for name in engines:
        same = outputs[name, True] == outputs[name, False]
        print(f"\n{name}: jump-forward on and off give the same outputs: {same}")
    print(
        f"\nfirst document's output ({engines[0]}):\n```\n{outputs[engines[0], True][0][-400:]}```"
    )


def make_engine(loaded: LoadedModel, grammar_engine: str, jump_forward: bool) -> Engine:
    return Engine(model=loaded, kv_cache_tokens=16384, grammar_engine=grammar_engine,
                  jump_forward=jump_forward)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches, one repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="a HF folder or .gguf (default: SmolLM2)")
    parser.add_argument("--num-docs", type=int, default=4)
    parser.add_argument("--doc-chars", type=int, default=1500)
    parser.add_argument("--engines", default=",".join(GRAMMAR_ENGINES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engines = [e for e in args.engines.split(",") if e != "xgrammar" or _has_xgrammar()]
    loaded = load_model(args.model)
    batch_size, repeat = (2, 1) if args.quick else (8, 3)
    print(f"\n## Per constraint kind (batch {batch_size}, greedy, up to 48 tokens)\n")
    print("| engine | constraint | compile ms | mask ms/token | advance ms/token | tokens | "
          "constrained tok/s | free tok/s | overhead | mask share |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in engines:
        engine = make_engine(loaded, name, True)
        started = time.perf_counter()
        engine.constraints.get(ConstraintSpec.regex("a"))
        setup_ms = (time.perf_counter() - started) * 1000
        bench_kinds(engine, batch_size, 48, repeat)
        print(f"| {name} | (tokenizer + first compile: {setup_ms:.0f} ms) | | | | | | | | |")
        engine.close()
    bench_json_decode(loaded, engines, 2 if args.quick else args.num_docs, args.doc_chars)


def _has_xgrammar() -> bool:
    import importlib.util

    return importlib.util.find_spec("xgrammar") is not None


if __name__ == "__main__":
    main()
