"""The operator's service: status, dead letters (list, show, replay, purge), ``forget`` and
the credentials check, as plain data.

The command line (``cli/main.py``) and the admin HTTP endpoints (``web/admin.py``) both call
this module, so a dead letter, a selection or a status looks the same from either; they only
parse their input and format the answer. It lives at the top of the package, beside
``runtime.py``, because it serves both front ends: neither ``cli`` nor ``web`` imports the
other, and this module imports neither.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from posthog_customerio import __version__
from posthog_customerio.customerio.client import TrackClient
from posthog_customerio.delivery.outcome import OutcomeKind, classify
from posthog_customerio.queue.base import DeadLetter, ForgetResult, Forgetter, Queue, QueueStats

if TYPE_CHECKING:
    from posthog_customerio.runtime import Connector

log = logging.getLogger("posthog_customerio.admin")

CHECK_TIMEOUT_SECS = 10.0


# ------------------------------------------------------------------------------- status


def queue_json(stats: QueueStats) -> dict[str, Any]:
    """The ``queue`` part of a status."""
    return {
        "depth": stats.depth,
        "oldest_age_secs": round(stats.oldest_age_secs, 3),
        "dead_letters": stats.dead_letters,
        "partitions_blocked": stats.partitions_blocked,
    }


async def workers_snapshot(queue: Queue) -> list[dict[str, object]]:
    """The live serving processes for status (one with SQLite, every one on PostgreSQL)."""
    now = time.time()
    return [
        {
            "id": w.id,
            "host": w.host,
            "pid": w.pid,
            "started_at": round(w.started_at, 3),
            "heartbeat_age_secs": round(max(0.0, now - w.heartbeat_at), 3),
            "partitions": w.partitions,
            "partition_sample": list(w.partition_sample),
            "this_process": w.this_process,
        }
        for w in await queue.workers()
    ]


async def live_status(connector: Connector, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``/api/status`` (the status page, ``status``) shows of a running ``serve``; never
    a secret. ``extra`` adds the web app's rate history."""
    stats = await connector.stats()
    follow = connector.follow_state
    return {
        "version": __version__,
        "uptime_secs": round(time.time() - connector.started_at, 1),
        "customerio": connector.target.url,
        "sandbox": connector.target.sandbox,
        "credentials": connector.state.credentials,
        "queue": queue_json(stats),
        "workers": await workers_snapshot(connector.queue),
        "delivery": connector.state.snapshot(),
        "posthog_follow": follow.snapshot() if follow is not None else None,
        **(extra or {}),
    }


async def offline_status(queue: Queue) -> dict[str, Any]:
    """What ``status`` shows when no ``serve`` answers: the queue only, read from the store."""
    stats = await queue.stats(time.time())
    return {
        "server": "not running",
        "workers": await workers_snapshot(queue),
        "credentials": "unknown",
        "queue": queue_json(stats),
        "delivery": None,
    }


# ------------------------------------------------------------------------- dead letters


def dead_letter_json(row: DeadLetter, *, full: bool = True) -> dict[str, Any]:
    """A dead letter as JSON. A body that is not JSON (a corrupt row) is shown as text, with
    undecodable bytes replaced, rather than failing the whole answer."""
    out: dict[str, Any] = {
        "id": row.id,
        "created_at": row.created_at,
        "reason": row.reason,
        "detail": row.detail,
        "action": row.action,
        "endpoint": str(row.endpoint),
        "partition": row.partition,
        "event_uuid": row.event_uuid,
        "status": row.status,
    }
    if full:
        try:
            out["operation"] = orjson.loads(row.body_json)
        except orjson.JSONDecodeError:
            out["operation"] = row.body_json.decode("utf-8", "replace")
        out["request"] = row.request
        out["response"] = row.response
    return out


