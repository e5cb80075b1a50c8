"""What the harness needs from a system under test: a backend the `.sgl` programs run on,
a cache reset between workloads, and token counts for the cache hit rate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, NamedTuple

from sgl_lang.bridge.render import render_prompt
from sgl_lang.protocol import Backend, Prompt


class TokenCounts(NamedTuple):
    """Prompt tokens sent and how many of them a prefix cache served (cumulative)."""

    num_prompt_tokens: int
    num_cached_tokens: int


class System(ABC):
    """One engine configuration. `start()` loads models or starts servers (not timed);
    `reset()` empties its prefix cache so that every workload starts cold."""

    name: str
    description: str
    parallel: int = 64  # programs in flight at once

    def start(self) -> None:  # noqa: B027 (optional hook)
        """Load the model or start the server."""

    @abstractmethod
    def backend(self) -> Backend:
        """The backend the programs run on (one per workload)."""

    def cannot_run(self, workload: str) -> str | None:
        """Why this system cannot run `workload` here, or None."""
        return None

    def reset(self) -> None:  # noqa: B027 (optional hook)
        """Empty the prefix cache."""

    def token_counts(self) -> TokenCounts | None:
        """Cumulative counts, or None to count what the backend reports per call."""
        return None

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the model or stop the server."""


class Unavailable(RuntimeError):
    """The system cannot run on this machine; the message says why."""


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """The token ids our local backend would send for `prompt` (same template, same ids)."""
    rendered = render_prompt(tokenizer, prompt)
    ids: list[int] = tokenizer.encode(rendered.text, add_special_tokens=not rendered.is_chat)
    return ids or [tokenizer.bos_token_id or tokenizer.eos_token_id]


def score_inputs(
    tokenizer: Any, prompt: Prompt, choices: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """Prefix ids and each choice's ids, split as the local backend splits them: a trailing
    space of the prompt moves into the choices ("Answer: " + "yes" = "Answer:" + " yes")."""
    rendered = render_prompt(tokenizer, prompt)
    text, choice_texts = rendered.text, list(choices)
    if rendered.ends_with_content:
        stripped = text.rstrip(" ")
        choice_texts = [text[len(stripped) :] + c for c in choices]
        text = stripped
    prefix = tokenizer.encode(text, add_special_tokens=not rendered.is_chat)
    return prefix, [tokenizer.encode(c, add_special_tokens=False) for c in choice_texts]


def normalized_scores(logprobs: Sequence[Sequence[float]]) -> list[float]:
    """Mean log-prob per choice (the `normalized` select method)."""
    return [sum(lps) / len(lps) for lps in logprobs]


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` before the first stop string, and whether one was found."""
    cuts = [i for s in stops if s and (i := text.find(s)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)
