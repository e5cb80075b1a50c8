"""Token healing (`GenRequest.heal`): the prompt's last token is backed up and regenerated.

When the prompt ends in the program's own text, its last token is backed up and the first
generated token must start with that token's text (so "The answer is " lets the model write
" 42" as one token instead of "42" after a lone space); the backed-up text is removed from the
output again. With a constraint, the grammar itself is prefixed with that text
(`ConstraintSpec.with_prefix`): the output re-produces it, then matches. The token that
re-produces it is not counted against `max_tokens` (else `max_tokens=1` would only regenerate
the prompt's last token). It is skipped when a stop string could match across the boundary, and
for special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from sgl_lang.bridge.render import Rendered
from sgl_lang.protocol import GenRequest

if TYPE_CHECKING:
    import torch

    from sgl_lang.runtime.sampling import LogitsMask

MAX_HEALING_MASKS = 256  # cached first-token masks per engine (49 KB each for SmolLM2)
NUM_CONTEXT_TOKENS = 4  # prompt tokens decoded before the healed one, as the detokenizer does


class Heal(NamedTuple):
    """How one request is healed."""

    text: str  # the backed-up last prompt token's text; the output starts with it
    mask: LogitsMask | None  # at the first step, only tokens starting with that token (None:
    # constrained, the grammar is prefixed with `text` instead)


class HealingMasks:
    """First-token masks of one model's vocabulary, built on demand and kept (a bounded
    number): the vocabulary's strings are read once."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        self.tokenizer, self.vocab_size, self.eos_token_ids = tokenizer, vocab_size, eos_token_ids
        self._token_pieces: list[str] | None = None
        self._masks: dict[tuple[int, bool], torch.Tensor] = {}

    def mask(self, token_id: int, allow_eos: bool) -> torch.Tensor:
        """Bool [vocab]: the tokens whose vocabulary string starts with `token_id`'s (the raw
        strings compare bytes: a leading space is `Ġ` or `▁`), plus EOS if `allow_eos`."""
        key = (token_id, allow_eos)
        if (mask := self._masks.get(key)) is None:
            import torch

            if self._token_pieces is None:
                vocab = list(range(len(self.tokenizer)))
                self._token_pieces = self.tokenizer.convert_ids_to_tokens(vocab)
            piece = self._token_pieces[token_id]
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            starts = [token.startswith(piece) for token in self._token_pieces]
            mask[: len(starts)] = torch.tensor(starts[: self.vocab_size])
            if allow_eos:
                mask[list(self.eos_token_ids)] = True
            if len(self._masks) >= MAX_HEALING_MASKS:
                self._masks.clear()
            self._masks[key] = mask
        return mask


def plan_healing(
    masks: HealingMasks, request: GenRequest, rendered: Rendered, prompt_ids: list[int]
) -> Heal | None:
    """Token healing for this request, or None when it does not apply."""
    if not (request.heal and rendered.ends_with_content):
        return None
    tokenizer = masks.tokenizer
    last_id = prompt_ids[-1]
    if len(prompt_ids) < 2 or last_id in tokenizer.all_special_ids:
        return None
    # decoded as the engine's detokenizer will decode it: after a few prompt tokens (so a
    # SentencePiece "▁is" reads " is")
    context_ids = prompt_ids[-1 - NUM_CONTEXT_TOKENS : -1]
    flags = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    context = tokenizer.decode(context_ids, **flags)
    with_last = tokenizer.decode([*context_ids, last_id], **flags)
    text = with_last[len(context) :]
    if (
        not with_last.startswith(context)
        or not text
        or "\ufffd" in text
        or any(_straddles(text, s) for s in request.stop if s)
    ):
        return None
    if request.constraint is not None:
        return Heal(text, None)
    allowed = masks.mask(last_id, allow_eos=not request.ignore_eos)

    def first_token_only(output_ids: Sequence[int]) -> torch.Tensor | None:
        return None if output_ids else allowed

    return Heal(text, first_token_only)


class Unhealed:
    """The output with the backed-up text removed from its start, piece by piece: call it on
    each piece as it comes; it returns what is output. Nothing is output while the pieces so
    far are a proper prefix of the backed-up text (an output that never gets past it is
    empty)."""

    def __init__(self, healed_text: str) -> None:
        self._healed_text = healed_text
        self._held = ""

    def __call__(self, piece: str) -> str:
        if not self._healed_text:
            return piece
        held = self._held + piece
        if len(held) < len(self._healed_text) and self._healed_text.startswith(held):
            self._held = held
            return ""
        output = held.removeprefix(self._healed_text)
        self._healed_text = self._held = ""
        return output


def _straddles(text: str, stop: str) -> bool:
    """Whether `stop` could match starting inside `text` (the healed text) when more follows."""
    return any(stop.startswith(text[i:]) or text[i:].startswith(stop) for i in range(len(text)))
