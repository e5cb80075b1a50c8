"""The benchmark workloads: which `.sgl` program, its rows from `../shared/data/` (read in
place), and how an answer is graded. Three sizes: `quick` (a slice of each with shorter
generations, for CI), `default` (the recipes of `SOURCES.md` scaled so that every system runs
every workload in about 45 minutes on a 2-core CPU) and `paper` (the sizes of the SGLang
paper's benchmark scripts, where the data has them)."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKLOADS_DIR = Path(__file__).parent / "workloads"
DATA_DIR = Path(
    os.environ.get("SGL_BENCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
SIZES = ("quick", "default", "paper")
MMLU_MIN_SUBJECTS = 4
MMLU_QUESTIONS_PER_SUBJECT = 30  # the test rows each subject has in the data
TIP_TOPICS = (
    "staying healthy",
    "learning a new language",
    "saving money",
    "writing a good essay",
    "sleeping better",
    "public speaking",
    "cooking rice",
    "running a marathon",
    "growing tomatoes",
    "taking better photos",
    "working from home",
    "studying for exams",
)

CountTokens = Callable[[str], int]


@dataclass(frozen=True)
class Item:
    """One program run: its params, and the reference its output is graded against."""

    params: dict[str, Any]
    reference: Any = None


@dataclass(frozen=True)
class Workload:
    """A `.sgl` program, how to make its items, and how to grade one (None: no answer key)."""

    name: str
    program: str  # file name in workloads/
    make_items: Callable[[int, bool, CountTokens], list[Item]]
    sizes: dict[str, int]  # programs per run, by size: quick, default, paper
    grade: Callable[[Item, dict[str, Any]], bool] | None = None

    @property
    def path(self) -> Path:
        return WORKLOADS_DIR / self.program

    def items(self, size: str, count_tokens: CountTokens, limit: int | None = None) -> list[Item]:
        return self.make_items(limit or self.sizes[size], size == "quick", count_tokens)


def _jsonl(relative: str) -> list[dict[str, Any]]:
    with open(DATA_DIR / relative, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _interleave(groups: list[list[Item]], num: int) -> list[Item]:
    """Round-robin over groups, so programs sharing a prefix do not arrive side by side."""
    items = [group[i] for i in range(max(map(len, groups))) for group in groups if i < len(group)]
    return items[:num]


# ---------------------------------------------------------------- MMLU


def _mmlu_rows(split: str, subject: str) -> list[list[str]]:
    with open(DATA_DIR / "mmlu" / "data" / split / f"{subject}_{split}.csv", encoding="utf-8") as f:
        return list(csv.reader(f))


def mmlu_subjects(num: int | None = None) -> list[str]:
    """The subjects `num` questions are drawn from: the first ones in sorted order (as SGLang's
    `--nsub`), at least four, as many as `num` needs at 30 questions each (None: every one)."""
    available = sorted(
        p.name.removesuffix("_test.csv")
        for p in (DATA_DIR / "mmlu" / "data" / "test").glob("*_test.csv")
    )
    if num is None:
        return available
    return available[: max(MMLU_MIN_SUBJECTS, -(-num // MMLU_QUESTIONS_PER_SUBJECT))]


def _mmlu_items(num: int, quick: bool, count_tokens: CountTokens) -> list[Item]:
    return mmlu_items(mmlu_subjects(num), num)


def mmlu_items(subjects: Sequence[str], num: int) -> list[Item]:
    """`num` questions taken round-robin over `subjects`, each with its subject's 5 dev shots."""
    groups = []
    for subject in subjects:
        shots = [
            {"question": row[0], "choices": row[1:5], "answer": row[5]}
            for row in _mmlu_rows("dev", subject)
        ]
        params = {"subject": subject.replace("_", " "), "shots": shots}
        groups.append(
            [
                Item({**params, "question": row[0], "choices": row[1:5]}, row[5])
                for row in _mmlu_rows("test", subject)
            ]
        )
    return _interleave(groups, num)


def _grade_mmlu(item: Item, output: dict[str, Any]) -> bool:
    return str(output.get("answer", "")).strip() == item.reference