async def list_dead_letters(
    queue: Queue, *, reason: str | None = None, since: float | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Dead letters, newest first, as ``dead_letter_json``."""
    rows = await queue.list_dead_letters(reason=reason, since=since, limit=limit)
    return [dead_letter_json(r) for r in rows]


async def show_dead_letter(queue: Queue, dead_letter_id: int) -> dict[str, Any] | None:
    """One dead letter as ``dead_letter_json``, or None if there is no such id."""
    row = await queue.get_dead_letter(dead_letter_id)
    return None if row is None else dead_letter_json(row)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a replay or purge acts on: the ``ids`` named, else every one
    matching ``reason`` and ``since`` (Unix seconds); no ids and no filter means all."""

    ids: tuple[int, ...] = ()
    reason: str | None = None
    since: float | None = None


async def select(queue: Queue, selection: Selection) -> list[int]:
    """The dead-letter ids ``selection`` names, each once."""
    if selection.ids:
        return list(dict.fromkeys(selection.ids))
    return await queue.dead_letter_ids(reason=selection.reason, since=selection.since)


async def replay(queue: Queue, selection: Selection, *, via: str) -> int:
    """Re-enqueue the selected dead letters with their original event ids; returns how many.
    ``via`` (``cli``, ``http``) is logged."""
    n = await queue.replay_dead_letters(await select(queue, selection))
    log.info("dead letters replayed", extra={"ctx": {"replayed": n, "via": via}})
    return n


async def purge(queue: Queue, selection: Selection, *, via: str) -> int:
    """Delete the selected dead letters for good; returns how many."""
    n = await queue.purge_dead_letters(await select(queue, selection))
    log.info("dead letters purged", extra={"ctx": {"purged": n, "via": via}})
    return n


# ------------------------------------------------------------------------------- forget


async def forget(
    queue: Queue,
    forgetter: Forgetter,
    distinct_ids: Sequence[str],
    *,
    suppress: bool,
    via: str,
) -> ForgetResult:
    """GDPR erasure of each distinct_id (duplicates once); see ``Queue.forget``. Only counts
    are logged: the ids are what is being erased."""
    ids = list(dict.fromkeys(distinct_ids))
    result = await queue.forget(ids, forgetter, suppress=suppress, now=time.time())
    counts = dataclasses.asdict(result)
    log.info(
        "people forgotten",
        extra={
            "ctx": {
                **{k: v for k, v in counts.items() if k != "distinct_ids"},
                "people": len(ids),
                "suppress": suppress,
                "via": via,
            }
        },
    )
    return result


def forget_json(result: ForgetResult, suppress: bool) -> dict[str, Any]:
    """What ``forget --json`` and ``POST /admin/forget`` answer."""
    return {**dataclasses.asdict(result), "suppress": suppress}


# ------------------------------------------------------------------------ credentials


@dataclass(frozen=True, slots=True)
class CredentialsCheck:
    """Customer.io's answer to the credentials, as ``delivery.outcome.classify`` reads it.

    ``kind`` is DELIVERED when accepted, AUTH when refused, anything else when the check could
    not tell; ``region`` is the account's (``?`` when unreadable); ``error`` says what went
    wrong (a network error or ``HTTP <status>``).
    """

    kind: OutcomeKind
    status: int | None
    region: str
    error: str

    @property
    def accepted(self) -> bool:
        return self.kind is OutcomeKind.DELIVERED

    @property
    def rejected(self) -> bool:
        return self.kind is OutcomeKind.AUTH


async def check_credentials(
    track_url: str, site_id: str, api_key: str, *, timeout_secs: float = CHECK_TIMEOUT_SECS
) -> CredentialsCheck:
    """``GET /api/v1/accounts/region``: the side-effect-free credentials check."""
    client = TrackClient(track_url, site_id, api_key, timeout_secs=timeout_secs)
    try:
        resp = await client.get_region()
    finally:
        await client.aclose()
    outcome = classify(resp, item_count=1, now=time.time(), retry_after_max_secs=0.0)
    region = "?"
    if outcome.kind is OutcomeKind.DELIVERED:
        try:
            data = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            region = str(data.get("region", "?"))
    return CredentialsCheck(
        kind=outcome.kind,
        status=resp.status,
        region=region,
        error=resp.error or f"HTTP {resp.status}",
    )


__all__ = [
    "CredentialsCheck",
    "Selection",
    "check_credentials",
    "dead_letter_json",
    "forget",
    "forget_json",
    "list_dead_letters",
    "live_status",
    "offline_status",
    "purge",
    "queue_json",
    "replay",
    "select",
    "show_dead_letter",
    "workers_snapshot",
]
