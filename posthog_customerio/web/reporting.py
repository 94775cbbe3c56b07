"""``POST /customerio/reporting``: Customer.io's reporting webhooks (docs/reporting.md).

Answers 401 for a missing or wrong ``X-CIO-Signature`` (counted, and loud: Customer.io holds
back every later webhook until this one succeeds), 200 once a signed body is stored (a body
that does not parse, or is over ``max_body_bytes``, is stored as a dead letter; a repeated
``event_id`` is a duplicate), 413 only over a 16 MiB hard cap, and 503 only when the queue
cannot store (Customer.io retries).
"""

from __future__ import annotations

import logging
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from posthog_customerio.errors import PayloadTooLarge, QueueUnavailable
from posthog_customerio.pipeline.reporting import accept, record_rejection
from posthog_customerio.runtime import Connector
from posthog_customerio.sources.reporting import signature_problem
from posthog_customerio.web.responses import error_body, json_response

log = logging.getLogger("posthog_customerio.web")

REPORTING_PATH = "/customerio/reporting"
# The signature covers the whole body, so it can only be checked once the body is read: a
# signed body over ``max_body_bytes`` is read (up to this cap against abuse), verified and kept
# as a dead letter, since a 413 would make Customer.io hold back every later webhook.
HARD_CAP_BYTES = 16 * 1024 * 1024


def reporting_route(connector: Connector) -> Route:
    async def reporting(request: Request) -> Response:
        from posthog_customerio.web.app import read_body

        settings = connector.settings  # per request: SIGHUP may have changed the keys
        try:
            body = await read_body(
                request.receive,
                request.headers.get("content-length"),
                max(HARD_CAP_BYTES, settings.max_body_bytes),
            )
        except PayloadTooLarge as exc:
            return Response(error_body(str(exc)), 413, media_type="application/json")
        except ClientDisconnect:
            return Response(error_body("client disconnected"), 400, media_type="application/json")
        problem = signature_problem(
            settings.reporting_keys,
            request.headers.get("x-cio-timestamp"),
            request.headers.get("x-cio-signature"),
            body,
        )
        if problem is not None:
            record_rejection(connector.reporting, connector.metrics, problem, time.time())
            return json_response({"error": f"reporting webhook refused: {problem}"}, 401)
        try:
            answer = await accept(
                connector.queue, settings, connector.metrics, connector.reporting, body
            )
        except QueueUnavailable as exc:
            log.warning("reporting webhook: queue unavailable", extra={"ctx": {"error": str(exc)}})
            return json_response({"error": "queue unavailable, retry later"}, 503)
        return json_response(answer)

    return Route(REPORTING_PATH, reporting, methods=["POST"])
