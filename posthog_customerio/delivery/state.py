"""Delivery's live state, for ``/readyz``, the status page and ``status``.

Written only by the delivery worker (one event loop, so no locks), read by the web app. It
holds what the queue cannot tell: whether Customer.io accepts the credentials, the last error,
and samples of recent requests with Customer.io's answers. Nothing here contains a secret:
response snippets are Customer.io's bodies, never our request headers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Credentials = Literal["unknown", "ok", "rejected"]

RECENT_REQUESTS = 50
SNIPPET_BYTES = 300


@dataclass(frozen=True, slots=True)
class RecentRequest:
    """One request sent to Customer.io, as the status page shows it."""

    at: float  # Unix seconds
    endpoint: str
    status: int | None
    ops: int
    elapsed_secs: float
    response: str  # a snippet of the body, or the network error


@dataclass(slots=True)
class DeliveryState:
    """Mutable, in-process; ``snapshot()`` is the JSON-ready view."""

    credentials: Credentials = "unknown"
    last_error: str = ""
    last_error_at: float | None = None
    paused_until: float | None = None  # set while credentials are rejected
    delivered: int = 0
    dead_lettered: int = 0
    retried: int = 0
    requests: int = 0
    recent: deque[RecentRequest] = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))

    @property
    def paused(self) -> bool:
        return self.paused_until is not None

    def record_request(
        self,
        *,
        at: float,
        endpoint: str,
        status: int | None,
        ops: int,
        elapsed_secs: float,
        body: bytes,
        error: str | None,
    ) -> None:
        self.requests += 1
        if error is not None:
            text = error
        else:
            text = body[:SNIPPET_BYTES].decode("utf-8", errors="replace")
            if len(body) > SNIPPET_BYTES:
                text += "…"
        self.recent.append(RecentRequest(at, endpoint, status, ops, elapsed_secs, text))

    def record_error(self, message: str, at: float) -> None:
        self.last_error = message
        self.last_error_at = at

    def snapshot(self) -> dict[str, Any]:
        """Plain data (newest request first), for JSON and templates."""
        return {
            "credentials": self.credentials,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "paused_until": self.paused_until,
            "totals": {
                "delivered": self.delivered,
                "dead_lettered": self.dead_lettered,
                "retried": self.retried,
                "requests": self.requests,
            },
            "recent_requests": [asdict(r) for r in reversed(self.recent)],
        }
