"""`sgl run --trace-html FILE`: one self-contained page of the run, checked with an HTML parser:
every call present with its state, cached prompt parts shaded, the fork tree nested as the
states were forked, a timeline bar per call, nothing fetched from anywhere."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from sgl_lang import runner
from sgl_lang.backends.test import TestBackend
from sgl_lang.config import RunOptions
from sgl_lang.protocol import CachedSplit, GenRequest, GenResult, Prompt

ROOT = Path(__file__).resolve().parents[1]
NUM_CACHED = 9  # characters (the fake's tokens) of every prompt that came from its "cache"


class CachingBackend(TestBackend):
    """The test backend, saying the first NUM_CACHED characters of each prompt were cached."""

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        result = await super().generate(request, on_chunk)
        return dataclasses.replace(result, cached_tokens=NUM_CACHED)

    def split_cached(self, prompt: Prompt, num_cached_tokens: int) -> CachedSplit:
        text = prompt.plain_text()
        return CachedSplit(text[:num_cached_tokens], text[num_cached_tokens:])


@dataclasses.dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parent: Element | None
    text: str = ""


class Page(HTMLParser):
    """Every element of the page with its attributes, its parent and its own text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self.open: list[Element] = []
        self.feed(html)
        self.close()
        assert not self.open, f"unclosed: {[e.tag for e in self.open]}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        parent = self.open[-1] if self.open else None
        element = Element(tag, {k: v or "" for k, v in attrs}, parent)
        self.elements.append(element)
        if tag not in ("meta", "br"):
            self.open.append(element)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1].tag == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        if self.open:
            self.open[-1].text += data

    def having(self, cls: str) -> list[Element]:
        return [e for e in self.elements if cls in e.attrs.get("class", "").split()]

    def inside(self, element: Element, cls: str) -> Element | None:
        parent = element.parent
        while parent is not None and cls not in parent.attrs.get("class", "").split():
            parent = parent.parent
        return parent


def traced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], Page, str]:
    monkeypatch.setattr(runner, "get_backend", lambda uri, **engine: CachingBackend())
    html, trace = tmp_path / "trace.html", tmp_path / "trace.json"
    options = RunOptions(trace_json=trace, trace_html=html)
    program = ROOT / "examples" / "tree_of_thought.sgl"
    assert asyncio.run(runner.run_file(program, {}, options)) == 0
    text = html.read_text(encoding="utf-8")
    return json.loads(trace.read_text(encoding="utf-8")), Page(text), text


def test_every_call_is_on_the_page_with_its_state_and_cached_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, page, _ = traced(tmp_path, monkeypatch)
    calls = page.having("call")
    assert len(report["calls"]) == len(calls)
    assert [c["kind"] for c in report["calls"]].count("gen") == 2 + 4  # 2 plans, 2 answers each
    for call, element in zip(report["calls"], calls, strict=True):
        assert element.attrs["data-kind"] == call["kind"]
        assert element.attrs["data-name"] == (call["name"] or "")
        assert element.attrs["data-state"] == str(call["state"])
        cached = [e.text for e in page.having("cached") if page.inside(e, "call") is element]
        generated = [e.text for e in page.having("generated") if page.inside(e, "call") is element]
        if call["kind"] == "gen":
            assert cached == [call["prompt"]["cached"]] and len(cached[0]) == NUM_CACHED
            assert generated == [call["output"]]
        else:  # a prefix hint: nothing cached before it, nothing generated
            assert cached == generated == []


def test_the_fork_tree_nests_branches_under_the_state_they_were_forked_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, page, _ = traced(tmp_path, monkeypatch)
    states = report["states"]
    assert len(states) == 1 + 2 + 4 and states[0]["parent"] is None
    plans = [i for i, s in enumerate(states) if s["parent"] == 0]
    assert len(plans) == 2
    for plan in plans:
        assert sum(s["parent"] == plan for s in states) == 2  # its two solutions
    by_id = {e.attrs["id"]: e for e in page.elements if e.attrs.get("id", "").startswith("state-")}
    assert len(by_id) == len(states)
    for index, state in enumerate(states):
        if state["parent"] is not None:
            assert (
                page.inside(by_id[f"state-{index}"], "state") is by_id[f"state-{state['parent']}"]
            )
    for call in report["calls"]:  # each gen was made by a state of its own kind
        if call["kind"] != "gen":
            continue
        expected = "plan" if states[call["state"]]["parent"] == 0 else "answer"
        assert call["name"] == expected


def test_the_timeline_has_a_bar_per_call_and_the_page_fetches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, page, text = traced(tmp_path, monkeypatch)
    bars = page.having("bar")
    assert {b.attrs["class"].split()[1] for b in bars} == {"gen", "prefix"}
    assert len(bars) == len(report["calls"])
    assert {b.attrs["href"] for b in bars} == {f"#call-{n}" for n in range(len(bars))}
    assert all(call["start"] >= 0 for call in report["calls"])
    assert not [e for e in page.elements if e.tag in ("script", "link", "img", "iframe")]
    assert "http://" not in text and "https://" not in text
    assert "tree_of_thought.sgl" in page.elements[0].text or "tree_of_thought.sgl" in text
