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
            lines.extend(f"  {frame.span.location} in {frame.function}" for frame in self.stack)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


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
