"""The `local` backend: programs run on our own runtime (`sgl_lang.runtime`) in this process.

`local` is the embedded SmolLM2, `local:PATH` a Hugging Face model folder or a `.gguf` file.
One engine is loaded per model per process, on first use, and shared by every backend on that
model (`sgl run --batch` and the REPL create backends repeatedly); it is closed at exit.

Prompts become one text, then token ids:

- free `Text` is sent as is (completion style);
- runs of `Message`s go through the tokenizer's chat template (or `Prompt.plain_text()` when
  the model has none). Text between messages is placed between their renderings: each run is
  what the template adds for it over the messages before it. The template is followed exactly,
  so SmolLM2's injects its default system prompt ("You are a helpful AI assistant named
  SmolLM, ...") when the program has no system message: that is what the model was trained on;
- an open message (`Prompt.open_role`) is rendered closed and cut right after its content, so
  generation continues it (for an empty assistant message this is the generation prompt).

Token healing (`heal=True`): when the prompt ends in the program's own text, its last token is
backed up and the first generated token must start with that token's text (so "The answer is "
lets the model write " 42" as one token instead of "42" after a lone space); the backed-up text
is removed from the output again. With a constraint, the grammar itself is prefixed with that
text (`ConstraintSpec.with_prefix`): the output re-produces it, then matches. The token that
re-produces it is not counted against `max_tokens` (else `max_tokens=1` would only regenerate
the prompt's last token). It is skipped when a stop string could match across the boundary, and
for special tokens.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sgl_lang.bridge.options import EngineOptions
from sgl_lang.protocol import (
    SELECT_METHODS,
    Backend,
    BackendError,
    CachedSplit,
    Capabilities,
    Choices,
    Constraint,
    GenRequest,
    GenResult,
    Image,
    JsonSchema,
    Message,
    Prompt,
    Regex,
    Text,
    choice_scores,
)

if TYPE_CHECKING:
    import torch

    from sgl_lang.runtime.engine import Engine
    from sgl_lang.runtime.request import Chunk
    from sgl_lang.runtime.sampling import LogitsMask, SamplingParams
    from sgl_lang.runtime.stats import EngineStats

ENFORCED_CONSTRAINTS = frozenset({"regex", "json", "choices"})  # runtime/constrained.py
MAX_HEALING_MASKS = 256  # cached first-token masks per engine (49 KB each for SmolLM2)
NUM_CONTEXT_TOKENS = 4  # prompt tokens decoded before the healed one, as the detokenizer does
OPEN_MARK = "\x00sgl-open-message\x00"  # stands for "the open message continues here"


def create(
    target: str, *, engine_options: EngineOptions | None = None, model: Path | None = None
) -> LocalBackend:
    """`local` (target "": `model`, else the embedded SmolLM2) or `local:PATH` (a HF folder
    or a .gguf), its engine built with `engine_options`."""
    if not target:
        return LocalBackend(model, engine_options)
    path = Path(target).expanduser()
    if not path.exists():
        raise BackendError(f"local model not found: {target}")
    return LocalBackend(path, engine_options)


class LocalBackend(Backend):
    """Generation, scoring and prefix caching on the in-process runtime `Engine`.

    Creating one is cheap (nothing is imported or loaded); the first call loads the model's
    shared engine in a worker thread. `close()` only retires this backend: the engine stays
    loaded for the next backend on the same model and is closed at interpreter exit (or by
    `close_engines()`).
    """

    def __init__(
        self, model_path: Path | None = None, options: EngineOptions | None = None
    ) -> None:
        self.name = "local" if model_path is None else f"local:{model_path}"
        self.capabilities = Capabilities(
            ENFORCED_CONSTRAINTS, frozenset(SELECT_METHODS), images=False
        )
        self.model_path = model_path
        self.options = options or EngineOptions()
        self._path_key = None if model_path is None else str(model_path.resolve())
        self._closed = False

    def stats(self) -> EngineStats | None:
        """The shared engine's counters since it started (None before it is loaded)."""
        shared = _ENGINES.get((self._path_key, self.options))
        return shared.engine.stats() if shared is not None else None

    def split_cached(self, prompt: Prompt, num_cached_tokens: int) -> CachedSplit | None:
        """The prompt as the model reads it, split after its first `num_cached_tokens`
        tokens (None before the engine is loaded)."""
        shared = _ENGINES.get((self._path_key, self.options))
        if shared is None:
            return None
        engine = shared.engine
        try:
            ids = encode(engine, render_prompt(engine.tokenizer, prompt))
        except BackendError:
            return None
        flags = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
        cached = engine.tokenizer.decode(ids[:num_cached_tokens], **flags)
        return CachedSplit(cached, engine.tokenizer.decode(ids[num_cached_tokens:], **flags))

    async def warm_up(self) -> None:
        """Load the shared engine now."""
        await self._shared()

    async def engine(self) -> Engine:
        """The shared engine of this backend's model, loaded on first use."""
        return (await self._shared()).engine

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        shared = await self._shared()
        engine = shared.engine
        rendered = render_prompt(engine.tokenizer, request.prompt)
        prompt_ids = encode(engine, rendered)
        heal = _healing(shared, request, rendered, prompt_ids)
        if heal is not None:
            prompt_ids = prompt_ids[:-1]
        params = sampling_params(
            request,
            heal.mask if heal is not None else None,
            heal_prefix=heal.text if heal is not None else "",
        )
        healed_text = heal.text if heal is not None else ""
        pieces: list[str] = []
        meta = None
        async with contextlib.aclosing(_chunks(engine, prompt_ids, params)) as chunks:
            async for chunk in chunks:
                meta = chunk.meta
                piece = chunk.text
                if healed_text:  # remove the backed-up prompt text from the output's start
                    held = "".join(pieces) + piece
                    if len(held) < len(healed_text) and healed_text.startswith(held):
                        pieces.append(piece)
                        continue
                    pieces.clear()
                    piece = held.removeprefix(healed_text)
                    healed_text = ""
                if piece:
                    pieces.append(piece)
                    if on_chunk is not None:
                        on_chunk(piece)
        if healed_text:  # the output never got past the backed-up text
            pieces.clear()
        if meta is None:
            raise BackendError("the local engine ended a request without a result")
        reason = meta.finish_reason.value
        if reason == "stop":
            last_id = meta.output_ids[-1] if meta.output_ids else None
            is_eos = last_id in engine.model_config.eos_token_ids and not request.ignore_eos
            reason = "eos" if is_eos else "stop"
        elif reason != "length":
            raise BackendError(f"the local engine ended the request ({reason})")
        return GenResult(
            "".join(pieces),
            reason,
            meta.prompt_tokens,
            meta.completion_tokens - (heal is not None and meta.completion_tokens > 0),
            meta.cached_tokens,
        )

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        engine = (await self._shared()).engine
        rendered = render_prompt(engine.tokenizer, prompt)
        if rendered.ends_with_content:  # "Answer: " + "yes" scores as "Answer:" + " yes"
            text = rendered.text.rstrip(" ")
            space = rendered.text[len(text) :]
            rendered, choices = rendered._replace(text=text), [space + c for c in choices]
        prefix_ids = engine.tokenizer.encode(rendered.text, add_special_tokens=not rendered.is_chat)
        from sgl_lang.runtime.request import RequestError

        unconditional = method == "unconditional"
        try:
            scored = await engine.score(prefix_ids, list(choices), unconditional=unconditional)
            return choice_scores(
                method,
                [s.token_logprobs for s in scored],
                [s.unconditional_logprobs or () for s in scored] if unconditional else None,
            )
        except RequestError as exc:
            raise BackendError(f"local model: {exc.meta.error}") from None
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"local model: {exc}") from None

    async def cache_prefix(self, prompt: Prompt) -> None:
        """Compute the prompt's KV now; a hint only, so a prompt that cannot run is left for
        the request that follows to report."""
        engine = (await self._shared()).engine
        from sgl_lang.runtime.request import RequestError

        with contextlib.suppress(BackendError, RequestError):
            rendered = render_prompt(engine.tokenizer, prompt)
            if rendered.text:
                await engine.cache_prefix(encode(engine, rendered))

    async def close(self) -> None:
        self._closed = True

    async def _shared(self) -> _SharedEngine:
        if self._closed:
            raise BackendError(f"the `{self.name}` backend is closed")
        shared = _ENGINES.get((self._path_key, self.options))
        if shared is None:
            shared = await asyncio.to_thread(
                shared_engine, self.model_path, self._path_key, self.options
            )
        return shared


