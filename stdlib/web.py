"""The `web` module: `get(url)` fetches a page's text over HTTP(S); needs `--allow-net`."""

from __future__ import annotations

from typing import Any

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.stdlib.permissions import require
from sgl_lang.values import type_name


async def get(url: str, timeout: float = 30) -> str:
    """get(url, timeout=30) -> str: the body of `url` as text, following redirects. Needs --allow-net.

    A non-2xx status, a timeout (in seconds) or a network failure is a value error. With a
    scoped grant (`--allow-net=HOST`) the URL and every redirect must stay on granted hosts.
    """
    require("net")
    if not isinstance(url, str):
        raise SglTypeError(f"web.get() url must be a str, not `{type_name(url)}`")
    require("net", url)
    if not url.startswith(("http://", "https://")):
        raise SglValueError(f"web.get() needs an http:// or https:// URL, got {url!r}")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise SglTypeError(
            f"web.get() timeout must be a positive number of seconds, not {timeout!r}"
        )
    import httpx  # lazily: `sgl check` and programs without `import web` never pay for it

    try:
        async with httpx.AsyncClient(
            follow_redirects=True, timeout=timeout, event_hooks={"request": [_check_host]}
        ) as client:
            response = await client.get(url)
    except httpx.TimeoutException:
        raise SglValueError(f"web.get(): {url} did not answer within {timeout} s") from None
    except httpx.HTTPError as exc:
        raise SglValueError(f"web.get(): cannot fetch {url}: {_reason(exc)}") from None
    if not response.is_success:
        raise SglValueError(
            f"web.get(): {url} answered HTTP {response.status_code} {response.reason_phrase}"
        )
    return response.text


async def _check_host(request: Any) -> None:
    """Each request of a fetch, redirects included, goes only to a granted host."""
    require("net", str(request.url))


def _reason(exc: Any) -> str:
    return str(exc) or type(exc).__name__


EXPORTS = {"get": get}
