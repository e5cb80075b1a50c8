"""What a program may touch outside itself: files, the network, Python; all off unless granted.

Deno's model: `--allow-read` grants every file, `--allow-read=DIR` only the files below DIR
(`--allow-write` likewise); `--allow-net` grants every host, `--allow-net=HOST` only HOST (any
port) and `--allow-net=HOST:PORT` only that port. `--allow-python` has no scope: Python code
can do anything the user can.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sgl_lang.errors import SglPermissionError
from sgl_lang.source import Span

FileScope = bool | tuple[Path, ...]
"""False: nothing; True: every file; a tuple: the files below these (resolved) folders."""
HostScope = bool | tuple[str, ...]
"""False: no host; True: every host; a tuple: these hosts (`host` or `host:port`)."""

FLAGS = {"read": "--allow-read", "write": "--allow-write", "net": "--allow-net"}
_ACTIONS = {"read": "reading", "write": "writing", "net": "connecting to"}
_DENIED = {
    "read": "reading files needs --allow-read",
    "write": "writing files needs --allow-write",
    "net": "network access needs --allow-net",
    "python": "calling Python needs --allow-python",
}
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Permissions:
    """The `--allow-read/--allow-write/--allow-net/--allow-python` flags of one run."""

    read: FileScope = False
    write: FileScope = False
    net: HostScope = False
    python: bool = False

    def allows(self, kind: str, target: str | Path | None = None) -> bool:
        """Whether `kind` (read/write/net/python) is granted for `target` (a path for
        read/write, a URL or `host[:port]` for net). Without a target: whether it is granted
        anywhere at all (the caller then checks each place it touches)."""
        if kind not in (*FLAGS, "python"):
            raise ValueError(f"unknown permission kind {kind!r}; expected read/write/net/python")
        scope = getattr(self, kind)
        if isinstance(scope, bool):
            return scope
        if target is None:
            return bool(scope)
        if kind == "net":
            return _host_allowed(str(target), scope)
        path = resolved(target)
        return any(path.is_relative_to(folder) for folder in scope)

    def denial(self, kind: str, target: str | Path | None = None) -> str:
        """Why `kind` on `target` is refused, naming the flag that would grant it."""
        if kind == "python" or target is None:
            return _DENIED[kind]
        shown = host_of(str(target)) if kind == "net" else resolved(target)
        return f"{_ACTIONS[kind]} `{shown}` needs {self.needed(kind)}"

    def needed(self, kind: str) -> str:
        """The flag that grants `kind`, with what this run grants when it is scoped."""
        scope = getattr(self, kind)
        if isinstance(scope, tuple) and scope:
            return f"{FLAGS[kind]} (granted only for {', '.join(map(str, scope))})"
        return FLAGS[kind]


def resolved(path: str | Path) -> Path:
    """`path` as the file system reaches it: `~` expanded, relative to the working folder,
    symbolic links followed."""
    return Path(path).expanduser().resolve()


def host_of(target: str) -> str:
    """The `host[:port]` a URL (or a bare `host[:port]`) names, lower-cased."""
    host, port = _host_port(target)
    return f"{host}:{port}" if port is not None else host


def _host_port(target: str) -> tuple[str, int | None]:
    parts = urlsplit(target if "//" in target else f"//{target}")
    try:
        port = parts.port
    except ValueError:
        port = None
    return (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(parts.scheme)


def _host_allowed(target: str, hosts: tuple[str, ...]) -> bool:
    host, port = _host_port(target)
    for entry in hosts:
        allowed_host, allowed_port = _host_port(entry)
        if allowed_host == host and allowed_port in (None, port):
            return True
    return False


current: ContextVar[Permissions] = ContextVar(
    "sgl_permissions",
    default=Permissions(),  # noqa: B039 -- frozen, so sharing it is safe
)
"""The permissions of the running program; the runner sets it, modules check it."""


def require(kind: str, target: str | Path | None = None, span: Span | None = None) -> None:
    """Raise `SglPermissionError` (at `span`) unless the current run was granted `kind`
    (read/write/net/python) for `target` (see `Permissions.allows`)."""
    granted = current.get()
    if not granted.allows(kind, target):
        raise SglPermissionError(granted.denial(kind, target), span)