# ---------------------------------------------------------------- one engine per model


class _SharedEngine:
    """An engine and what the backend derives from its tokenizer once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._token_pieces: list[str] | None = None
        self._healing_masks: dict[tuple[int, bool], torch.Tensor] = {}

    def healing_mask(self, token_id: int, allow_eos: bool) -> torch.Tensor:
        """Bool [vocab]: the tokens whose vocabulary string starts with `token_id`'s (the raw
        strings compare bytes: a leading space is `Ġ` or `▁`), plus EOS if `allow_eos`."""
        key = (token_id, allow_eos)
        if (mask := self._healing_masks.get(key)) is None:
            import torch

            config, tokenizer = self.engine.model_config, self.engine.tokenizer
            if self._token_pieces is None:
                self._token_pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            piece = self._token_pieces[token_id]
            mask = torch.zeros(config.vocab_size, dtype=torch.bool)
            starts = [token.startswith(piece) for token in self._token_pieces]
            mask[: len(starts)] = torch.tensor(starts[: config.vocab_size])
            if allow_eos:
                mask[list(config.eos_token_ids)] = True
            if len(self._healing_masks) >= MAX_HEALING_MASKS:
                self._healing_masks.clear()
            self._healing_masks[key] = mask
        return mask


EngineKey = tuple[str | None, EngineOptions]  # resolved model path (None: embedded), options
_ENGINES: dict[EngineKey, _SharedEngine] = {}
_ENGINES_LOCK = threading.Lock()


def shared_engine(
    model_path: Path | None, path_key: str | None, options: EngineOptions | None = None
) -> _SharedEngine:
    """The engine of `model_path` (resolved: `path_key`) with `options`, loading it if no
    backend has yet (blocking)."""
    options = options or EngineOptions()
    key = (path_key, options)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            from sgl_lang.runtime.config import EngineConfig
            from sgl_lang.runtime.engine import Engine

            try:
                config = EngineConfig(**options.engine_fields())
                engine = Engine.from_model(model_path, config)
            except (OSError, RuntimeError, ValueError) as exc:
                where = "the embedded model" if model_path is None else f"`{model_path}`"
                raise BackendError(f"cannot load {where}: {exc}") from None
            if not _ENGINES:
                atexit.register(close_engines)
            _ENGINES[key] = _SharedEngine(engine)
        return _ENGINES[key]


def close_engines() -> None:
    """Close every shared engine (at exit; a later call loads the model again)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for shared in engines:
        shared.engine.close()


