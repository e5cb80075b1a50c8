"""The layers of docs/architecture.md hold (import-linter), and a wrong import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """import-linter with the repository's contracts, on the package in `tree`."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the package as installed (runtime/ and stdlib/ inside it)."""
    shutil.copytree(
        ROOT / "sgl_lang", tmp_path / "sgl_lang", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def test_the_contracts_hold(package_copy: Path) -> None:
    result = lint_imports(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("runtime/kv_pool.py", "import sgl_lang.protocol", "runtime/ imports only itself"),
        ("interpreter.py", "import torch", "the language never imports torch, the runtime"),
        (
            "backends/openai.py",
            "import sgl_lang.runtime.engine",
            "API backends never touch the runtime",
        ),
        ("protocol/prompts.py", "import sgl_lang.errors", "the protocol imports nothing"),
    ],
)
def test_a_wrong_import_breaks_its_contract(
    package_copy: Path, module: str, bad_import: str, contract: str
) -> None:
    path = package_copy / "sgl_lang" / module
    path.write_text(path.read_text() + f"\n{bad_import}\n")
    result = lint_imports(package_copy)
    assert result.returncode == 1
    assert contract in result.stdout and "BROKEN" in result.stdout
