"""The HTTP app of ``serve``: webhook in, health, readiness, metrics, status.

The webhook answers 200 only after ``Connector.ingest`` returned, i.e. after the operations
are committed. An unusable element of an array or batch is dropped (reason ``invalid_event``,
with a note naming it) and the rest accepted, since PostHog does not retry a 4xx. Errors are
classified here, once: ``InputError`` (nothing in the body usable) → 400 naming the field,
``PayloadTooLarge`` → 413, ``QueueUnavailable`` → 503 with ``Retry-After`` (PostHog retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from posthog_customerio import __version__, admin
from posthog_customerio.errors import InputError, PayloadTooLarge, QueueUnavailable
from posthog_customerio.runtime import SANDBOX_PREFIX, Connector
from posthog_customerio.sources.webhook import parse_webhook_body
from posthog_customerio.web.admin import admin_routes
from posthog_customerio.web.history import History
from posthog_customerio.web.reporting import reporting_route
from posthog_customerio.web.responses import error_body, json_response

log = logging.getLogger("posthog_customerio.web")


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """Read at most ``limit`` bytes; stop reading (413) as soon as it is exceeded."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def bearer_ok(header: str, secret: str) -> bool:
    """Constant-time comparison of ``Authorization: Bearer <secret>``."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), secret.encode())


class WebhookFastPath:
    """ASGI: ``POST /webhook`` answered here, everything else by the Starlette app.

    Why: with one event per request, Starlette's middleware stack, routing and ``Request``
    objects cost the event loop about as much as parsing, mapping and storing the event
    (py-spy, docs/benchmarks.md). The hot path needs none of them.
    """

    def __init__(self, app: ASGIApp, handle: WebhookHandler) -> None:
        self.app = app
        self.handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/webhook" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        status, body, extra = await self.handle(scope, receive)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


WebhookHandler = Callable[[Scope, Receive], Awaitable[tuple[int, bytes, list[tuple[bytes, bytes]]]]]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


RETRY_LATER = [(b"retry-after", b"5")]
INVALID_EVENT = "invalid_event"  # the drop reason of an unusable element of an array or batch


def create_app(connector: Connector, sandbox_app: Any = None) -> WebhookFastPath:
    """Build the app around a (not yet started) connector: Starlette behind the webhook's
    fast path."""

    async def webhook(
        scope: Scope, receive: Receive
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        settings = connector.settings  # read per request: SIGHUP may have reloaded them
        secret = settings.webhook_secret
        if secret is not None and not bearer_ok(
            _header(scope, b"authorization") or "", secret.get_secret_value()
        ):
            return 401, error_body("missing or wrong Authorization: Bearer <webhook secret>"), []
        stage = "reading the body"
        try:
            body = await read_body(
                receive, _header(scope, b"content-length"), settings.max_body_bytes
            )
            stage = "parsing the body"
            invalid: list[InputError] = []  # unusable elements: the rest still go through
            events = parse_webhook_body(
                body,
                received_ms=int(time.time() * 1000),
                max_depth=settings.max_json_depth,
                dropped=invalid,
            )
            stage = "enqueueing"
            result = await connector.ingest(events, "webhook")
        except PayloadTooLarge as exc:
            return 413, error_body(str(exc)), []
        except InputError as exc:
            return 400, error_body(exc.message, exc.field), []
        except QueueUnavailable as exc:
            log.warning("webhook refused: queue unavailable", extra={"ctx": {"error": str(exc)}})
            return 503, error_body(f"queue unavailable, retry later: {exc}"), RETRY_LATER
        except ClientDisconnect:
            return 400, error_body("the client disconnected before sending the whole body"), []
        except Exception as exc:
            # A bug, not bad input: logged with its traceback, answered without one.
            log.exception("webhook failed unexpectedly", extra={"ctx": {"stage": stage}})
            what = f"internal error while {stage} ({type(exc).__name__}); it was logged"
            if stage == "enqueueing":  # retrying is safe: events are deduplicated by uuid
                return 503, error_body(f"{what}, retry later"), RETRY_LATER
            return 400, error_body(f"{what}; this payload cannot be accepted"), []
        answer: dict[str, Any] = {
            "accepted": result.accepted,
            "dropped": result.dropped_total + len(invalid),
            "reasons": result.dropped,
        }
        notes = (
            Counter(note for event in events for note in event.notes)
            if any(event.notes for event in events)
            else None
        )
        if invalid:  # counted as received and dropped, so received = accepted + dropped
            m = connector.metrics
            m.count(m.events_received, "webhook", len(invalid))
            m.count(m.events_dropped, INVALID_EVENT, len(invalid))
            answer["reasons"] = {**result.dropped, INVALID_EVENT: len(invalid)}
            notes = notes or Counter()
            notes.update(f"{exc}: event dropped" for exc in invalid)
            log.warning(
                "webhook: unusable events dropped, the rest accepted",
                extra={"ctx": {"dropped": [str(exc) for exc in invalid]}},
            )
        if notes:  # derived or dropped fields (uuid from content, time of receipt): say so
            answer["notes"] = dict(notes)
            log.info("webhook events with derived fields", extra={"ctx": {"notes": dict(notes)}})
        return 200, orjson.dumps(answer), []

    async def method_not_allowed(request: Request) -> Response:
        return json_response({"error": "use POST"}, 405, {"Allow": "POST"})

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> Response:
        try:
            await connector.stats(max_age_secs=0.5)
        except Exception as exc:  # any store failure means "not ready", with its reason
            return json_response({"ready": False, "reason": f"queue unreachable: {exc}"}, 503)
        if connector.state.credentials == "rejected":
            return json_response({"ready": False, "reason": "credentials rejected"}, 503)
        answer: dict[str, Any] = {"ready": True, "credentials": connector.state.credentials}
        if connector.reporting.held_back:  # loud, but the service itself is ready
            answer["reporting"] = connector.reporting.to_json()
        return json_response(answer)

    async def metrics(request: Request) -> Response:
        with contextlib.suppress(Exception):
            await connector.stats()
        return Response(
            connector.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    history = History(
        connector.metrics, interval_secs=connector.settings.status_history_interval_secs
    )

    async def api_status(request: Request) -> Response:
        return json_response(await status_snapshot(connector, history))

    async def api_history(request: Request) -> Response:
        return json_response(history.to_json())

    page = resources.files("posthog_customerio.web").joinpath("status.html").read_text()

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    routes: list[Route | Mount] = [
        Route("/webhook", method_not_allowed, methods=["GET", "PUT", "PATCH", "DELETE"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/status", api_status, methods=["GET"]),
        Route("/api/history", api_history, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        *admin_routes(connector),
        reporting_route(connector),
    ]
    if sandbox_app is not None:
        routes.append(Mount(SANDBOX_PREFIX, app=sandbox_app))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await connector.start()
        stop_history = asyncio.Event()
        sampler = asyncio.create_task(history.run(stop_history, connector.stats), name="history")
        try:
            yield
        finally:
            stop_history.set()
            await sampler
            await connector.stop()

    return WebhookFastPath(Starlette(routes=routes, lifespan=lifespan), webhook)


async def status_snapshot(connector: Connector, history: History | None = None) -> dict[str, Any]:
    """What ``status --json`` and the status page show; never a secret."""
    extra = history.overview(connector.settings.delivery.rate_limit_rps) if history else {}
    snapshot = await admin.live_status(connector, extra)
    snapshot["reporting"] = connector.reporting.to_json()  # the reverse path's direction
    return snapshot
