"""The Customer.io Track API client: auth, pooling and error translation, nothing else.

It owns transport policy (Basic auth, timeouts, keep-alive, no redirects) and never raises
for an HTTP status or a network failure: every httpx exception is translated once, here, into
a ``TrackResponse`` with ``status=None`` and a short ``error``. Deciding what an answer means
is ``delivery.outcome.classify``'s job, not this module's.

The API key only ever lives in the ``Authorization`` header httpx builds; nothing this module
returns (responses, errors, ``repr``, ``redacted_request``) contains it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import httpx

from posthog_customerio import __version__

# "capture" is PostHog's (posthog/capture.py), answered in the same shape.
TrackEndpoint = Literal["batch", "anonymous", "region", "capture"]

BATCH_PATH = "/api/v2/batch"
ANONYMOUS_PATH = "/api/v1/events"
REGION_PATH = "/api/v1/accounts/region"

USER_AGENT = f"posthog-customerio/{__version__}"


@dataclass(frozen=True, slots=True)
class TrackResponse:
    """One request's result: an HTTP answer (``status`` set) or a failure (``error`` set).

    ``error`` is ``"timeout"``, ``"connect"`` or ``"network: <ExceptionName>"``; it never
    carries the exception's message, which could echo request details.
    """

    endpoint: TrackEndpoint
    status: int | None
    body: bytes
    retry_after_header: str | None
    error: str | None
    elapsed_secs: float


class TrackClient:
    """Async Track API client over one pooled ``httpx.AsyncClient``; close it with ``aclose``.

    Redirects are not followed: an EU account on the US host is redirected, and following it
    would hide a wrong ``region`` (and send the data through the US). A 3xx comes back as is.
    """

    def __init__(
        self,
        base_url: str,
        site_id: str,
        api_key: str,
        *,
        timeout_secs: float,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._site_id = site_id
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            auth=httpx.BasicAuth(site_id, api_key),
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            timeout=httpx.Timeout(timeout_secs),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            follow_redirects=False,
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        return self._base_url

    def __repr__(self) -> str:
        return f"TrackClient(base_url={self._base_url!r}, site_id={self._site_id!r})"

    async def post_batch(self, body: bytes) -> TrackResponse:
        """``POST /api/v2/batch`` with a ready ``{"batch": [...]}`` body."""
        return await self._send("batch", "POST", BATCH_PATH, body)

    async def post_anonymous_event(self, body: bytes) -> TrackResponse:
        """``POST /api/v1/events``: one anonymous event (its body carries ``anonymous_id``)."""
        return await self._send("anonymous", "POST", ANONYMOUS_PATH, body)

    async def get_region(self) -> TrackResponse:
        """``GET /api/v1/accounts/region``: the side-effect-free credentials check."""
        return await self._send("region", "GET", REGION_PATH, None)

    def redacted_request(self, method: str, path: str, body: bytes) -> str:
        """The request as it would be shown in a dead letter: no credentials, body as text."""
        return (
            f"{method} {self._base_url}{path}\n"
            "Authorization: Basic [redacted]\n"
            "Content-Type: application/json\n"
            "\n" + body.decode("utf-8", errors="replace")
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(
        self, endpoint: TrackEndpoint, method: str, path: str, body: bytes | None
    ) -> TrackResponse:
        started = time.perf_counter()
        try:
            response = await self._http.request(method, path, content=body)
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.ConnectError:
            error = "connect"
        except httpx.HTTPError as exc:  # any other transport or protocol failure
            error = f"network: {type(exc).__name__}"
        else:
            return TrackResponse(
                endpoint=endpoint,
                status=response.status_code,
                body=response.content,
                retry_after_header=response.headers.get("Retry-After"),
                error=None,
                elapsed_secs=time.perf_counter() - started,
            )
        return TrackResponse(
            endpoint=endpoint,
            status=None,
            body=b"",
            retry_after_header=None,
            error=error,
            elapsed_secs=time.perf_counter() - started,
        )
