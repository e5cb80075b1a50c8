"""The `http://` backend's `/generate` requests as a fake `sgl serve` receives them (the
backend against the real server: tests/server/test_http_backend.py)."""

from __future__ import annotations

import base64
from pathlib import Path

from fake_http import PNG, FakeAPI, run_image_program, sse_reply

from sgl_lang.backends.http import HttpBackend


def test_an_image_in_a_user_block_is_an_image_part(tmp_path: Path) -> None:
    meta = {"prompt_tokens": 9, "completion_tokens": 2, "finish_reason": {"type": "stop"}}
    with FakeAPI(sse_reply([(None, {"text": "A cat", "meta_info": meta})])) as fake:
        state = run_image_program(HttpBackend(fake.url), tmp_path)
    assert state.variables["answer"] == "A cat"
    [request] = fake.requests
    assert request.path == "/generate"
    [user, answer] = request.body["prompt"]["segments"]
    assert user["role"] == "user"
    assert user["content"] == [
        {"type": "text", "text": "What is in this picture? "},
        {"type": "image", "data": base64.b64encode(PNG).decode()},
    ]
    assert answer == {"type": "message", "role": "assistant", "content": ""}
