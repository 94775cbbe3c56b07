"""Customer.io's reporting webhooks into the queue: verify, parse, resolve, map, store.

Customer.io waits 4 s for an answer, and after a timeout or an error status retries for up to
seven days while holding back every later webhook (https://docs.customer.io/api/webhooks/,
"Timeouts and failures"). So a correctly signed body is always stored and answered 200: one
that does not parse or is over ``max_body_bytes`` is stored as a dead letter, a repeated
``event_id`` is deduplicated by the queue. Only a missing or wrong signature is refused, and
that is made loud (``ReportingState``): it stalls the whole stream until someone fixes the key.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid as _uuid
from dataclasses import dataclass, field
from typing import Any

from posthog_customerio.errors import InputError
from posthog_customerio.mapping.reporting import (
    CaptureMapper,
    ReportingOptions,
    candidate_ids,
    capture_carrier,
    capture_event,
    fallback_distinct_id,
    metric_allowed,
    trigger_uuid,
    unreadable_carrier,
)
from posthog_customerio.metrics import Metrics
from posthog_customerio.queue.base import IngestResult, Queue
from posthog_customerio.settings import Settings
from posthog_customerio.sources.reporting import ReportingEvent, parse_reporting_body

log = logging.getLogger("posthog_customerio.reporting")

HELD_BACK = "Customer.io is holding back your reporting webhooks"
CAPTURE_MAPPER = CaptureMapper()


@dataclass(slots=True)
class ReportingState:
    """What status, ``/readyz`` and the log say about the reporting webhooks.

    ``held_back`` from a refusal until the next accepted webhook: Customer.io retries the
    refused one and sends nothing after it until it succeeds.
    """

    accepted: int = 0
    duplicates: int = 0
    unreadable: int = 0
    filtered: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    last_accepted_at: float | None = None
    last_rejected_at: float | None = None
    last_rejection: str | None = None

    @property
    def held_back(self) -> bool:
        if self.last_rejected_at is None:
            return False
        return self.last_accepted_at is None or self.last_rejected_at > self.last_accepted_at

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "unreadable": self.unreadable,
            "filtered": self.filtered,
            "rejected": dict(self.rejected),
            "last_accepted_at": self.last_accepted_at,
            "last_rejected_at": self.last_rejected_at,
            "held_back": self.held_back,
            "problem": f"{HELD_BACK}: {self.last_rejection}" if self.held_back else None,
        }


def options_of(settings: Settings) -> ReportingOptions:
    return ReportingOptions(
        event_names=dict(settings.reporting_event_names),
        metrics=tuple(settings.reporting_metrics),
        include_recipient=settings.reporting_include_recipient,
    )


def record_rejection(state: ReportingState, metrics: Metrics, reason: str, now: float) -> None:
    """Count a refused webhook; log loudly the first of a run of refusals."""
    was_held = state.held_back
    state.rejected[reason] = state.rejected.get(reason, 0) + 1
    state.last_rejected_at = now
    state.last_rejection = {
        "not_configured": "no reporting_signing_keys configured",
        "missing_signature": "a webhook came without X-CIO-Signature / X-CIO-Timestamp",
        "wrong_signature": "a webhook's X-CIO-Signature matches none of reporting_signing_keys",
    }.get(reason, reason)
    metrics.reporting_rejected.labels(reason).inc()
    if not was_held:
        log.error(
            f"{HELD_BACK} until a webhook is answered 200: check reporting_signing_keys "
            "against the signing key of Customer.io's reporting webhook",
            extra={"ctx": {"reason": reason}},
        )


async def resolve_distinct_id(queue: Queue, report: ReportingEvent, by_email: bool) -> str:
    """The distinct_id this connector sent the person under, else ``identifiers.id``.

    With ``identify_by_email`` Customer.io's person is the email: the identity state holding
    that email names the distinct_id. Otherwise Customer.io's ``id`` is the distinct_id.
    """
    person_id, email = candidate_ids(report)
    if email is not None and (by_email or person_id is None):
        found = await queue.distinct_id_for_email(email)
        if found is not None:
            return found
    return person_id or fallback_distinct_id(report)


async def attribution(queue: Queue, report: ReportingEvent) -> str | None:
    """The uuid of the PostHog event this connector delivered that triggered the message."""
    candidate = trigger_uuid(report.data.get("trigger_event_id"))
    if candidate is not None and await queue.was_seen(candidate):
        return candidate
    return None


async def accept(
    queue: Queue,
    settings: Settings,
    metrics: Metrics,
    state: ReportingState,
    body: bytes,
) -> dict[str, Any]:
    """Store one correctly signed body durably; the answer's JSON. Raises only when the queue
    cannot store (the caller answers 503 and Customer.io retries)."""
    now = time.time()
    received_ms = int(now * 1000)
    reason = "unreadable_reporting"
    try:
        if len(body) > settings.max_body_bytes:  # signed, so kept, but not parsed
            reason = "reporting_too_large"
            what = f"body of {len(body)} bytes is over max_body_bytes ({settings.max_body_bytes})"
            raise InputError("", what)
        report = parse_reporting_body(body)
    except InputError as exc:
        problem = f"{exc.field}: {exc.message}" if exc.field else exc.message
        key = str(_uuid.UUID(bytes=hashlib.sha256(body).digest()[:16]))
        carrier = unreadable_carrier(body, problem, received_ms=received_ms, key=key, reason=reason)
        await queue.ingest([carrier], CAPTURE_MAPPER)
        state.unreadable += 1
        state.last_accepted_at = now
        log.warning(
            "reporting webhook not read; kept as a dead letter",
            extra={"ctx": {"problem": problem, "reason": reason, "bytes": len(body)}},
        )
        return {"accepted": 0, "dead_lettered": 1, "reason": reason, "problem": problem}
    metrics.reporting_received.labels(report.object_type, report.metric).inc()
    state.last_accepted_at = now
    options = options_of(settings)
    if not metric_allowed(report.object_type, report.metric, options.metrics):
        state.filtered += 1
        return {"accepted": 0, "dropped": "not_in_reporting_metrics"}
    distinct_id = await resolve_distinct_id(queue, report, settings.identify_by_email)
    trigger = await attribution(queue, report)
    capture = capture_event(
        report, distinct_id=distinct_id, trigger_event_uuid=trigger, options=options
    )
    result: IngestResult = await queue.ingest(
        [capture_carrier(capture, received_ms=received_ms)], CAPTURE_MAPPER
    )
    if result.accepted:
        state.accepted += 1
        return {"accepted": 1, "event": capture["event"], "uuid": capture["uuid"]}
    state.duplicates += 1
    return {"accepted": 0, "dropped": "duplicate"}
