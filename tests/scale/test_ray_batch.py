"""`sgl run --batch --ray` on a local Ray instance with 2 actors (one `ray.init` for the
module): rows sharing a prompt prefix run on one actor, each with its own engine, and OUT is
the plain batch's; an actor killed mid-batch fails only the rows it was running, which run
again on the other. Plus the grouping itself, without Ray."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sgl_lang.cli import main
from sgl_lang.config import RunOptions
from sgl_lang.grammar import parse_text
from sgl_lang.prefix import row_prefix
from sgl_lang.ray_batch import MIN_SHARED_CHARS, RayRows, assign, prefix_groups
from sgl_lang.runner import prepare_run

PROGRAM = """param shots
param question
"Answer like these examples.\\n{shots}\\n"
"Q: {question}\\nA:"
gen answer(max_tokens=1)
"""
SHOTS = {
    "capitals": "Q: Italy?\nA: Rome\nQ: Japan?\nA: Tokyo\nQ: Peru?\nA: Lima\n" * 2,
    "plurals": "Q: mouse?\nA: mice\nQ: goose?\nA: geese\nQ: foot?\nA: feet\n" * 2,
}


def batch_rows(num_rows: int) -> list[dict[str, Any]]:
    """Rows alternating between the two few-shot blocks."""
    topics = list(SHOTS)
    return [{"shots": SHOTS[topics[i % 2]], "question": f"word {i}?"} for i in range(num_rows)]


def write_batch(folder: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    program, batch = folder / "few_shot.sgl", folder / "rows.jsonl"
    program.write_text(PROGRAM)
    batch.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return program, batch


def test_rows_are_grouped_by_their_prefix_and_groups_kept_whole() -> None:
    program = parse_text(PROGRAM)
    texts = [row_prefix(program, row).prompt.plain_text() for row in batch_rows(6)]
    assert texts[0].startswith("Answer like these examples.\nQ: Italy?")
    assert prefix_groups(texts) == [[0, 2, 4], [1, 3, 5]]
    assert assign([[0, 2, 4], [1, 3, 5]], 2) == [[0, 2, 4], [1, 3, 5]]
    # one big group is cut into even shares; rows sharing only a short start are one group
    assert assign([[0, 1, 2, 3], [4]], 2) == [[0, 1, 2], [3, 4]]
    assert prefix_groups(["a" * MIN_SHARED_CHARS + "x", "a" * MIN_SHARED_CHARS + "y"], "a") == [
        [0, 1]
    ]
    assert prefix_groups(["ab", "ac", "b"]) == [[0, 1, 2]]


@pytest.fixture(scope="module")
def ray() -> Iterator[Any]:
    import ray

    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.model
def test_rows_sharing_a_prefix_run_on_one_actor(
    ray: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[RayRows] = []
    make = RayRows.__init__

    def record(self: RayRows, *args: Any, **kwargs: Any) -> None:
        make(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(RayRows, "__init__", record)
    program, batch = write_batch(tmp_path, batch_rows(8))
    out = tmp_path / "out.jsonl"
    args = ["run", str(program), "--batch", str(batch), "--out", str(out), "--ray"]
    args += ["--ray-actors", "2", "--parallel", "2", "--threads", "1", "--kv-cache-gb", "0.05"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "8 of 8 rows ok" in result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(8))
    assert all(line["error"] is None and line["output"]["answer"] for line in lines)
    [on_ray] = made
    ran = sorted(sorted(stats["positions"]) for stats in on_ray.actor_stats)
    assert ran == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert len({stats["pid"] for stats in on_ray.actor_stats}) == 2


def test_a_killed_actor_fails_only_its_running_rows(ray: Any, tmp_path: Path) -> None:
    rows = batch_rows(16)
    program, _ = write_batch(tmp_path, rows)
    options = RunOptions(backend_uri="test")
    on_ray = RayRows(program, options, num_actors=2)
    results: dict[int, dict[str, Any]] = {}
    parallel = 2

    def on_result(position: int, result: dict[str, Any]) -> None:
        if not results:
            ray.kill(on_ray.actors[0])
        results[position] = result

    async def run() -> None:
        prepared = await prepare_run(program, options)
        await on_ray(prepared, rows, parallel, on_result)

    asyncio.run(run())
    assert sorted(results) == list(range(16))
    assert all(result["error"] is None for result in results.values())
    assert 1 <= on_ray.num_retried <= 2 * parallel  # not the killed actor's 8 rows
    [survivor] = on_ray.actor_stats
    assert len(survivor["positions"]) > 8  # its own rows and those the dead actor left
