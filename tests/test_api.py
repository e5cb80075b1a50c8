"""The Python API (`sgl_lang.load`): runs, batches, errors, permissions, backends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import sgl_lang
from sgl_lang.backends import get_backend
from sgl_lang.errors import SglError, SglNameError, SglPermissionError

QA = """\
param question
param tag = "q"
system "Be brief."
user question
assistant gen answer(max_tokens=8)
print(tag, len(answer) > 0)
"""


def write(tmp_path: Path, source: str, name: str = "prog.sgl") -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


def test_a_run_returns_variables_text_messages_and_printed(tmp_path: Path) -> None:
    qa = sgl_lang.load(write(tmp_path, QA), backend="test")
    assert qa.params == ["question", "tag"]
    result = qa.run(question="Why is the sky blue?")
    assert result.ok and result["question"] == "Why is the sky blue?"
    assert isinstance(result["answer"], str) and result["answer"]
    assert [m["role"] for m in result.messages] == ["system", "user", "assistant"]
    assert result.messages[1]["content"] == "Why is the sky blue?"
    assert result["answer"] in result.text and result.printed == "q true\n"


def test_arun_and_run_give_the_same_greedy_answer(tmp_path: Path) -> None:
    qa = sgl_lang.load(write(tmp_path, QA), backend="test")
    want = qa.run(question="a").variables
    assert asyncio.run(qa.arun(question="a")).variables == want


def test_run_inside_an_event_loop_says_to_await_arun(tmp_path: Path) -> None:
    qa = sgl_lang.load(write(tmp_path, QA), backend="test")

    async def main() -> None:
        with pytest.raises(RuntimeError, match="await arun"):
            qa.run(question="a")

    asyncio.run(main())


def test_a_batch_keeps_each_rows_error_and_runs_the_others(tmp_path: Path) -> None:
    source = "param n\nx = 10 / n\ngen y(max_tokens=2)\n"
    program = sgl_lang.load(write(tmp_path, source), backend="test")
    results = program.run_batch([{"n": 2}, {"n": 0}, {"n": 5}], parallel=2)
    assert [r.ok for r in results] == [True, False, True]
    assert [r.variables.get("x") for r in results] == [5.0, None, 2.0]
    assert isinstance(results[1].error, SglError) and "prog.sgl:2" in results[1].error.render()


def test_check_errors_and_unknown_params_are_raised_with_their_location(tmp_path: Path) -> None:
    with pytest.raises(SglError) as caught:
        sgl_lang.load(write(tmp_path, "x = 1\nprint(y)\n"), backend="test")
    assert "prog.sgl:2:7" in caught.value.render()
    qa = sgl_lang.load(write(tmp_path, QA, "qa.sgl"), backend="test")
    with pytest.raises(SglNameError, match="unknown param `questoin`"):
        qa.run(questoin="a")
    with pytest.raises(TypeError, match="unknown setting 'max_token'"):
        sgl_lang.load(tmp_path / "qa.sgl", max_token=3)


def test_permissions_are_the_keyword_arguments(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("s3cret")
    source = f'import files\nparam p = "{secret}"\ntext = files.read(p)\n'
    program_dir = tmp_path / "prog"
    program_dir.mkdir()
    path = write(program_dir, source)
    with pytest.raises(SglPermissionError, match="--allow-read"):
        sgl_lang.load(path, backend="test").run()
    with pytest.raises(SglPermissionError):
        sgl_lang.load(path, backend="test", allow_read=[program_dir]).run()
    assert sgl_lang.load(path, backend="test", allow_read=[secret.parent]).run()["text"] == "s3cret"


def test_a_backend_object_is_used_and_left_open(tmp_path: Path) -> None:
    backend = get_backend("test")
    qa = sgl_lang.load(write(tmp_path, QA), backend=backend)
    first = qa.run(question="a")
    assert qa.run(question="a").variables == first.variables  # still open after a run


def test_settings_reach_the_run(tmp_path: Path) -> None:
    program = sgl_lang.load(write(tmp_path, "gen x\n"), backend="test", max_tokens=3)
    assert 0 < len(program.run()["x"]) <= 3 * 16  # a token is at most a few characters
    looping = write(tmp_path, "i = 0\nwhile true:\n    i += 1\n", "loop.sgl")
    with pytest.raises(SglError, match="steps"):
        sgl_lang.load(looping, backend="test", max_steps=1000).run()


def test_runs_on_the_embedded_model_share_its_engine_across_event_loops(tmp_path: Path) -> None:
    qa = sgl_lang.load(write(tmp_path, QA), backend="local", max_tokens=4)
    first = qa.run(question="What is 2+2?")  # each run() is its own asyncio.run
    again = qa.run(question="What is 2+2?")
    assert first["answer"] and again["answer"] == first["answer"]  # greedy
    batch = qa.run_batch([{"question": "What is 2+2?"}, {"question": "Name a color."}])
    assert batch[0]["answer"] == first["answer"] and all(r.ok for r in batch)
