"""Resource limits of a run: the largest value a program may build, fork width, steps and time."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from sgl_lang.errors import SglLimitError


@dataclass(frozen=True)
class Limits:
    """What one run may use. Sizes are checked before a value is built; `max_steps` counts the
    statements and expressions a run executes; None means no limit. Each has an `sgl.toml` key
    of the same name (`max_steps` and `timeout_s` also the flags `--max-steps`, `--timeout`).
    Invalid values raise ValueError naming the field."""

    max_text_len: int = 10_000_000
    """Characters of one str, and of the text of one prompt state (also digits of an int)."""
    max_items: int = 1_000_000
    """Items of one list or dict."""
    max_fork_width: int = 1_000
    """Branches of one `fork`."""
    regex_timeout_s: float = 5.0
    """Seconds one call of the `re` module may run."""
    max_steps: int | None = None
    """Statements and expressions one run may execute."""
    timeout_s: float | None = None
    """Seconds one run may take."""

    def __post_init__(self) -> None:
        for name in ("max_text_len", "max_items", "max_fork_width", "max_steps"):
            value = getattr(self, name)
            if value is None and name == "max_steps":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        for name in ("regex_timeout_s", "timeout_s"):
            value = getattr(self, name)
            if value is None and name == "timeout_s":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"`{name}` must be a number of seconds > 0, got {value!r}")


DEFAULT_LIMITS = Limits()
current: ContextVar[Limits] = ContextVar("sgl_limits", default=DEFAULT_LIMITS)
"""The limits of the running program; the interpreter sets them for its run."""


def _raise_hint(key: str) -> str:
    flags = {"max_steps": "--max-steps N or ", "timeout_s": "--timeout SECONDS or "}
    return f"raise it with {flags.get(key, '')}`{key} = ...` in sgl.toml"


def limit_error(message: str, key: str) -> SglLimitError:
    """The error of a limit (`key`, a `Limits` field) that was hit, with how to raise it."""
    return SglLimitError(message, hint=_raise_hint(key))


def check_text_len(num_chars: int, what: str) -> None:
    """Refuse to build a str of `num_chars` characters over `max_text_len`."""
    limit = current.get().max_text_len
    if num_chars > limit:
        raise limit_error(
            f"{what} would build a str too long: {num_chars:,} characters, "
            f"over the limit of {limit:,} (max_text_len)",
            "max_text_len",
        )


def check_num_items(num_items: int, what: str) -> None:
    """Refuse to build a list or dict of `num_items` items over `max_items`."""
    limit = current.get().max_items
    if num_items > limit:
        raise limit_error(
            f"{what} would build a list too long: {num_items:,} items, "
            f"over the limit of {limit:,} (max_items)",
            "max_items",
        )


def check_int_bits(num_bits: int, what: str) -> None:
    """Refuse to build an int with more decimal digits than `max_text_len`."""
    limit = current.get().max_text_len
    num_digits = num_bits * 30103 // 100000  # log10(2) = 0.30103
    if num_digits > limit:
        raise limit_error(
            f"{what} would build an int too large: about {num_digits:,} digits, "
            f"over the limit of {limit:,} (max_text_len)",
            "max_text_len",
        )


def check_size(value: object, num_units: int, what: str) -> None:
    """`check_text_len` for a str, `check_num_items` for a list (other values: nothing)."""
    if isinstance(value, str):
        check_text_len(num_units, what)
    elif isinstance(value, (list, dict)):
        check_num_items(num_units, what)


# [[fill]align][sign][z][#][0][width][grouping][.precision][type], as in Python's format specs
_SPEC_NUMBERS = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?")


def spec_len(spec: str) -> int:
    """The largest width or precision a format spec asks for (0: none)."""
    found = _SPEC_NUMBERS.match(spec)
    if found is None:
        return 0
    # 19 digits are over any limit; Python refuses to convert much longer digit strings
    return max(int(part[:19] or 0) for part in found.groups(""))


def check_format_spec(spec: str, what: str) -> None:
    """Refuse a format spec whose width or precision is over `max_text_len`."""
    check_text_len(spec_len(spec), what)


@contextmanager
def interruptible() -> Iterator[None]:
    """Within: SIGINT raises KeyboardInterrupt at once, also inside C code that checks for signals
    (the regex engine), instead of waiting for the asyncio handler's cancellation. A
    cancellation already requested (a Ctrl-C just before) stops here."""
    if _cancelling():
        raise asyncio.CancelledError
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _cancelling() -> bool:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop
        return False
    return task is not None and task.cancelling() > 0
