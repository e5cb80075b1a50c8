"""`sgl lsp`: the pygls server over stdio. Converts between LSP and `analysis.Document`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path

from sgl_lang import __version__
from sgl_lang.errors import SglError, SglWarning
from sgl_lang.lsp.analysis import Document, Symbol
from sgl_lang.source import Source, Span

_SYMBOL_KINDS = {
    "function": lsp.SymbolKind.Function,
    "schema": lsp.SymbolKind.Struct,
    "param": lsp.SymbolKind.Constant,
    "import": lsp.SymbolKind.Module,
    "variable": lsp.SymbolKind.Variable,
    "generated": lsp.SymbolKind.Variable,
    "argument": lsp.SymbolKind.Variable,
    "field": lsp.SymbolKind.Field,
    "loop": lsp.SymbolKind.Variable,
}
_COMPLETION_KINDS = {
    "keyword": lsp.CompletionItemKind.Keyword,
    "builtin": lsp.CompletionItemKind.Function,
    "name": lsp.CompletionItemKind.Variable,
    "argument": lsp.CompletionItemKind.Property,
    "module": lsp.CompletionItemKind.Module,
    "attribute": lsp.CompletionItemKind.Field,
}


class SglLanguageServer(LanguageServer):
    """Keeps one analysed `Document` per open URI."""

    def __init__(self) -> None:
        super().__init__(
            "sgl-lsp", __version__, text_document_sync_kind=lsp.TextDocumentSyncKind.Full
        )
        self.documents: dict[str, Document] = {}

    def analyse(self, uri: str) -> Document:
        text = self.workspace.get_text_document(uri).source
        document = Document.analyse(uri_to_path(uri), text, self.documents.get(uri))
        self.documents[uri] = document
        return document

    def document(self, uri: str) -> Document:
        return self.documents.get(uri) or self.analyse(uri)

    def publish(self, uri: str, version: int | None = None) -> None:
        document = self.analyse(uri)
        diagnostics = [diagnostic(problem) for problem in document.problems]
        self.text_document_publish_diagnostics(
            lsp.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics, version=version)
        )


server = SglLanguageServer()


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: SglLanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
    ls.publish(params.text_document.uri, params.text_document.version)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: SglLanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
    ls.publish(params.text_document.uri, params.text_document.version)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: SglLanguageServer, params: lsp.DidSaveTextDocumentParams) -> None:
    ls.publish(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: SglLanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
    ls.documents.pop(params.text_document.uri, None)
    ls.text_document_publish_diagnostics(
        lsp.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[])
    )


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
def hover(ls: SglLanguageServer, params: lsp.HoverParams) -> lsp.Hover | None:
    document = ls.document(params.text_document.uri)
    text = document.hover(offset_of(document.text, params.position))
    if text is None:
        return None
    return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text))


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
def definition(ls: SglLanguageServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    document = ls.document(params.text_document.uri)
    found = document.definition(offset_of(document.text, params.position))
    if found is None:
        return None
    path, span = found
    where = span_range(span) if span else lsp.Range(lsp.Position(0, 0), lsp.Position(0, 0))
    return lsp.Location(uri=from_fs_path(str(path)) or path.as_uri(), range=where)


@server.feature(
    lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=[".", "(", ","])
)
def completion(ls: SglLanguageServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    document = ls.document(params.text_document.uri)
    items = [
        lsp.CompletionItem(label=item.word, kind=_COMPLETION_KINDS[item.kind], detail=item.kind)
        for item in document.completions(offset_of(document.text, params.position))
    ]
    return lsp.CompletionList(is_incomplete=False, items=items)


@server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def document_symbol(
    ls: SglLanguageServer, params: lsp.DocumentSymbolParams
) -> list[lsp.DocumentSymbol]:
    return [_symbol(symbol) for symbol in ls.document(params.text_document.uri).symbols()]


def _symbol(symbol: Symbol) -> lsp.DocumentSymbol:
    return lsp.DocumentSymbol(
        name=symbol.name,
        kind=_SYMBOL_KINDS[symbol.kind],
        range=span_range(symbol.span),
        selection_range=span_range(symbol.name_span),
        detail=symbol.kind,
        children=[_symbol(child) for child in symbol.children],
    )


# ---------------------------------------------------------------- conversions


def diagnostic(problem: SglError) -> lsp.Diagnostic:
    """A problem as `sgl check` reports it: same message, same span; warnings as warnings."""
    where = (
        span_range(problem.span)
        if problem.span
        else lsp.Range(lsp.Position(0, 0), lsp.Position(0, 0))
    )
    message = problem.message + (f"\nhint: {problem.hint}" if problem.hint else "")
    severity = (
        lsp.DiagnosticSeverity.Warning
        if isinstance(problem, SglWarning)
        else lsp.DiagnosticSeverity.Error
    )
    return lsp.Diagnostic(
        range=where, message=message, severity=severity, code=problem.kind, source="sgl"
    )


def span_range(span: Span) -> lsp.Range:
    """A span's LSP range (0-based lines, UTF-16 columns)."""
    return lsp.Range(
        start=_position(span.source, span.line, span.column),
        end=_position(span.source, span.end_line, span.end_column),
    )


def _position(source: Source, line: int, column: int) -> lsp.Position:
    before = source.line(line)[: column - 1]
    return lsp.Position(line=line - 1, character=len(before.encode("utf-16-le")) // 2)


def offset_of(text: str, position: lsp.Position) -> int:
    """The character offset of an LSP position in `text`."""
    lines = text.split("\n")
    if position.line >= len(lines):
        return len(text)
    start = sum(len(line) + 1 for line in lines[: position.line])
    units = 0
    for index, char in enumerate(lines[position.line]):
        if units >= position.character:
            return start + index
        units += 2 if ord(char) > 0xFFFF else 1
    return start + len(lines[position.line])


def uri_to_path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)


def main() -> None:
    """Serve over stdin/stdout until the client exits."""
    server.start_io()