async def _chunks(
    engine: Engine, prompt_ids: list[int], params: SamplingParams
) -> AsyncGenerator[Chunk, None]:
    """The engine's chunks, with its failures turned into `BackendError`s."""
    from sgl_lang.runtime.request import RequestError

    try:
        async with contextlib.aclosing(engine.generate(prompt_ids, params)) as chunks:
            async for chunk in chunks:
                yield chunk
    except RequestError as exc:
        raise BackendError(f"local model: {exc.meta.error}") from None
    except ValueError as exc:  # parameters the engine refuses
        raise BackendError(f"local model: {exc}") from None
    except RuntimeError as exc:  # the engine is closed or stopped after an internal error
        raise BackendError(f"local engine: {exc}") from None


# ---------------------------------------------------------------- prompts


class Rendered(NamedTuple):
    """A prompt as the model reads it. `ends_with_content`: it ends in the program's own text
    (free text, or an open message's content), not in template markup."""

    text: str
    is_chat: bool
    ends_with_content: bool


def render_prompt(tokenizer: Any, prompt: Prompt) -> Rendered:
    """The prompt's text for `tokenizer`'s model (see the module docstring)."""
    segments = list(prompt.segments)
    if any(isinstance(segment, Image) for segment in segments):
        raise BackendError("the local model cannot see images")
    open_message: Message | None = None
    if prompt.open_role is not None:
        last = segments[-1] if segments else None
        if isinstance(last, Message) and last.role == prompt.open_role:
            open_message = last
            segments.pop()
        else:
            open_message = Message(prompt.open_role, "")
    if open_message is not None:
        ends_with_content = bool(open_message.content)
    else:
        last = segments[-1] if segments else None
        ends_with_content = isinstance(last, Text) and bool(last.text)
    is_chat = open_message is not None or prompt.is_chat
    if not is_chat:
        text = "".join(s.text for s in segments if isinstance(s, Text))
        return Rendered(text, False, ends_with_content)
    if getattr(tokenizer, "chat_template", None) is None:
        return Rendered(prompt.plain_text(), True, ends_with_content)

    parts: list[str] = []
    messages: list[dict[str, str]] = []
    num_rendered, rendered = 0, ""  # the template's rendering of messages[:num_rendered]
    for segment in segments:
        if isinstance(segment, Message):
            messages.append({"role": segment.role, "content": segment.content})
        elif isinstance(segment, Text):
            if len(messages) > num_rendered:
                full = _apply_template(tokenizer, messages)
                parts.append(_after(full, rendered))
                num_rendered, rendered = len(messages), full
            parts.append(segment.text)
    if open_message is not None:
        content = open_message.content + OPEN_MARK
        full = _apply_template(
            tokenizer, [*messages, {"role": open_message.role, "content": content}]
        )
        if OPEN_MARK not in full:
            raise BackendError("the local model's chat template drops message content")
        parts.append(_after(full[: full.rindex(OPEN_MARK)], rendered))
    elif len(messages) > num_rendered:
        parts.append(_after(_apply_template(tokenizer, messages), rendered))
    return Rendered("".join(parts), True, ends_with_content)


