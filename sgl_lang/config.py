"""How a run is configured: the options of the command line (`RunOptions`), and the runtime
options (`RunConfig`) of an `sgl.toml` file under the CLI's flags, merged and validated.

`sgl.toml` is read from the program's folder, else from the user config folder
(`platformdirs.user_config_dir("sgl")`, `~/.config/sgl` on Linux); only the first found is
read, and the CLI's flags override it. Every key is optional:

    model = "models/SmolLM2-360M"   # local model folder or .gguf (relative to this file)
    kv_cache_gb = 1.0               # KV cache budget
    policy = "lpm"                  # scheduling: lpm | dfs-weight | fcfs
    cache = true                    # the radix prefix cache
    max_running_requests = 64       # requests decoded together
    max_tokens = 256                # default `max_tokens` of `gen`
    threads = 2                     # torch threads
    kernels = "auto"                # forward kernels: auto (vllm if installed) | torch | vllm
    quantize = "int4"               # linear weights: none | int8 | int4 (docs/quantization.md)
    quantize_group_size = 32        # int4 columns sharing a scale: 32 | 64 | 128 | 256
    quantize_dense_rows = 24        # steps of this many rows use dense fp32 copies; 0 = never
    max_steps = 1000000             # statements and expressions a run may execute (default: no limit)
    timeout_s = 60                  # seconds a run may take (default: no limit)
    max_text_len = 10000000         # characters of one str or prompt (default 10,000,000)
    max_items = 1000000             # items of one list or dict (default 1,000,000)
    max_fork_width = 1000           # branches of one `fork` (default 1,000)
    regex_timeout_s = 5.0           # seconds one call of the `re` module may run (default 5)

The engine options apply to the `local` backend; `model` only when the backend is plain `local`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import platformdirs

from sgl_lang.bridge.options import EngineOptions
from sgl_lang.calls import DEFAULT_NUM_RETRIES
from sgl_lang.errors import SglValueError
from sgl_lang.limits import Limits
from sgl_lang.runtime.config import GROUP_SIZES, KERNELS, POLICIES, QUANT_MODES
from sgl_lang.source import Source, Span
from sgl_lang.stdlib.permissions import Permissions

CONFIG_NAME = "sgl.toml"


class Stream(Enum):
    """How generated text is shown: not at all, as it arrives (rich on a terminal, plain text
    when stderr is piped), or all at once when the program ends."""

    OFF = "off"
    LIVE = "live"
    PLAIN = "plain"
    END = "end"


@dataclass(frozen=True)
class RunOptions:
    """How a program is to be run, as `sgl run` (`--batch`) or `sgl repl` is asked:
    `runner.prepare_run` turns it into a backend and interpreters.

    `backend_uri` overrides the program's `backend "URI"`; `config_path` (`--config`) and
    `settings` (the runtime flags as `RunConfig` fields, None: not given) make the `RunConfig`
    (`run_config`); `replay` is the replay file of `--replay`; `allow_unenforced` lets
    constraints the backend cannot enforce be checked and retried (`num_retries` times)
    instead of refusing the run."""

    backend_uri: str | None = None
    permissions: Permissions = field(default_factory=Permissions)
    stream: Stream = Stream.OFF
    trace: bool = False
    trace_json: Path | None = None
    trace_html: Path | None = None
    config_path: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    replay: Path | None = None
    allow_unenforced: bool = False
    num_retries: int = DEFAULT_NUM_RETRIES

    @property
    def tracing(self) -> bool:
        """Whether the run's backend calls are recorded (`--trace`, `--trace-json`,
        `--trace-html`)."""
        return self.trace or self.trace_json is not None or self.trace_html is not None

    def run_config(self, program: Path | None) -> RunConfig:
        """The runtime options of a run of `program` (`resolve_config`)."""
        return resolve_config(program, self.config_path, self.settings)


@dataclass(frozen=True)
class RunConfig:
    """What `sgl run` runs with. None means the built-in default. Invalid values raise
    ValueError naming the field."""

    model: Path | None = None
    kv_cache_gb: float | None = None
    policy: str | None = None
    cache: bool = True
    max_running_requests: int | None = None
    max_tokens: int | None = None
    threads: int | None = None
    kernels: str | None = None
    quantize: str | None = None
    quantize_group_size: int | None = None
    quantize_dense_rows: int | None = None
    max_steps: int | None = None
    timeout_s: float | None = None
    max_text_len: int | None = None
    max_items: int | None = None
    max_fork_width: int | None = None
    regex_timeout_s: float | None = None

    def __post_init__(self) -> None:
        Limits(**self._limit_settings())  # raises ValueError naming a bad limit
        if self.model is not None and not isinstance(self.model, Path):
            raise ValueError(f"`model` must be a path, got {self.model!r}")
        if self.model is not None and not self.model.exists():
            raise ValueError(f"`model`: no such file or folder: {self.model}")
        if self.kv_cache_gb is not None and (
            isinstance(self.kv_cache_gb, bool)
            or not isinstance(self.kv_cache_gb, (int, float))
            or not self.kv_cache_gb > 0
        ):
            raise ValueError(f"`kv_cache_gb` must be a number > 0, got {self.kv_cache_gb!r}")
        if self.policy is not None and self.policy not in POLICIES:
            choices = ", ".join(POLICIES)
            raise ValueError(f"`policy` must be one of {choices}, got {self.policy!r}")
        if self.kernels is not None and self.kernels not in KERNELS:
            raise ValueError(f"`kernels` must be one of {', '.join(KERNELS)}, got {self.kernels!r}")
        if self.quantize is not None and self.quantize not in QUANT_MODES:
            choices = ", ".join(QUANT_MODES)
            raise ValueError(f"`quantize` must be one of {choices}, got {self.quantize!r}")
        if self.quantize_group_size is not None and self.quantize_group_size not in GROUP_SIZES:
            choices = ", ".join(map(str, GROUP_SIZES))
            raise ValueError(
                f"`quantize_group_size` must be one of {choices}, got {self.quantize_group_size!r}"
            )
        if self.quantize_dense_rows is not None and (
            isinstance(self.quantize_dense_rows, bool)
            or not isinstance(self.quantize_dense_rows, int)
            or self.quantize_dense_rows < 0
        ):
            raise ValueError(
                f"`quantize_dense_rows` must be an integer >= 0, got {self.quantize_dense_rows!r}"
            )
        if not isinstance(self.cache, bool):
            raise ValueError(f"`cache` must be true or false, got {self.cache!r}")
        for name in ("max_running_requests", "max_tokens", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
            if value is not None and value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")

    def override(self, **changes: Any) -> RunConfig:
        """A validated copy with every change that is not None applied."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def limits(self) -> Limits:
        """The resource limits of a run: the ones set here, the defaults of `Limits` else."""
        return Limits(**self._limit_settings())

    def _limit_settings(self) -> dict[str, Any]:
        given = {limit.name: getattr(self, limit.name) for limit in fields(Limits)}
        return {name: value for name, value in given.items() if value is not None}

    @property
    def engine_options(self) -> EngineOptions:
        """What the `local` backend's engine (and `sgl serve`'s) is built with."""
        return EngineOptions(**{option: getattr(self, key) for key, option in ENGINE_KEYS.items()})


