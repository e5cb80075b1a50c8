"""Language tests written as `.sgl` programs, run on the test backend, with expected output next to them.

`tests/programs/NAME.sgl` runs with `sgl run --backend test`; `NAME.out` holds its exact stdout and
`NAME.err`, when present, its exact stderr (the program must then fail with exit code 1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sgl_lang.cli import main

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = sorted((ROOT / "tests" / "programs").glob("*.sgl"))


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.stem)
def test_program(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    relative = path.relative_to(ROOT)
    result = CliRunner().invoke(main, ["run", str(relative), "--backend", "test"])
    expected_err = path.with_suffix(".err")
    expected_out = path.with_suffix(".out")
    assert expected_err.exists() or expected_out.exists(), f"{path.name} has no expectations"
    if expected_err.exists():
        assert result.stderr == expected_err.read_text(encoding="utf-8")
        assert result.exit_code == 1
    else:
        assert result.stderr == ""
        assert result.exit_code == 0
    expected = expected_out.read_text(encoding="utf-8") if expected_out.exists() else ""
    assert result.stdout == expected