def _apply_template(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    except Exception as exc:  # jinja's TemplateError, or a template's raise_exception()
        raise BackendError(f"the local model's chat template failed: {exc}") from None


def _after(full: str, rendered: str) -> str:
    """What `full` adds after `rendered` (the rendering of fewer messages)."""
    if not full.startswith(rendered):
        raise BackendError(
            "the local model's chat template renders earlier messages differently when more "
            "follow, so text cannot be placed between messages"
        )
    return full[len(rendered) :]


def encode(engine: Engine, rendered: Rendered) -> list[int]:
    """Token ids of a rendered prompt (a chat template writes its own special tokens); an
    empty prompt is the BOS token, or EOS for models without one."""
    tokenizer = engine.tokenizer
    ids: list[int] = tokenizer.encode(rendered.text, add_special_tokens=not rendered.is_chat)
    if not ids:
        bos = tokenizer.bos_token_id
        ids = [tokenizer.eos_token_id if bos is None else bos]
    return ids


# ---------------------------------------------------------------- sampling


def sampling_params(
    request: GenRequest, logits_mask: LogitsMask | None, heal_prefix: str = ""
) -> SamplingParams:
    """The runtime's SamplingParams for a request; invalid values are backend errors. With
    `heal_prefix` (the text token healing backed up) the constraint is prefixed with it, and
    the token that regenerates it does not count against `max_tokens`."""
    from sgl_lang.runtime.sampling import SamplingParams

    try:
        return SamplingParams(
            max_new_tokens=request.max_tokens + (1 if heal_prefix else 0),
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            frequency_penalty=request.frequency_penalty,
            presence_penalty=request.presence_penalty,
            seed=request.seed,
            stop=tuple(stop for stop in request.stop if stop),
            ignore_eos=request.ignore_eos,
            logits_mask=logits_mask,
            **_constraint_fields(request.constraint, heal_prefix),
        )
    except ValueError as exc:
        raise BackendError(f"local model: {exc}") from None


def _constraint_fields(constraint: Constraint | None, prefix: str = "") -> dict[str, Any]:
    """The SamplingParams fields that make the runtime enforce `constraint` token by token."""
    from sgl_lang.runtime.constrained import ConstraintSpec

    if isinstance(constraint, Regex):
        spec = ConstraintSpec.regex(constraint.pattern)
    elif isinstance(constraint, JsonSchema):
        spec = ConstraintSpec.json(constraint.schema)
    elif isinstance(constraint, Choices):
        spec = ConstraintSpec.choices(constraint.options)
    else:
        return {}
    return {"constraint": spec.with_prefix(prefix)}


class _Heal(NamedTuple):
    text: str  # the backed-up last prompt token's text; the output starts with it
    mask: LogitsMask | None  # at the first step, only tokens starting with that token (None:
    # constrained, the grammar is prefixed with `text` instead)


def _healing(
    shared: _SharedEngine, request: GenRequest, rendered: Rendered, prompt_ids: list[int]
) -> _Heal | None:
    """Token healing for this request, or None when it does not apply."""
    if not (request.heal and rendered.ends_with_content):
        return None
    tokenizer = shared.engine.tokenizer
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
        return _Heal(text, None)
    allowed = shared.healing_mask(last_id, allow_eos=not request.ignore_eos)

    def first_token_only(output_ids: Sequence[int]) -> torch.Tensor | None:
        return None if output_ids else allowed

    return _Heal(text, first_token_only)


def _straddles(text: str, stop: str) -> bool:
    """Whether `stop` could match starting inside `text` (the healed text) when more follows."""
    return any(stop.startswith(text[i:]) or text[i:].startswith(stop) for i in range(len(text)))
