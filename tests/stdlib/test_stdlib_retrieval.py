"""The `retrieval` module: Okapi BM25 ranking with exact orders and scores."""

from __future__ import annotations

import math

import pytest

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.objects import get_attribute
from sgl_lang.stdlib.retrieval import K1, B, Index, index, tokenize

CORPUS = [
    "The cat sat on the mat.",
    "Dogs chase cats in the park.",
    "A cat, a cat, and another cat!",
    "Stock markets fell sharply today.",
    "The park was quiet.",
]


def test_tokenize_lowercases_words() -> None:
    assert tokenize("The Cat, sat!") == ["the", "cat", "sat"]


def test_ranking_order() -> None:
    hits = index(CORPUS).search("cat", k=5)
    assert [hit["id"] for hit in hits] == [2, 0]  # "cats" is another word: no stemming
    assert [hit["text"] for hit in hits] == [CORPUS[2], CORPUS[0]]
    assert hits[0]["score"] > hits[1]["score"] > 0


def test_multi_term_query_and_k() -> None:
    built = index(CORPUS)
    assert [hit["id"] for hit in built.search("park dogs")] == [1, 4]
    # the short document 4 (the + park) edges out document 0 (the x2 + cat): length normalization
    assert [hit["id"] for hit in built.search("the cat park", k=5)] == [4, 0, 2, 1]
    assert [hit["id"] for hit in built.search("the cat park", k=2)] == [4, 0]
    assert built.search("the cat park", k=0) == []


def test_unrelated_documents_are_left_out() -> None:
    assert index(CORPUS).search("quantum") == []
    assert index([]).search("cat") == []


def test_score_is_okapi_bm25() -> None:
    built = index(CORPUS)
    num_docs, doc_freq = 5, 2  # "cat" appears in documents 0 and 2
    idf = math.log(1 + (num_docs - doc_freq + 0.5) / (doc_freq + 0.5))
    avg_len = (6 + 6 + 7 + 5 + 4) / 5
    freq, doc_len = 3, 7
    expected = idf * freq * (K1 + 1) / (freq + K1 * (1 - B + B * doc_len / avg_len))
    assert built.search("cat")[0]["score"] == pytest.approx(expected)


def test_ties_keep_document_order() -> None:
    hits = index(["alpha beta", "beta alpha", "gamma"]).search("alpha")
    assert [hit["id"] for hit in hits] == [0, 1]
    assert hits[0]["score"] == hits[1]["score"]


def test_programs_see_only_search_and_documents() -> None:
    built = index(["a b", "c"])
    assert isinstance(built, Index)
    assert built.type_name == "index"
    assert str(built) == "<index of 2 documents>"
    assert get_attribute(built, "search")("c") == [
        {"text": "c", "score": pytest.approx(built.score(["c"], 1)), "id": 1}
    ]
    documents = get_attribute(built, "documents")
    documents.append("x")
    assert built.documents == ["a b", "c"]  # a copy: the index cannot be changed
    for hidden in ("score", "_documents", "__dict__"):
        with pytest.raises(SglTypeError, match="has no attribute"):
            get_attribute(built, hidden)


def test_bad_arguments() -> None:
    with pytest.raises(SglTypeError, match="takes a list of str, not `str`"):
        index("doc")  # type: ignore[arg-type]
    with pytest.raises(SglTypeError, match="needs str documents; found `int`"):
        index(["a", 1])  # type: ignore[list-item]
    built = index(["a"])
    with pytest.raises(SglTypeError, match="query must be a str"):
        built.search(1)  # type: ignore[arg-type]
    with pytest.raises(SglValueError, match="k must be >= 0"):
        built.search("a", k=-1)
