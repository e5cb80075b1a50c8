"""Every error a user can cause: one root, `SglError`, rendered as `file:line:col: kind: message`."""

from __future__ import annotations

from dataclasses import dataclass

from sgl_lang.source import Span


@dataclass(frozen=True)
class Frame:
    """One `.sgl` call-stack frame: the function's name and the call site."""

    function: str
    span: Span


class SglError(Exception):
    """The root of user-facing errors. `span` may be filled in later by the interpreter."""

    kind = "error"

    def __init__(
        self,
        message: str,
        span: Span | None = None,
        *,
        hint: str | None = None,
        stack: tuple[Frame, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.stack = stack

    def at(self, span: Span) -> SglError:
        """Give the error a location if it has none yet; returns self."""
        if self.span is None:
            self.span = span
        return self

    def render(self) -> str:
        """The full report: location, kind, message, caret, hint and `.sgl` call stack."""
        head = f"{self.kind}: {self.message}"
        lines = [f"{self.span.location}: {head}" if self.span else head]
        if self.span:
            lines.append(self.span.caret())
        if self.hint:
            lines.append(f"hint: {self.hint}")
        if self.stack:
            lines.append("call stack (innermost last):")
            lines.extend(_stack_lines(self.stack))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _stack_lines(stack: tuple[Frame, ...]) -> list[str]:
    """One line per call site, with runs of the same frame (deep recursion) folded."""
    lines: list[str] = []
    index = 0
    while index < len(stack):
        frame = stack[index]
        repeats = 1
        while index + repeats < len(stack) and stack[index + repeats] == frame:
            repeats += 1
        lines.append(f"  {frame.span.location}: called `{frame.function}`")
        if repeats > 2:
            lines.append(f"  ... the same call {repeats - 1} more times")
        elif repeats == 2:
            lines.append(lines[-1])
        index += repeats
    return lines


class SglSyntaxError(SglError):
    kind = "syntax error"


class SglNameError(SglError):
    kind = "name error"


class SglTypeError(SglError):
    kind = "type error"


class SglValueError(SglError):
    kind = "value error"


class SglImportError(SglError):
    kind = "import error"


class SglPermissionError(SglError):
    kind = "permission error"


class SglBackendError(SglError):
    kind = "backend error"


class SglConstraintError(SglError):
    kind = "constraint error"


class SglAssertionError(SglError):
    kind = "assertion error"


class SglWarning(SglError):
    """A problem `sgl check` reports that does not stop a program from running."""

    kind = "warning"


class SglLimitError(SglValueError):
    """A resource limit was hit (`limits.Limits`): a value too large, too many steps, too long."""

    kind = "limit error"
