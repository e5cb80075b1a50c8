"""The bounds of every numeric field the server reads (in its OpenAPI schema too), and the
checks that need the model: `max_new_tokens` within its context, token ids in its vocabulary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import HTTPException
from pydantic import Field

INT32_MAX = 2**31 - 1
SEED_MAX = 2**63 - 1  # torch's generator seeds are 64-bit

# max_new_tokens >= 1 is the runtime's check (its message names the field); the upper bound
# here only keeps the value a machine integer: the route bounds it by the model's context.
MaxTokens = Annotated[int, Field(le=INT32_MAX)]
Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
TopK = Annotated[int, Field(ge=-1, le=INT32_MAX)]
MinP = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
Choices = Annotated[list[str], Field(min_length=1)]
TopLogprobsNum = Annotated[int, Field(ge=0, le=20)]  # the runtime's bound
LogprobStart = Annotated[int, Field(ge=-1, le=INT32_MAX)]  # -1: SGLang's "the last prompt token"


def check_max_tokens(name: str, value: int, context_len: int) -> None:
    """400 unless `value` tokens could ever be generated within the model's context."""
    if value > context_len:
        raise HTTPException(400, f"`{name}` must be <= {context_len} (the model's context)")


def check_ids(ids: Sequence[int], vocab_size: int) -> None:
    """400 unless every token id is in the model's vocabulary."""
    if (bad := next((i for i in ids if i >= vocab_size), None)) is not None:
        raise HTTPException(400, f"token id {bad} is not in the vocabulary (0 to {vocab_size - 1})")