# ---------------------------------------------------------------- HellaSwag


def _hellaswag_items(num: int, quick: bool, count_tokens: CountTokens) -> list[Item]:
    tasks = _jsonl("hellaswag/hellaswag_val.jsonl")
    num_shots = 20
    shots = [
        {"activity_label": t["activity_label"], "ctx": t["ctx"], "ending": t["endings"][t["label"]]}
        for t in tasks[:num_shots]
    ]
    return [
        Item(
            {
                "shots": shots,
                "activity_label": t["activity_label"],
                "ctx": t["ctx"],
                "endings": t["endings"],
            },
            t["endings"][t["label"]],
        )
        for t in tasks[num_shots : num_shots + num]
    ]


def _grade_hellaswag(item: Item, output: dict[str, Any]) -> bool:
    return output.get("answer") == item.reference


# ---------------------------------------------------------------- ReAct (HotpotQA traces)


def _react_step_text(number: int, step: dict[str, str]) -> str:
    return (
        f"Thought {number}: {step['thought']}\nAction {number}: {step['action']}\n"
        f"Observation {number}: {step['observation']}\n"
    )


def _react_items(num: int, quick: bool, count_tokens: CountTokens) -> list[Item]:
    traces = [next(iter(t.items())) for t in _jsonl("react/hotpotqa_reflexion_react.jsonl")]
    answers = {
        r["question"]: r["answer"] for r in _jsonl("dspy_rag/hotpotqa_distractor_sample.jsonl")
    }
    solved = [(q, s) for q, s in traces if s and s[-1]["observation"] == "Answer is CORRECT"]
    shot_traces = solved[:2]
    shots = "\n".join(
        q + "\n" + "".join(_react_step_text(i + 1, step) for i, step in enumerate(steps))
        for q, steps in shot_traces
    )
    items = []
    for question, steps in traces:
        if (question, steps) in shot_traces or not steps[-1]["action"].startswith("Finish["):
            continue
        gold = answers.get(question.removeprefix("Question: ").strip())
        replay = steps[:-1][:5]  # cap the replay: observations are Wikipedia paragraphs
        params = {
            "shots": shots,
            "question": question,
            "steps": replay,
            "max_step_tokens": 16 if quick else 48,
        }
        items.append(Item(params, gold))
    return items[:num]


def _grade_react(item: Item, output: dict[str, Any]) -> bool:
    found = re.search(r"Finish\[(.*?)\]", str(output.get("final", "")))
    return (
        found is not None
        and item.reference is not None
        and (_normalize(found.group(1)) == _normalize(item.reference))
    )


