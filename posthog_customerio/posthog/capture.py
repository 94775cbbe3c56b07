"""PostHog's capture API client: ``POST {posthog_capture_url}/batch/`` of ready events.

Its own package beside ``customerio/``: each remote service the connector sends to has one
client that owns its transport (auth, timeouts, pooling) and translates failures once. It
answers in ``TrackResponse``'s shape (``endpoint="capture"``) so ``delivery.outcome.classify``
reads PostHog's answers the way it reads Customer.io's: 2xx delivered, 429/5xx/network retried
(``Retry-After`` honoured), other 4xx rejected. The project API key travels in the body, as
PostHog's capture API wants it, and never in anything this module returns.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx
import orjson

from posthog_customerio.customerio.client import USER_AGENT, TrackResponse

CAPTURE_PATH = "/batch/"


class CaptureClient:
    """Async client over one pooled ``httpx.AsyncClient``; close it with ``aclose``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_secs: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._prefix = b'{"api_key":' + _json_string(api_key) + b',"batch":['
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
            timeout=httpx.Timeout(timeout_secs),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
            follow_redirects=False,
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        return self._base_url

    def __repr__(self) -> str:
        return f"CaptureClient(base_url={self._base_url!r})"

    def body(self, events: Sequence[bytes]) -> bytes:
        """``{"api_key": ..., "batch": [...]}`` spliced from the stored event bodies."""
        return self._prefix + b",".join(events) + b"]}"

    def redacted_request(self, events: Sequence[bytes]) -> str:
        """The request as a dead letter shows it: the API key replaced."""
        shown = b'{"api_key":"[redacted]","batch":[' + b",".join(events) + b"]}"
        return (
            f"POST {self._base_url}{CAPTURE_PATH}\nContent-Type: application/json\n\n"
            + shown.decode("utf-8", errors="replace")
        )

    async def post_batch(self, events: Sequence[bytes]) -> TrackResponse:
        started = time.perf_counter()
        try:
            response = await self._http.post(CAPTURE_PATH, content=self.body(events))
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.ConnectError:
            error = "connect"
        except httpx.HTTPError as exc:
            error = f"network: {type(exc).__name__}"
        else:
            return TrackResponse(
                endpoint="capture",
                status=response.status_code,
                body=response.content,
                retry_after_header=response.headers.get("Retry-After"),
                error=None,
                elapsed_secs=time.perf_counter() - started,
            )
        return TrackResponse(
            endpoint="capture",
            status=None,
            body=b"",
            retry_after_header=None,
            error=error,
            elapsed_secs=time.perf_counter() - started,
        )

    async def aclose(self) -> None:
        await self._http.aclose()


def _json_string(text: str) -> bytes:
    return orjson.dumps(text)
