"""One gateway's HTTP connection: authentication, JSON errors as ``APIError``, and retries.

    connection = Connection("http://127.0.0.1:8888", "KEY")
    response = await connection.request("GET", "/api/v1/sandboxes")
    async with connection.stream("POST", path, json=body, headers=NDJSON_ACCEPT) as response:
        async for line in response.aiter_lines(): ...

A request refused with 429 or 503, or one that could not connect, is sent again after
``Retry-After`` (or an exponential backoff) up to ``RetryPolicy.attempts`` times in all. Both
mean the gateway did nothing with it, so this is safe for every method. A streamed upload body
is made anew for each attempt by the ``content`` factory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
import httpx

from code_gateway_client import __version__
from code_gateway_client.errors import APIError, ConnectionLost, api_error
from code_gateway_client.retry import RetryPolicy, parse_retry_after

DEFAULT_URL = "http://127.0.0.1:8888"
NDJSON_ACCEPT = {"Accept": "application/x-ndjson"}
#: Errors that mean the request never reached the gateway: safe to send again.
NOT_SENT: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

Sleep = Callable[[float], Awaitable[None]]
ContentFactory = Callable[[], Any]


def resolve(url: str | None, api_key: str | None) -> tuple[str, str]:
    """The URL and key to use: the arguments, else ``CODE_GATEWAY_URL`` / ``CODE_GATEWAY_API_KEY``."""
    return ((url or os.environ.get("CODE_GATEWAY_URL") or DEFAULT_URL).rstrip("/"),
            api_key if api_key is not None else os.environ.get("CODE_GATEWAY_API_KEY", ""))


class Connection:
    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 stream_timeout: float = 120.0, retry: RetryPolicy | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, sleep: Sleep | None = None) -> None:
        self.url, self.api_key = resolve(url, api_key)
        self.retry = retry or RetryPolicy()
        #: A stream read waits this long for the next line (the gateway sends keepalives meanwhile).
        self.stream_timeout = stream_timeout
        self.sleep: Sleep = sleep or anyio.sleep
        headers = {"User-Agent": f"code-gateway-client/{__version__}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def request(self, method: str, path: str, *, content: ContentFactory | None = None,
                      **kwargs: Any) -> httpx.Response:
        """Send a request (again on 429/503 or a failed connect); an error status raises ``APIError``."""
        async with self.stream(method, path, content=content, **kwargs) as response:
            await response.aread()
            return response

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, *, content: ContentFactory | None = None,
                     headers: Mapping[str, str] | None = None, timeout: Any = httpx.USE_CLIENT_DEFAULT,
                     **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """Open a response whose body is read as it comes; its status is checked first."""
        attempt = 0
        while True:
            attempt += 1
            request = self.client.build_request(method, path, headers=headers, timeout=timeout,
                                                content=content() if content is not None else None, **kwargs)
            try:
                response = await self.client.send(request, stream=True)
            except NOT_SENT as exc:
                if attempt >= self.retry.attempts:
                    raise ConnectionLost(f"cannot reach the gateway at {self.url}: {exc}") from exc
                await self.sleep(self.retry.delay(attempt))
                continue
            try:
                if response.status_code in self.retry.statuses and attempt < self.retry.attempts:
                    await response.aclose()
                    await self.sleep(self.retry.delay(attempt, response.headers.get("Retry-After")))
                    continue
                if response.is_error:
                    raise await error_of(response)
                yield response
                return
            finally:
                await response.aclose()

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.request(method, path, **kwargs)
        return response.json() if response.content else None


async def error_of(response: httpx.Response) -> APIError:
    await response.aread()
    try:
        body = response.json()
    except ValueError:
        body = None
    return api_error(response.status_code, body, retry_after=parse_retry_after(response.headers.get("Retry-After")))