def _normalize(text: str) -> str:
    """HotpotQA's exact-match normalisation: lowercase, no punctuation or articles."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


# ---------------------------------------------------------------- tree of thought (GSM-8K)


def _tot_items(num: int, quick: bool, count_tokens: CountTokens) -> list[Item]:
    rows = _jsonl("tree_of_thought/test.jsonl")[:num]
    return [
        Item(
            {"question": r["question"], "width": 2, "max_step_tokens": 8 if quick else 32},
            r["answer"].split("####")[-1].strip().replace(",", ""),
        )
        for r in rows
    ]


def _last_number(text: str) -> str | None:
    numbers = re.findall(r"-?[0-9][0-9,]*\.?[0-9]*", text)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else None


def _grade_tot(item: Item, output: dict[str, Any]) -> bool:
    votes = Counter(n for a in output.get("answers", []) if (n := _last_number(str(a))))
    return bool(votes) and votes.most_common(1)[0][0] == item.reference


# ---------------------------------------------------------------- JSON decode


def _json_items(num: int, quick: bool, count_tokens: CountTokens) -> list[Item]:
    num_chars = 1500 if quick else 4000  # the recipe's ~3,000 tokens, cut for this CPU
    rows = _jsonl("json_decode/questions.jsonl")[:num]
    return [Item({"document": _cut(r["document"], num_chars)}, r["city"]) for r in rows]


def _cut(text: str, num_chars: int) -> str:
    return text if len(text) <= num_chars else text[:num_chars].rsplit(" ", 1)[0] + "\n"


def _grade_json(item: Item, output: dict[str, Any]) -> bool:
    """The extracted `name` is the city (the page has no other answer key)."""
    name = str(output.get("name", "")).strip().rstrip(",").strip('"')
    return _normalize(name) == _normalize(item.reference)


# ---------------------------------------------------------------- multi-turn chat


def _chat_items(long: bool) -> Callable[[int, bool, CountTokens], list[Item]]:
    def make(num: int, quick: bool, count_tokens: CountTokens) -> list[Item]:
        rng = random.Random(42)  # the recipe's seed
        if long:  # the recipe's 256-512 answer tokens, cut for this CPU
            min_new, max_new = (8, 16) if quick else (32, 64)
        else:
            min_new, max_new = 4, 8
        min_prompt, max_prompt = (32, 64) if quick else (256, 512)
        alphabet = string.ascii_letters + string.digits
        items = []
        for _ in range(num):
            turns = []
            for _ in range(4):
                prompt_len = rng.randint(min_prompt, max_prompt)
                text = "".join(rng.choices(alphabet, k=prompt_len))
                while count_tokens(text) < prompt_len:
                    text += "".join(rng.choices(alphabet, k=8))
                turns.append({"prompt": text, "new_tokens": rng.randint(min_new, max_new)})
            items.append(Item({"turns": turns}))
        return items

    return make


# ---------------------------------------------------------------- DSPy-style RAG


def _rag_items(num: int, quick: bool, count_tokens: CountTokens) -> list[Item]:
    rows = _jsonl("dspy_rag/hotpotqa_distractor_sample.jsonl")
    train, dev = rows[:20], rows[20:]
    demos = [{"question": r["question"], "answer": r["answer"]} for r in train[:8]]
    items = []
    for r in dev[:num]:
        context = r["context"]
        passages = [
            f"{title} | {''.join(sentences)}"
            for title, sentences in zip(context["title"], context["sentences"], strict=True)
        ]
        params = {
            "question": r["question"],
            "passages": passages,
            "demos": demos,
            "max_reasoning_tokens": 16 if quick else 48,
        }
        items.append(Item(params, r["answer"]))
    return items


def _grade_rag(item: Item, output: dict[str, Any]) -> bool:
    return _normalize(str(output.get("answer", ""))) == _normalize(item.reference)


# ---------------------------------------------------------------- skeleton-of-thought tips


def _tips_items(num: int, quick: bool, count_tokens: CountTokens) -> list[Item]:
    return [
        Item(
            {
                "topic": topic,
                "num_tips": 3,
                "max_tip_tokens": 16,
                "max_paragraph_tokens": 16 if quick else 48,
            }
        )
        for topic in TIP_TOPICS[:num]
    ]


def _sizes(quick: int, default: int, paper: int) -> dict[str, int]:
    return dict(zip(SIZES, (quick, default, paper), strict=True))


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("mmlu", "mmlu.sgl", _mmlu_items, _sizes(4, 40, 300), _grade_mmlu),
        Workload(
            "hellaswag", "hellaswag.sgl", _hellaswag_items, _sizes(2, 20, 200), _grade_hellaswag
        ),
        Workload("react", "react.sgl", _react_items, _sizes(2, 4, 60), _grade_react),
        Workload(
            "tree_of_thought", "tree_of_thought.sgl", _tot_items, _sizes(1, 3, 32), _grade_tot
        ),
        Workload("json_decode", "json_decode.sgl", _json_items, _sizes(2, 6, 23), _grade_json),
        Workload("chat_short", "multi_turn_chat.sgl", _chat_items(False), _sizes(2, 8, 20)),
        Workload("chat_long", "multi_turn_chat.sgl", _chat_items(True), _sizes(1, 4, 20)),
        Workload("rag", "rag.sgl", _rag_items, _sizes(2, 8, 40), _grade_rag),
        Workload("tips", "tips.sgl", _tips_items, _sizes(2, 6, 12)),
    )
}
LEFT_OUT = {"llava": "needs a vision-language model; none ships offline (SOURCES.md, Gaps)"}
