"""The one import namespace holds in a built wheel, not only in the editable install."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_maps_runtime_stdlib_and_grammar_into_sgl_lang(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("sgl_lang-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "sgl_lang/grammars/sgl.lark",
        "sgl_lang/runtime/engine.py",
        "sgl_lang/runtime/models/llama.py",
        "sgl_lang/stdlib/builtins.py",
        "sgl_lang/py.typed",
    ):
        assert expected in names, f"{expected} missing from the wheel"
    assert not any(name.startswith(("runtime/", "stdlib/", "grammar/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sgl = sgl_lang.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_editable_install_resolves_the_same_namespace() -> None:
    import sgl_lang.grammars
    import sgl_lang.runtime
    import sgl_lang.stdlib

    # from the repository root, `sgl_lang/runtime` and `sgl_lang/stdlib` are symlinks to these
    assert Path(sgl_lang.runtime.__file__).resolve().parent == ROOT / "runtime"
    assert Path(sgl_lang.stdlib.__file__).resolve().parent == ROOT / "stdlib"
    assert (Path(sgl_lang.grammars.__file__).parent / "sgl.lark").is_file()
