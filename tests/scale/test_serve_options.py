"""`sgl serve` takes the engine options of `sgl run`: from sgl.toml (the working folder's, or
`--config`) under the flags; `--replicas` hands the same options to every worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sgl_lang import replicas
from sgl_lang.bridge.options import EngineOptions
from sgl_lang.cli import main
from sgl_lang.config import RunConfig, load_config
from sgl_lang.server import app


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What `sgl serve` would have served with, instead of serving."""
    calls: list[dict[str, Any]] = []

    def serve(model_path: Path | None, host: str, port: int, **options: Any) -> None:
        calls.append({"model_path": model_path, **options})

    monkeypatch.setattr(app, "serve", serve)
    return calls


def test_serve_reads_sgl_toml_under_its_flags(
    served: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sgl.toml").write_text('threads = 1\npolicy = "fcfs"\nkv_cache_gb = 0.25\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["serve", "--policy", "lpm", "--no-cache"])
    assert result.exit_code == 0, result.output
    options = served[0]["engine_options"]
    assert options == EngineOptions(
        kv_cache_gb=0.25, policy="lpm", enable_cache=False, num_threads=1
    )


def test_serve_points_at_a_bad_config_line(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text("threads = 1\nthreds = 2\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 1
    assert f"{config}:2:1" in result.output and "did you mean `threads`?" in result.output


def test_replica_workers_get_the_same_engine_options(tmp_path: Path) -> None:
    config = RunConfig(threads=1, cache=False, max_running_requests=4, model=tmp_path)
    written = replicas.engine_config_file(config, tmp_path)
    assert load_config(written).engine_options == config.engine_options
    assert load_config(written).model == tmp_path
    plan = replicas.ReplicaPlan(2, "0.0.0.0", 40000, "round_robin", ("--config", str(written)))
    assert plan.worker_command(40002)[-6:] == [
        *("--host", "127.0.0.1", "--port", "40002", "--config", str(written))
    ]
    router = plan.router_command(9999)
    assert router[router.index("--worker-urls") + 1 :] == [
        "http://127.0.0.1:40001",
        "http://127.0.0.1:40002",
    ]
    assert router[router.index("--policy") + 1] == "round_robin"
    assert plan.router_url == "http://127.0.0.1:40000"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--replicas", "2", "--api-key", "k"], "--api-key does not go with --replicas"),
        (["run", "prog.sgl", "--ray"], "--ray and --ray-actors go with --batch"),
    ],
)
def test_scale_flags_that_do_not_go_together(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prog.sgl").write_text('"hi"\n')
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output
