"""Weight-only int8/int4 quantization: kernels against their dequantized weights, the dense path
against the quantized kernel, logits of the embedded model against fp32, the radix cache under
quantization, the packed-weight cache."""

from __future__ import annotations

import copy
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from conftest import greedy, run_all
from test_model_loader import run_prompt, save_tiny_model

from sgl_lang import cli
from sgl_lang.config import load_config
from sgl_lang.runtime import model_loader
from sgl_lang.runtime.config import EngineConfig
from sgl_lang.runtime.kernels import load_kernels
from sgl_lang.runtime.model_loader import LoadedModel, load_model
from sgl_lang.runtime.quantization import (
    Int4Weight,
    Int8Weight,
    QuantizedLinear,
    QuantizedWeight,
    QuantSpec,
    install,
    quantize_model,
    quantize_weight,
)

PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The largest planet is"
# relative L2 error of the embedded model's logits against fp32, measured 0.05 (int8) and
# 0.02 (int4: the GGUF's own Q4_1 blocks are groups of 32, so int4-g32 nearly restores them)
LOGIT_TOLERANCE = {"int8": 0.10, "int4": 0.05}


def quantized(loaded: LoadedModel, spec: QuantSpec) -> LoadedModel:
    model = copy.deepcopy(loaded.model)
    install(model, quantize_model(loaded.model, spec), spec.dense_rows)
    return loaded._replace(model=model)


@pytest.mark.parametrize(("kind", "max_weight_error"), [("int8", 0.01), ("int4", 0.1)])
def test_quantized_weights_multiply_as_their_dequantized_form(
    kind: str, max_weight_error: float
) -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 128, generator=gen) / 128**0.5
    x = torch.randn(5, 128, generator=gen)
    q: QuantizedWeight = (
        Int8Weight.quantize(weight) if kind == "int8" else Int4Weight.quantize(weight, 32)
    )
    dequantized = q.dequantize()
    assert (dequantized - weight).norm() / weight.norm() < max_weight_error
    expected = x.bfloat16().float() @ dequantized.t()
    assert torch.allclose(q.linear(x), expected, rtol=0.02, atol=0.02)
    assert q.linear(x).dtype == torch.float32


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_steps_of_many_rows_run_dense_and_agree_with_the_quantized_kernel(
    kernels: str, mode: str
) -> None:
    gen = torch.Generator().manual_seed(0)
    weight = quantize_weight(torch.randn(96, 128, generator=gen) / 128**0.5, mode, 32)
    weight.dense_rows = 8
    x, bias = torch.randn(20, 128, generator=gen), torch.randn(96, generator=gen)
    dense_rows_seen: list[int] = []
    prepared = load_kernels(kernels, "cpu", 64).prepare_linear(weight.dequantize())

    def dense(rows: torch.Tensor) -> torch.Tensor:
        dense_rows_seen.append(rows.shape[0])
        return prepared(rows)

    linear = QuantizedLinear(weight, bias, dense)
    assert torch.equal(linear(x[:7]), weight.linear(x[:7], bias)) and dense_rows_seen == []
    out = linear(x)
    assert dense_rows_seen == [20]
    reference = weight.linear(x, bias)  # rounded to bf16 (relative step 0.004) by the kernel
    assert (out - reference).norm() / reference.norm() < 0.005


def test_dense_rows_zero_keeps_no_dense_copy(tiny_model: LoadedModel) -> None:
    kernels = load_kernels("torch", "cpu", 64)
    never = quantized(tiny_model, QuantSpec("int8", dense_rows=0)).model.prepare(kernels)
    assert all(linear.dense is None for layer in never.layers for linear in layer)  # type: ignore[attr-defined]
    dense = quantized(tiny_model, QuantSpec("int8", dense_rows=8)).model.prepare(kernels)
    assert all(linear.dense is not None for layer in dense.layers for linear in layer)  # type: ignore[attr-defined]