KEYS = tuple(f.name for f in fields(RunConfig))
# The keys of `sgl.toml` (and the flags of the same names) that build the engine, as the
# `EngineOptions` field each one sets: a new engine option is one line here.
ENGINE_KEYS = {
    "kv_cache_gb": "kv_cache_gb",
    "policy": "policy",
    "cache": "enable_cache",
    "max_running_requests": "max_running_requests",
    "threads": "num_threads",
    "kernels": "kernels",
    "quantize": "quantize",
    "quantize_group_size": "quantize_group_size",
    "quantize_dense_rows": "quantize_dense_rows",
}


def find_config(program: Path | None) -> Path | None:
    """`sgl.toml` next to `program`, else in the user config folder, else None."""
    candidates = [program.parent / CONFIG_NAME] if program is not None else []
    candidates.append(Path(platformdirs.user_config_dir("sgl")) / CONFIG_NAME)
    return next((path for path in candidates if path.is_file()), None)


def resolve_config(
    program: Path | None, explicit: Path | None, overrides: dict[str, Any]
) -> RunConfig:
    """The config of a run: `explicit` (`--config`) or the file `find_config` finds, with the
    CLI's `overrides` (None values ignored) on top."""
    path = explicit or find_config(program)
    config = load_config(path) if path is not None else RunConfig()
    try:
        return config.override(**overrides)
    except ValueError as exc:
        raise SglValueError(f"command line: {exc}") from None


def load_config(path: Path) -> RunConfig:
    """The config in `path`; problems are `SglValueError`s pointing at the offending line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SglValueError(f"cannot read config file {path}: {exc}") from None
    source = Source(str(path), text)
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SglValueError(f"invalid TOML: {exc}", _decode_error_span(source, str(exc))) from None
    values: dict[str, Any] = {}
    for key, value in table.items():
        span = _key_span(source, key)
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(KEYS)}"
            raise SglValueError(f"unknown config key `{key}`", span, hint=hint)
        if key == "model":
            if not isinstance(value, str):
                raise SglValueError(f"`model` must be a path string, got {value!r}", span)
            value = (path.parent / Path(value).expanduser()).resolve()
        values[key] = value
        try:
            RunConfig(**{key: value})
        except ValueError as exc:
            raise SglValueError(str(exc), span) from None
    return RunConfig(**values)


def _key_span(source: Source, key: str) -> Span | None:
    """The line that sets `key` (bare or quoted), from the key to the end of the line."""
    pattern = rf"""^[ \t]*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')[ \t]*="""
    match = re.search(pattern, source.text, re.MULTILINE)
    if match is None:
        return None
    start = match.start() + len(match.group()) - len(match.group().lstrip())
    end = source.text.find("\n", start)
    return source.span(start, len(source.text) if end < 0 else end)


def _decode_error_span(source: Source, message: str) -> Span | None:
    """tomllib says `(at line L, column C)`; point there."""
    if not source.text:
        return None
    if "end of document" in message:
        return source.span(len(source.text) - 1, len(source.text))
    match = re.search(r"at line (\d+), column (\d+)", message)
    if match is None:
        return None
    line, column = int(match.group(1)), int(match.group(2))
    starts = source.line_starts
    offset = min(starts[min(line, len(starts)) - 1] + column - 1, len(source.text) - 1)
    return source.span(offset, offset + 1)
