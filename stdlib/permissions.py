"""What a program may touch outside itself: files, the network, Python; all off unless granted."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from sgl_lang.errors import SglPermissionError


@dataclass(frozen=True)
class Permissions:
    """The `--allow-read/--allow-write/--allow-net/--allow-python` flags of one run."""

    read: bool = False
    write: bool = False
    net: bool = False
    python: bool = False


current: ContextVar[Permissions] = ContextVar(
    "sgl_permissions",
    default=Permissions(),  # noqa: B039 -- frozen, so sharing it is safe
)
"""The permissions of the running program; the runner sets it, modules check it."""

_DENIED = {
    "read": "reading files needs --allow-read",
    "write": "writing files needs --allow-write",
    "net": "network access needs --allow-net",
    "python": "calling Python needs --allow-python",
}


def require(kind: str) -> None:
    """Raise `SglPermissionError` unless the current run was granted `kind` (read/write/net/python)."""
    if kind not in _DENIED:
        raise ValueError(f"unknown permission kind {kind!r}; expected one of {sorted(_DENIED)}")
    if not getattr(current.get(), kind):
        raise SglPermissionError(_DENIED[kind])
