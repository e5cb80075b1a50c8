"""The language server behind the editor plugin (`sgl lsp`): analysis, vocabulary, pygls wiring.

`vocabulary` and `analysis` do not import pygls, so the REPL can share them.
"""
