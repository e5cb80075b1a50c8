"""`sgl run --replay FILE`: a backend wrapper that answers repeated requests from a file.

Every answer of the wrapped backend is appended to FILE (JSON Lines) under a key: a SHA-256 of
the backend's name and the whole request (for `generate` the prompt, every sampling argument
and the constraint; for `score` the prompt, the choices and the method). A request with a
recorded key, in this run or a later one, is answered from the file without calling the backend.

- Sampled requests (temperature > 0 without a seed) are recorded by occurrence: the n-th
  identical sampled request of a run replays the n-th recorded answer, so a `fork 3` that
  samples replays its three different answers; occurrences beyond those recorded call the
  backend and are recorded. Deterministic requests share one answer.
- A replayed answer streams as one chunk, and comes back as `Replayed` (`ReplayedScores`) so
  the trace can mark it. Errors are not recorded.
- Each new answer is one `os.write` of one line to the file opened with O_APPEND: parallel runs
  can share the file, and a crash leaves at most a partial last line. A line that cannot be read
  is skipped with a warning.
- `cache_prefix` hints are held back until a request misses: a run replayed in full makes no
  backend call at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from sgl_lang.backends.chat import is_url
from sgl_lang.protocol import (
    Backend,
    BackendError,
    CachedSplit,
    EngineTotals,
    GenRequest,
    GenResult,
    Image,
    Prompt,
    TokenLogprob,
    ToolCall,
)

KEY_VERSION = 2  # part of every key: a new key format never replays answers of an old one
Slot = tuple[str, int]  # (key, occurrence)


@dataclass(frozen=True)
class Replayed(GenResult):
    """A `GenResult` answered from the replay file."""


class ReplayedScores(list[float]):
    """Scores answered from the replay file."""


class ReplayBackend(Backend):
    """Forwards to `inner` what the replay file at `path` cannot answer, and records it there.
    `on_warning` receives the problems of the file (unreadable lines). The trace's hooks are
    forwarded too, but not `warm_up`: a run replayed in full loads no model."""

    def __init__(
        self, inner: Backend, path: Path, on_warning: Callable[[str], None] | None = None
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.file = ReplayFile(path, on_warning)
        self._num_sampled: Counter[str] = Counter()  # sampled requests of this run, by key
        self._held_hints: list[Prompt] = []

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        slot = self._slot(request_key(self.name, "gen", request=request), _is_sampled(request))
        answer = self.file.answers.get(slot)
        if isinstance(answer, GenResult):
            if on_chunk is not None and answer.text:
                on_chunk(answer.text)
            return answer
        await self._forward_hints()
        result = await self.inner.generate(request, on_chunk)
        self.file.add(slot, "gen", asdict(result))
        return result

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        key = request_key(self.name, "score", prompt=prompt, choices=list(choices), method=method)
        answer = self.file.answers.get((key, 0))
        if isinstance(answer, list):
            return ReplayedScores(answer)
        await self._forward_hints()
        scores = await self.inner.score(prompt, choices, method)
        self.file.add((key, 0), "score", list(scores))
        return scores

    async def cache_prefix(self, prompt: Prompt) -> None:
        self._held_hints.append(prompt)

    def stats(self) -> EngineTotals | None:
        return self.inner.stats()

    def split_cached(self, prompt: Prompt, num_cached_tokens: int) -> CachedSplit | None:
        return self.inner.split_cached(prompt, num_cached_tokens)

    async def close(self) -> None:
        self.file.close()
        await self.inner.close()

    def _slot(self, key: str, sampled: bool) -> Slot:
        if not sampled:
            return key, 0
        self._num_sampled[key] += 1
        return key, self._num_sampled[key] - 1

    async def _forward_hints(self) -> None:
        hints, self._held_hints = self._held_hints, []
        for prompt in hints:
            await self.inner.cache_prefix(prompt)


def _is_sampled(request: GenRequest) -> bool:
    return request.temperature > 0 and request.seed is None


# ---------------------------------------------------------------- keys


def request_key(backend_name: str, kind: str, **request: Any) -> str:
    """The SHA-256 (hex) of a request to a backend, stable across processes."""
    document = _plain({"v": KEY_VERSION, "backend": backend_name, "kind": kind, **request})
    text = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """`value` as JSON data: dataclasses as dicts tagged with their type, images by content."""
    if isinstance(value, Image):
        return {"type": "Image", "sha256": _image_digest(value)}
    if is_dataclass(value) and not isinstance(value, type):
        items = {field.name: _plain(getattr(value, field.name)) for field in fields(value)}
        return {"type": type(value).__name__, **items}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _image_digest(image: Image) -> str:
    """Bytes and local files by their content, URLs (and missing files) by their text."""
    source = image.source
    if isinstance(source, str):
        path = Path(source)
        source = path.read_bytes() if not is_url(image) and path.is_file() else source.encode()
    return hashlib.sha256(source).hexdigest()


# ---------------------------------------------------------------- the file


class ReplayFile:
    """The answers of a JSON Lines file: read once when opened, then appended to line by line.
    Each line is `{"key", "n" (occurrence), "kind" ("gen" | "score"), "backend", "answer"}`;
    the first answer of a slot wins."""

    def __init__(self, path: Path, on_warning: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.answers: dict[Slot, Replayed | list[float]] = {}
        try:
            data = path.read_bytes() if path.exists() else b""
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BackendError(f"replay file {path}: {exc.strerror or exc}") from None
        self._ends_mid_line = bool(data) and not data.endswith(b"\n")
        bad_lines = self._load(data.split(b"\n"))
        if bad_lines and on_warning is not None:
            on_warning(
                f"{path}: skipped {len(bad_lines)} unreadable line(s) (first: line {bad_lines[0]})"
            )

    def add(self, slot: Slot, kind: str, answer: Any) -> None:
        """Record `answer` (JSON data) for `slot`, in memory and at the end of the file."""
        self.answers.setdefault(slot, _decode(kind, answer))
        if self._fd is None:  # closed: a call that finished after the run
            return
        entry = {"key": slot[0], "n": slot[1], "kind": kind, "answer": answer}
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        if self._ends_mid_line:  # a crash cut the last line: start a new one
            line, self._ends_mid_line = "\n" + line, False
        try:
            os.write(self._fd, line.encode())
        except OSError as exc:
            raise BackendError(f"replay file {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _load(self, lines: list[bytes]) -> list[int]:
        """Read the entries; returns the numbers of the lines that could not be read."""
        bad_lines = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                slot = (entry["key"], entry["n"])
                if not isinstance(slot[0], str) or not isinstance(slot[1], int):
                    raise ValueError("bad key")
                self.answers.setdefault(slot, _decode(entry["kind"], entry["answer"]))
            except (ValueError, TypeError, KeyError):
                bad_lines.append(number)
        return bad_lines


def _decode(kind: str, answer: Any) -> Replayed | list[float]:
    """A recorded answer as a result; ValueError/TypeError when it is not one."""
    if kind == "gen" and isinstance(answer, dict) and isinstance(answer.get("text"), str):
        logprobs = answer.get("logprobs")
        if logprobs is not None:  # JSON lists back into `TokenLogprob`s
            logprobs = tuple(
                TokenLogprob(str(text), float(logprob), tuple((str(t), float(lp)) for t, lp in top))
                for text, logprob, top in logprobs
            )
        calls = tuple(ToolCall(**call) for call in answer.get("tool_calls", ()))
        return Replayed(**{**answer, "logprobs": logprobs, "tool_calls": calls})
    if kind == "score" and isinstance(answer, list):
        return [float(score) for score in answer]
    raise ValueError(f"not a {kind} answer")
