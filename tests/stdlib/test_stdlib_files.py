"""The `files` module: UTF-8 text in and out, only with --allow-read / --allow-write."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sgl_lang.errors import SglPermissionError, SglTypeError, SglValueError
from sgl_lang.stdlib import permissions
from sgl_lang.stdlib.files import glob, read, write
from sgl_lang.stdlib.permissions import Permissions


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def allowed() -> Iterator[None]:
    token = permissions.current.set(Permissions(read=True, write=True))
    yield
    permissions.current.reset(token)


def test_denied_without_permission(in_tmp: Path) -> None:
    (in_tmp / "a.txt").write_text("secret")
    with pytest.raises(SglPermissionError) as info:
        read("a.txt")
    assert info.value.message == "reading files needs --allow-read"
    with pytest.raises(SglPermissionError, match="--allow-read"):
        glob("*.txt")
    with pytest.raises(SglPermissionError) as info:
        write("b.txt", "x")
    assert info.value.message == "writing files needs --allow-write"
    assert not (in_tmp / "b.txt").exists()


def test_read_permission_does_not_grant_write(in_tmp: Path) -> None:
    token = permissions.current.set(Permissions(read=True))
    try:
        with pytest.raises(SglPermissionError, match="--allow-write"):
            write("b.txt", "x")
    finally:
        permissions.current.reset(token)


@pytest.mark.usefixtures("allowed")
def test_write_then_read_relative_to_the_working_directory(in_tmp: Path) -> None:
    write("notes.txt", "héllo\n")
    assert (in_tmp / "notes.txt").read_text(encoding="utf-8") == "héllo\n"
    write("notes.txt", "more", append=True)
    assert read("notes.txt") == "héllo\nmore"
    write("notes.txt", "new")
    assert read(str(in_tmp / "notes.txt")) == "new"


@pytest.mark.usefixtures("allowed")
def test_glob_is_sorted_and_recursive(in_tmp: Path) -> None:
    for name in ("b.md", "a.md", "c.txt", "sub/d.md"):
        (in_tmp / name).parent.mkdir(exist_ok=True)
        (in_tmp / name).write_text("x")
    assert glob("*.md") == ["a.md", "b.md"]
    assert glob("**/*.md") == ["a.md", "b.md", "sub/d.md"]
    assert glob("*.none") == []


@pytest.mark.usefixtures("allowed")
def test_errors_are_plain(in_tmp: Path) -> None:
    with pytest.raises(SglValueError) as info:
        read("missing.txt")
    assert info.value.message == 'files.read(): "missing.txt": no such file or directory'
    (in_tmp / "dir").mkdir()
    with pytest.raises(SglValueError, match="is a directory"):
        read("dir")
    with pytest.raises(SglValueError, match="no such file or directory"):
        write("no/such/folder.txt", "x")
    (in_tmp / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SglValueError, match="is not UTF-8 text"):
        read("bin")
    with pytest.raises(SglTypeError, match="text must be a str, not `list`; use str"):
        write("x.txt", [1])  # type: ignore[arg-type]
    with pytest.raises(SglTypeError, match="path must be a str, not `none`"):
        read(None)  # type: ignore[arg-type]
