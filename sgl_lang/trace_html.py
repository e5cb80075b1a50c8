"""`sgl run --trace-html FILE`: the trace report (`trace.trace_report`) as one self-contained
HTML page: totals, the fork tree of states, a timeline of the calls, and every call's prompt
with its cached prefix shaded and its output marked. No script, no external resource: it opens
from disk in any browser."""

from __future__ import annotations

from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import Any

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
.totals td { padding: 0 1.5em 0 0; }
ul.tree { list-style: none; padding-left: 1.2em; border-left: 1px solid #ccc; }
ul.tree.root { border: 0; padding: 0; }
.state { margin: .4em 0; }
.state pre, .call pre { white-space: pre-wrap; background: #fafafa; padding: .5em;
  border: 1px solid #eee; margin: .3em 0; }
.cached { background: #d9e8fb; color: #345; }
.generated { background: #d7f5d7; font-weight: 600; }
.role { color: #06c; font-weight: 600; }
.timeline { position: relative; border-left: 1px solid #999; }
.lane { position: relative; height: 1.6em; border-bottom: 1px dotted #ddd; }
.lane .label { position: absolute; left: -7em; width: 6.5em; text-align: right;
  font-size: .85em; color: #666; }
.bar { position: absolute; top: .2em; height: 1.2em; min-width: 2px; border-radius: 2px;
  font-size: .75em; overflow: hidden; white-space: nowrap; color: #fff; padding: 0 2px; }
.bar.gen { background: #2a8a2a; } .bar.select { background: #b36b00; }
.bar.prefix { background: #777; }
.call { border-top: 1px solid #ddd; padding: .5em 0; }
.call .meta { color: #555; font-size: .9em; }
.rejected { color: #b00; }
"""


def write_html(report: dict[str, Any], path: Path, title: str) -> None:
    """Write the page of `report` (a `trace_report`, or only its totals for a batch)."""
    path.write_text(render(report, title), encoding="utf-8")


def render(report: dict[str, Any], title: str) -> str:
    """The page of `report` as one HTML document."""
    body = [f"<h1>Trace of {escape(title)}</h1>", _totals(report["totals"])]
    if "states" in report:
        body += ["<h2>States</h2>", _tree(report["states"], report["calls"])]
        body += ["<h2>Timeline</h2>", _timeline(report["calls"], len(report["states"]))]
        body += ["<h2>Calls</h2>", *(_call(n, c) for n, c in enumerate(report["calls"]))]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Trace of {escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def _totals(totals: dict[str, Any]) -> str:
    rows = [
        ("calls", totals["num_calls"]),
        ("wall time", f"{totals['wall_seconds']:.2f} s"),
        ("prompt tokens", totals["prompt_tokens"]),
        ("cached tokens", totals["cached_tokens"]),
        ("completion tokens", totals["completion_tokens"]),
    ]
    engine = totals["engine"]
    if engine is not None:
        rows.append(("engine cache hit rate", f"{engine['cache_hit_rate']:.1%}"))
        rows.append(("decode", f"{engine['decode_tokens_per_s']:.0f} tokens/s"))
    cells = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="totals">{cells}</table>'


def _tree(states: list[dict[str, Any]], calls: list[dict[str, Any]]) -> str:
    """The states nested under the state each was forked from."""
    children: dict[int | None, list[int]] = {}
    for index, state in enumerate(states):
        children.setdefault(state["parent"], []).append(index)

    def subtree(index: int) -> str:
        state = states[index]
        made = sum(call["state"] == index for call in calls)
        inherited = _inherited(states, index)
        label = "main state" if state["parent"] is None else f"state {index}"
        nested = "".join(subtree(child) for child in children.get(index, []))
        return (
            f'<li class="state" id="state-{index}"><strong>{label}</strong> '
            f"({made} call{'s' * (made != 1)})<pre>{_pieces(state['pieces'], inherited)}</pre>"
            + (f'<ul class="tree">{nested}</ul>' if nested else "")
            + "</li>"
        )

    roots = "".join(subtree(index) for index in children.get(None, []))
    return f'<ul class="tree root">{roots}</ul>'


def _inherited(states: list[dict[str, Any]], index: int) -> int:
    """How many leading pieces a state shares with its parent (shown dimmed)."""
    parent = states[index]["parent"]
    if parent is None:
        return 0
    count = 0
    for mine, theirs in zip(states[index]["pieces"], states[parent]["pieces"], strict=False):
        if mine != theirs:
            break
        count += 1
    return count


def _pieces(pieces: list[dict[str, Any]], inherited: int) -> str:
    html, role = [], None
    for number, piece in enumerate(pieces):
        if piece["role"] and piece["role"] != role:
            html.append(f'\n<span class="role">[{escape(piece["role"])}]</span> ')
        role = piece["role"]
        text = "<image>" if piece["image"] else piece["text"]
        kind = "generated" if piece["generated"] else "cached" if number < inherited else ""
        html.append(f'<span class="{kind}">{escape(text)}</span>' if kind else escape(text))
    return "".join(html).lstrip("\n")


def _timeline(calls: list[dict[str, Any]], num_states: int) -> str:
    """One lane per state; each call a bar from its start, as long as it took."""
    end = max((call["start"] + call["seconds"] for call in calls), default=0.0) or 1.0
    lanes = []
    for index in range(num_states):
        bars = "".join(
            _bar(number, call, end) for number, call in enumerate(calls) if call["state"] == index
        )
        label = "main" if index == 0 else f"state {index}"
        lanes.append(f'<div class="lane"><span class="label">{label}</span>{bars}</div>')
    scale = f"<p>0 … {end:.2f} s after the first call</p>"
    return f'<div class="timeline" style="margin-left:7em">{"".join(lanes)}</div>{scale}'


def _bar(number: int, call: dict[str, Any], end: float) -> str:
    left, width = 100 * call["start"] / end, 100 * call["seconds"] / end
    name = call["name"] or call["kind"]
    tip = f"{call['kind']} {name}: {call['seconds']:.3f} s from {call['start']:.3f} s"
    return (
        f'<a class="bar {call["kind"]}" href="#call-{number}" title="{escape(tip)}" '
        f'style="left:{left:.3f}%;width:{width:.3f}%">{escape(name)}</a>'
    )


def _call(number: int, call: dict[str, Any]) -> str:
    prompt = call["prompt"]
    output = call["output"] if call["kind"] == "gen" else ""
    parts = [
        f'<span class="cached">{escape(prompt["cached"])}</span>' if prompt["cached"] else "",
        escape(prompt["computed"]),
        f'<span class="generated">{escape(output)}</span>' if output else "",
    ]
    lines = list(_call_lines(call))
    return (
        f'<div class="call" id="call-{number}" data-kind="{call["kind"]}" '
        f'data-name="{escape(call["name"] or "")}" data-state="{call["state"]}">'
        f"<strong>{number}. {escape(_label(call))}</strong>"
        f'<div class="meta">{" · ".join(lines)}</div><pre>{"".join(parts)}</pre></div>'
    )


def _label(call: dict[str, Any]) -> str:
    if call["kind"] == "prefix":
        return "prefix hint"
    return " ".join(str(x) for x in (call["kind"], call["name"], call["where"]) if x)


def _call_lines(call: dict[str, Any]) -> Iterator[str]:
    yield f"state {call['state']}"
    yield f"{call['seconds']:.3f} s"
    if call["prompt_tokens"] is not None:
        yield f"{call['prompt_tokens']} prompt tokens ({call['cached_tokens'] or 0} cached)"
    yield f"{call['completion_tokens']} completion tokens"
    if call["scores"]:
        scores = ", ".join(f"{escape(k)!s}: {v:.3f}" for k, v in call["scores"].items())
        yield f"scores {scores} → {escape(call['output'])}"
    if call["replayed"]:
        yield "replayed"
    if call["rejected"]:
        yield f'<span class="rejected">rejected: {escape(call["rejected"])}</span>'
