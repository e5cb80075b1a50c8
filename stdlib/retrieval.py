"""The `retrieval` module: `index(documents)` builds an Okapi BM25 index for retrieval-augmented prompts.

Scoring is BM25 with k1 = 1.5 and b = 0.75 and the always-positive idf
`log(1 + (N - n + 0.5) / (n + 0.5))`. Text is tokenized into lowercase word
runs (`\\w+`), with no stemming and no stop words. `search` returns only
documents that share at least one word with the query, best first, ties in
document order.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, ClassVar

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.values import type_name

K1 = 1.5
B = 0.75
_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """The lowercase words of `text`: BM25's terms."""
    return _WORD.findall(text.lower())


class Index:
    """A BM25 index over a fixed list of documents; programs see `search` and `documents`."""

    type_name: ClassVar[str] = "index"
    sgl_attributes: ClassVar[frozenset[str]] = frozenset({"search", "documents"})

    def __init__(self, documents: list[str]) -> None:
        self._documents = documents
        self._term_counts = [Counter(tokenize(doc)) for doc in documents]
        self._doc_lens = [sum(counts.values()) for counts in self._term_counts]
        self._avg_doc_len = sum(self._doc_lens) / len(documents) if documents else 0.0
        doc_freqs = Counter(term for counts in self._term_counts for term in counts)
        num_docs = len(documents)
        self._idf = {
            term: math.log(1 + (num_docs - n + 0.5) / (n + 0.5)) for term, n in doc_freqs.items()
        }

    @property
    def documents(self) -> list[str]:
        """index.documents -> list[str]: a copy of the indexed documents, in order."""
        return list(self._documents)

    def score(self, query_terms: list[str], doc_id: int) -> float:
        """The BM25 score of document `doc_id` for the query terms (repeated terms count again)."""
        counts = self._term_counts[doc_id]
        norm = K1 * (1 - B + B * self._doc_lens[doc_id] / (self._avg_doc_len or 1.0))
        total = 0.0
        for term in query_terms:
            freq = counts.get(term, 0)
            if freq:
                total += self._idf[term] * freq * (K1 + 1) / (freq + norm)
        return total

    def search(self, query: str, k: int = 3) -> list[dict[str, Any]]:
        """index.search(query, k=3) -> list of {"text", "score", "id"}: the k best documents, best first."""
        if not isinstance(query, str):
            raise SglTypeError(f"search() query must be a str, not `{type_name(query)}`")
        if not isinstance(k, int) or isinstance(k, bool):
            raise SglTypeError(f"search() k must be an int, not `{type_name(k)}`")
        if k < 0:
            raise SglValueError(f"search() k must be >= 0, got {k}")
        terms = tokenize(query)
        scored = [(self.score(terms, doc_id), doc_id) for doc_id in range(len(self._documents))]
        ranked = sorted((pair for pair in scored if pair[0] > 0), key=lambda p: (-p[0], p[1]))
        return [
            {"text": self._documents[doc_id], "score": score, "id": doc_id}
            for score, doc_id in ranked[:k]
        ]

    def __str__(self) -> str:
        return f"<index of {len(self._documents)} documents>"


def index(documents: list[str]) -> Index:
    """index(documents) -> index: a BM25 index over a list of strings; use `.search(query, k=3)`."""
    if not isinstance(documents, list):
        raise SglTypeError(f"retrieval.index() takes a list of str, not `{type_name(documents)}`")
    for doc in documents:
        if not isinstance(doc, str):
            raise SglTypeError(f"retrieval.index() needs str documents; found `{type_name(doc)}`")
    return Index(list(documents))


EXPORTS = {"index": index}
