"""TrackClient over httpx.MockTransport: auth, headers, error translation, no leaked key."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable

import httpx
import pytest

from posthog_customerio import __version__
from posthog_customerio.customerio.client import TrackClient, TrackResponse

SITE_ID = "site-123"
API_KEY = "sekrit-api-key-0123456789"
BASE = "https://track.example.test"

Handler = Callable[[httpx.Request], httpx.Response]


def call(handler: Handler, method: str, body: bytes = b"{}") -> tuple[TrackResponse, str]:
    async def go() -> tuple[TrackResponse, str]:
        client = TrackClient(
            BASE + "/", SITE_ID, API_KEY, timeout_secs=5, transport=httpx.MockTransport(handler)
        )
        try:
            if method == "batch":
                result = await client.post_batch(body)
            elif method == "anonymous":
                result = await client.post_anonymous_event(body)
            else:
                result = await client.get_region()
            return result, repr(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_batch_request_shape() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    result, _ = call(handler, "batch", b'{"batch":[]}')
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/api/v2/batch"
    expected = base64.b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"posthog-customerio/{__version__}"
    assert request.content == b'{"batch":[]}'
    assert result.endpoint == "batch"
    assert (result.status, result.body, result.error) == (200, b"{}", None)
    assert result.elapsed_secs >= 0


@pytest.mark.parametrize(
    ("method", "verb", "path"),
    [
        pytest.param("anonymous", "POST", "/api/v1/events", id="anonymous"),
        pytest.param("region", "GET", "/api/v1/accounts/region", id="region"),
    ],
)
def test_other_endpoints(method: str, verb: str, path: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"region": "us"})

    result, _ = call(handler, method)
    assert (seen[0].method, seen[0].url.path) == (verb, path)
    assert result.endpoint == method


def test_http_errors_are_returned_not_raised() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "12"}, content=b"slow down")

    result, _ = call(handler, "batch")
    assert (result.status, result.body, result.retry_after_header) == (429, b"slow down", "12")
    assert result.error is None


def test_redirects_are_not_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(301, headers={"Location": "https://track-eu.customer.io/x"})

    result, _ = call(handler, "batch")
    assert result.status == 301


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        pytest.param(httpx.ConnectTimeout(f"timed out {API_KEY}"), "timeout", id="connect-timeout"),
        pytest.param(httpx.ReadTimeout("read"), "timeout", id="read-timeout"),
        pytest.param(httpx.PoolTimeout("pool"), "timeout", id="pool-timeout"),
        pytest.param(httpx.ConnectError(f"refused {API_KEY}"), "connect", id="connect"),
        pytest.param(httpx.ReadError(f"reset {API_KEY}"), "network: ReadError", id="read"),
        pytest.param(
            httpx.RemoteProtocolError("bad"), "network: RemoteProtocolError", id="protocol"
        ),
    ],
)
def test_network_errors_are_translated_once(exc: Exception, error: str) -> None:
    result, _ = call(raising(exc), "batch")
    assert (result.status, result.body, result.retry_after_header) == (None, b"", None)
    assert result.error == error
    assert API_KEY not in repr(result)


def test_api_key_never_appears_in_repr_or_redacted_request() -> None:
    async def go() -> None:
        client = TrackClient(BASE, SITE_ID, API_KEY, timeout_secs=1)
        try:
            assert API_KEY not in repr(client)
            assert API_KEY not in str(client)
            text = client.redacted_request("POST", "/api/v2/batch", b'{"batch":[{"x":1}]}')
            assert API_KEY not in text
            assert base64.b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode() not in text
            assert text.startswith(f"POST {BASE}/api/v2/batch\n")
            assert "Authorization: Basic [redacted]" in text
            assert text.endswith('{"batch":[{"x":1}]}')
        finally:
            await client.aclose()

    asyncio.run(go())


def test_redacted_request_survives_non_utf8_bodies() -> None:
    async def go() -> str:
        client = TrackClient(BASE, SITE_ID, API_KEY, timeout_secs=1)
        try:
            return client.redacted_request("POST", "/api/v1/events", b"\xff\xfe")
        finally:
            await client.aclose()

    assert asyncio.run(go()).endswith("\ufffd\ufffd")