def test_int4_groups_fall_back_to_a_divisor_of_the_row_length() -> None:
    weight = torch.randn(64, 96)
    assert Int4Weight.quantize(weight, 128).group_size == 32  # gcd(128, 96)
    assert Int4Weight.quantize(weight, 32).group_size == 32


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_logits_stay_close_to_fp32(real_model: LoadedModel, mode: str) -> None:
    ids = real_model.tokenizer(PROMPT)["input_ids"]
    reference = run_prompt(real_model, ids)
    weights = quantize_model(real_model.model, QuantSpec(mode))
    model = copy.deepcopy(real_model.model)
    for dense_rows in (0, 1):  # the quantized kernel, then the dense path, at every row count
        install(model, weights, dense_rows)
        logits = run_prompt(real_model._replace(model=model), ids)
        error = (logits - reference).norm(dim=-1) / reference.norm(dim=-1)
        assert error.max() < LOGIT_TOLERANCE[mode]
        assert logits[-1].argmax() == reference[-1].argmax()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_radix_cache_on_and_off_agree_under_quantization(
    make_engine, tiny_model: LoadedModel, mode: str
) -> None:
    loaded = quantized(tiny_model, QuantSpec(mode))
    prefix = "One shared preamble that several requests continue in their own way: "
    prompts = [prefix + tail for tail in ("apples", "pears and plums", "a third one")]
    with_cache = run_all(make_engine(model=loaded, enable_cache=True), prompts, greedy(8))
    without = run_all(make_engine(model=loaded, enable_cache=False), prompts, greedy(8))
    assert [c.meta.output_ids for c in with_cache] == [c.meta.output_ids for c in without]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_cached_prefix_from_a_dense_prefill_continues_as_without_the_cache(
    make_engine, tiny_model: LoadedModel, mode: str
) -> None:
    """With the cache, the second prompt's short tail runs on the quantized kernel over K/V a
    dense prefill wrote; without it, its whole prefill runs dense: the same greedy answer."""
    dense_rows = 8
    loaded = quantized(tiny_model, QuantSpec(mode, dense_rows=dense_rows))
    prefix = "A preamble long enough that its prefill runs on the dense copy of the weights: "
    prompts = [prefix + "apples", prefix + "pears"]
    token_counts = [len(tiny_model.tokenizer(text)["input_ids"]) for text in (prefix, "pears")]
    assert token_counts[0] >= dense_rows > token_counts[1] + 1  # the tail and its decode
    outputs = []
    for enable_cache in (True, False):
        engine = make_engine(model=loaded, enable_cache=enable_cache)
        outputs.append([run_all(engine, [p], greedy(8))[0].meta.output_ids for p in prompts])
    assert outputs[0] == outputs[1]


def test_packed_weights_are_cached_and_invalidated_when_the_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGL_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "tiny"
    save_tiny_model(folder)
    calls: list[QuantSpec] = []

    def counting(model, spec):  # type: ignore[no-untyped-def]
        calls.append(spec)
        return quantize_model(model, spec)

    monkeypatch.setattr(model_loader, "quantize_model", counting)
    spec = QuantSpec("int4")
    first = run_prompt(load_model(folder, quantize=spec), [5, 7, 9])
    path = model_loader.quantized_path(folder, spec)
    assert path.is_file() and len(calls) == 1
    cached = load_model(folder, quantize=spec)
    assert isinstance(cached.model.layers[0].qkv_weight, Int4Weight)
    assert torch.equal(run_prompt(cached, [5, 7, 9]), first) and len(calls) == 1
    save_tiny_model(folder, arch="mistral")  # new weights in the same folder
    assert model_loader.quantized_path(folder, spec) != path
    changed = run_prompt(load_model(folder, quantize=spec), [5, 7, 9])
    assert len(calls) == 2 and not torch.allclose(changed, first)


def test_quantize_reaches_the_engine_config_from_the_cli_and_sgl_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = tmp_path / "p.sgl"
    program.write_text('"hi"\n')
    toml = 'quantize = "int8"\nquantize_group_size = 64\nquantize_dense_rows = 0\n'
    (tmp_path / "sgl.toml").write_text(toml)
    from_toml = EngineConfig(**load_config(tmp_path / "sgl.toml").engine_options.engine_fields())
    assert (from_toml.quantize, from_toml.quantize_group_size) == ("int8", 64)
    assert from_toml.quantize_dense_rows == 0
    seen = []

    def capture(**flags):  # type: ignore[no-untyped-def]
        seen.append(real(**flags))
        raise click.exceptions.Exit(0)

    real = cli.run_options
    monkeypatch.setattr(cli, "run_options", capture)
    args = ["run", str(program), "--quantize", "int4", "--quantize-group-size", "128",
            "--quantize-dense-rows", "32"]  # fmt: skip
    assert CliRunner().invoke(cli.main, args).exit_code == 0
    engine = EngineConfig(**seen[0].run_config(program).engine_options.engine_fields())
    assert (engine.quantize, engine.quantize_group_size) == ("int4", 128)  # flags over the file
    assert engine.quantize_dense_rows == 32
    with pytest.raises(ValueError, match=r"EngineConfig\.quantize: expected one of"):
        EngineConfig(quantize="int3")
    with pytest.raises(ValueError, match=r"quantize_dense_rows must be an integer >= 0"):
        EngineConfig(quantize_dense_rows=-1)
