"""Rows at which a quantized model's linear layers run faster on the dense dequantized copy than
on the quantized kernels (docs/quantization.md picks `quantize_dense_rows` from this table).

    .venv/bin/python benchmarks/bench_quant_rows.py [--threads 2] [--repeat 7] [--model PATH]

Each cell is the time of every linear layer of the model at that many rows (each layer's qkv,
o, gate-up and down, and the lm_head), best of `--repeat` taken in turns: the int8 and int4
kernels, and the dense path (`QuantizedLinear` above its threshold: the fp32
matmul) on each kernel set's prepared linear. The dense columns are the same for both layouts
(the same fp32 shapes), so they are measured once, on the int8 model.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from bench_engine import available_kernels, best_seconds

from sgl_lang.runtime.kernels import load_kernels
from sgl_lang.runtime.model_loader import LoadedModel, load_model
from sgl_lang.runtime.quantization import QuantizedLinear, QuantSpec

ROWS = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def linears(loaded: LoadedModel, kernels: str) -> list[QuantizedLinear]:
    """The model's linear layers prepared by `kernels` (each with its dense copy)."""
    prepared = loaded.model.prepare(load_kernels(kernels, "cpu", loaded.config.head_dim))
    layers = [linear for layer in prepared.layers for linear in layer]
    return [*layers, prepared.lm_head]  # type: ignore[list-item]


def calls(layers: list[QuantizedLinear], num_rows: int, dense: bool) -> Callable[[], None]:
    """One pass over all `layers` at `num_rows` rows, dense (dense_rows = 1) or quantized."""
    inputs = [torch.randn(num_rows, linear.weight.in_features) for linear in layers]

    def run() -> None:
        with torch.inference_mode():
            for linear, x in zip(layers, inputs, strict=True):
                linear(x) if dense else linear.weight.linear(x, linear.bias)

    return run


def interleaved_seconds(runs: list[Callable[[], None]], repeat: int) -> list[float]:
    """Best seconds of each of `runs`, taking turns (a shared machine's load hits all alike)."""
    for run in runs:
        run()
    best = [float("inf")] * len(runs)
    for _ in range(repeat):
        for i, run in enumerate(runs):
            best[i] = min(best[i], best_seconds(run, 1))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeat", type=int, default=7, help="best of this many (default 7)")
    parser.add_argument("--model", default=None, help="model path (default: embedded SmolLM2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    int8 = load_model(args.model, quantize=QuantSpec("int8", dense_rows=1))
    int4 = load_model(args.model, quantize=QuantSpec("int4", dense_rows=1))
    kernel_sets = available_kernels(int8.config.head_dim)
    by_kernels = {name: linears(int8, name) for name in kernel_sets}
    int4_layers = linears(int4, "torch")
    dense_heads = "".join(f"{'dense ' + name:>13}" for name in kernel_sets)
    print(f"ms of all linear layers, {args.threads} threads, best of {args.repeat}")
    print(f"{'rows':>5}{'int8':>9}{'int4':>9}{dense_heads}{'dense/int8':>12}{'dense/int4':>12}")
    for num_rows in ROWS:
        runs = [calls(by_kernels[kernel_sets[0]], num_rows, False),
                calls(int4_layers, num_rows, False),
                *(calls(by_kernels[name], num_rows, True) for name in kernel_sets)]  # fmt: skip
        int8_s, int4_s, *dense = interleaved_seconds(runs, args.repeat)
        cells = "".join(f"{1000 * s:>13.1f}" for s in dense)
        print(f"{num_rows:>5}{1000 * int8_s:>9.1f}{1000 * int4_s:>9.1f}{cells}"
              f"{min(dense) / int8_s:>12.2f}{min(dense) / int4_s:>12.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
