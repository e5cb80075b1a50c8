"""Source text and spans: where a piece of a program came from, and how to point at it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True, eq=False)
class Source:
    """A program's text and the name it is reported under (usually its path)."""

    name: str
    text: str

    @cached_property
    def line_starts(self) -> tuple[int, ...]:
        starts = [0]
        starts.extend(i + 1 for i, ch in enumerate(self.text) if ch == "\n")
        return tuple(starts)

    def line(self, line_no: int) -> str:
        """The text of 1-based line `line_no`, without its line break."""
        starts = self.line_starts
        if not 1 <= line_no <= len(starts):
            return ""
        end = starts[line_no] - 1 if line_no < len(starts) else len(self.text)
        return self.text[starts[line_no - 1] : end].rstrip("\r")

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        from bisect import bisect_right

        line_idx = bisect_right(self.line_starts, offset) - 1
        return line_idx + 1, offset - self.line_starts[line_idx] + 1

    def span(self, start: int, end: int) -> Span:
        """The span of characters `start:end`."""
        line, column = self.position(start)
        end_line, end_column = self.position(max(start, end))
        return Span(self, start, end, line, column, end_line, end_column)


@dataclass(frozen=True, eq=False)
class Span:
    """A range of a source: offsets and 1-based line/column of both ends (end exclusive)."""

    source: Source
    start: int
    end: int
    line: int
    column: int
    end_line: int
    end_column: int

    @property
    def location(self) -> str:
        return f"{self.source.name}:{self.line}:{self.column}"

    @property
    def text(self) -> str:
        return self.source.text[self.start : self.end]

    def caret(self) -> str:
        """The span's first source line and a caret line under it."""
        line_text = self.source.line(self.line)
        width = (
            self.end_column if self.end_line == self.line else len(line_text) + 1
        ) - self.column
        width = max(1, width)
        prefix = "".join(ch if ch == "\t" else " " for ch in line_text[: self.column - 1])
        return f"    {line_text}\n    {prefix}{'^' * width}"

    def to(self, other: Span) -> Span:
        """The span from the start of this one to the end of `other`."""
        return self.source.span(self.start, other.end)
