"""Runtime options: `sgl.toml`, the CLI's flags, validation with located errors, and what the
`local` backend is built with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sgl_lang import cli
from sgl_lang.backends.local import LocalBackend
from sgl_lang.bridge.options import KV_CACHE_GB, EngineOptions
from sgl_lang.config import RunConfig, find_config, load_config, resolve_config
from sgl_lang.errors import SglValueError
from sgl_lang.runner import make_backend
from sgl_lang.runtime.config import POLICIES, EngineConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def user_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "user-config"
    monkeypatch.setattr("sgl_lang.config.platformdirs.user_config_dir", lambda _: str(folder))
    return folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_full_config_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "models" / "m").mkdir(parents=True)
    path = write(
        tmp_path / "sgl.toml",
        'model = "models/m"\nkv_cache_gb = 0.5\npolicy = "fcfs"\ncache = false\n'
        "max_running_requests = 4\nmax_tokens = 16\nthreads = 2\n",
    )
    config = load_config(path)
    assert config == RunConfig(tmp_path / "models" / "m", 0.5, "fcfs", False, 4, 16, 2)
    options = config.engine_options
    assert options == EngineOptions(0.5, "fcfs", False, 4, 2)
    engine = EngineConfig(**options.engine_fields())
    assert (engine.kv_cache_gb, engine.policy, engine.enable_cache) == (0.5, "fcfs", False)
    assert (engine.max_running_requests, engine.num_threads) == (4, 2)
    assert EngineOptions().engine_fields() == {"kv_cache_gb": KV_CACHE_GB, "enable_cache": True}


def test_kernels_reach_the_engine_config(tmp_path: Path) -> None:
    options = load_config(write(tmp_path / "sgl.toml", 'kernels = "torch"\n')).engine_options
    assert EngineConfig(**options.engine_fields()).kernels == "torch"
    assert EngineConfig().kernels == "auto"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('kv_cache_gb = 1\npolicy = "lifo"\n', 2, "`policy` must be one of lpm, dfs-weight, fcfs"),
        ("threads = 0\n", 1, "`threads` must be a positive integer, got 0"),
        ('kernels = "cuda"\n', 1, "`kernels` must be one of auto, torch, vllm, got 'cuda'"),
        ("max_tokens = true\n", 1, "`max_tokens` must be a positive integer, got True"),
        ('cache = "yes"\n', 1, "`cache` must be true or false"),
        ("kv_cache_gb = -1\n", 1, "`kv_cache_gb` must be a number > 0"),
        ('\nmodel = "no/such/dir"\n', 2, "`model`: no such file or folder"),
        ("model = 3\n", 1, "`model` must be a path string"),
        ("# a comment\nmax_tokns = 3\n", 2, "unknown config key `max_tokns`"),
        ("max_tokens = = 3\n", 1, "invalid TOML"),
    ],
)
def test_bad_values_are_located_value_errors(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path / "sgl.toml", text)
    with pytest.raises(SglValueError) as caught:
        load_config(path)
    error = caught.value
    assert error.span is not None and error.span.line == line
    assert message in error.message
    rendered = error.render()
    assert rendered.startswith(f"{path}:{line}:") and "^" in rendered
    if "max_tokns" in text:
        assert error.hint == "did you mean `max_tokens`?"


def test_the_config_next_to_the_program_wins_over_the_user_one(
    tmp_path: Path, user_config_dir: Path
) -> None:
    program = write(tmp_path / "app" / "p.sgl", '"hi"\n')
    assert find_config(program) is None
    user = write(user_config_dir / "sgl.toml", "max_tokens = 7\n")
    assert find_config(program) == user
    local = write(tmp_path / "app" / "sgl.toml", "max_tokens = 9\n")
    assert find_config(program) == local
    assert resolve_config(program, None, {"max_tokens": None}).max_tokens == 9
    assert resolve_config(program, None, {"max_tokens": 3, "cache": False}) == RunConfig(
        max_tokens=3, cache=False
    )
    assert resolve_config(program, user, {}).max_tokens == 7


def test_local_backends_share_an_engine_only_with_equal_options(tmp_path: Path) -> None:
    config = RunConfig(kv_cache_gb=0.25, cache=False)
    backend = make_backend("local", config)
    assert isinstance(backend, LocalBackend)
    assert backend.options == EngineOptions(0.25, None, False, None, None)
    assert backend.model_path is None and backend.name == "local"
    with_model = make_backend("local", RunConfig(model=tmp_path))
    assert isinstance(with_model, LocalBackend) and with_model.model_path == tmp_path
    named = make_backend(f"local:{ROOT}", RunConfig(model=tmp_path))  # the URI's path wins
    assert isinstance(named, LocalBackend) and named.model_path == ROOT
    assert make_backend("test", config).name == "test"


def test_the_cli_policies_are_the_runtime_policies() -> None:
    assert cli.RUN_POLICIES == POLICIES


def sgl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sgl_lang.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def test_sgl_run_reports_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    program = write(tmp_path / "p.sgl", 'gen x(max_tokens=2)\nprint("ok")\n')
    config = write(tmp_path / "sgl.toml", "max_tokens = 2\nthreads = 0\n")
    result = sgl("run", str(program), "--backend", "test")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{config}:2:1: value error: `threads` must be")
    config.write_text("max_tokens = 2\n")
    assert sgl("run", str(program), "--backend", "test").stdout == "ok\n"
    usage = sgl("run", str(program), "--backend", "test", "--policy", "lifo")
    assert usage.returncode == 2 and "lifo" in usage.stderr


def test_trace_json_and_streaming_modes_on_the_test_backend(tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    result = sgl("run", "examples/tips.sgl", "--backend", "test", "--trace-json", str(trace))
    assert result.returncode == 0 and result.stderr == ""  # piped: no streaming by default
    report = json.loads(trace.read_text())
    kinds = [call["kind"] for call in report["calls"]]
    assert kinds == ["prefix", "gen", "gen", "gen"]  # the fork's hint, 2 branches, summary
    assert report["calls"][3]["name"] == "summary"
    assert report["calls"][3]["where"] == "examples/tips.sgl:10:1"
    assert report["totals"]["num_calls"] == 3 and report["totals"]["engine"] is None
    summary = report["calls"][3]["output"]
    streamed = sgl("run", "examples/tips.sgl", "--backend", "test", "--stream")
    assert streamed.stderr == summary + "\n"  # only the main state streams
    at_end = sgl("run", "examples/tips.sgl", "--backend", "test", "--no-stream")
    assert at_end.stderr == summary + "\n"
