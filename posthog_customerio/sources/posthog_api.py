"""PostHog's query API as a source: ``POST /api/projects/{id}/query`` with a HogQL query.

One query shape, keyset-paged so every page is an index range and nothing is read twice::

    SELECT uuid, event, distinct_id, timestamp, properties,
           person.properties AS person_properties
    FROM events
    WHERE timestamp >= toDateTime({since}) [AND timestamp < toDateTime({until})]
      [AND event IN {events}]
      [AND (timestamp > toDateTime({after_ts})
            OR (timestamp = toDateTime({after_ts}) AND uuid > toUUID({after_uuid})))]
    ORDER BY timestamp, uuid
    LIMIT <page_size>

Values travel in ``HogQLQuery.values`` (``{name}`` placeholders), never spliced into the text.
The response is ``{"columns": [...], "results": [[...], ...], ...}``; ``properties`` come back
as JSON text, which ``normalize.event_from_mapping`` reads. Auth is a personal API key with the
``query:read`` scope (``Authorization: Bearer``). ``429``/``5xx``/network errors are retried with
backoff, at least ``Retry-After``; ``401``/``403``/``4xx`` raise ``PostHogApiError`` at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from posthog_customerio import __version__
from posthog_customerio.errors import ConnectorError, InputError
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.export_files import BadRow
from posthog_customerio.sources.normalize import NUL_ESCAPE, event_from_mapping, replace_nul

__all__ = [
    "ApiCursor",
    "ApiQuery",
    "PostHogApiError",
    "PostHogQueryClient",
    "build_query",
    "iso",
]

COLUMNS = ("uuid", "event", "distinct_id", "timestamp", "properties", "person_properties")
_SELECT = (
    "SELECT uuid, event, distinct_id, timestamp, properties, "
    "person.properties AS person_properties FROM events WHERE"
)
RETRY_AFTER_MAX_SECS = 300.0
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class PostHogApiError(ConnectorError):
    """PostHog refused the query or stayed unavailable; the message says which."""


@dataclass(frozen=True, slots=True)
class ApiCursor:
    """The last row read: its timestamp as PostHog returned it, and its uuid."""

    timestamp: str
    uuid: str


@dataclass(frozen=True, slots=True)
class ApiQuery:
    """What to read: events with ``since <= timestamp < until`` (ISO 8601), optionally only
    the named ``events``, ``page_size`` rows per request."""

    since: str
    until: str | None = None
    events: tuple[str, ...] = ()
    page_size: int = 1000


def iso(ms: int) -> str:
    """A time (ms since the epoch) as the query's ISO 8601 ``since``/``until``."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def build_query(
    q: ApiQuery, after: ApiCursor | None, since: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The HogQL text and its placeholder values for the page after ``after``.

    ``since`` overrides ``q.since`` (the follow loop re-reads a lag window from there).
    """
    values: dict[str, Any] = {"since": since or q.since}
    where = ["timestamp >= toDateTime({since})"]
    if q.until is not None:
        values["until"] = q.until
        where.append("timestamp < toDateTime({until})")
    if q.events:
        values["events"] = list(q.events)
        where.append("event IN {events}")
    if after is not None:
        values["after_ts"] = after.timestamp
        values["after_uuid"] = after.uuid
        where.append(
            "(timestamp > toDateTime({after_ts}) OR "
            "(timestamp = toDateTime({after_ts}) AND uuid > toUUID({after_uuid})))"
        )
    # Only our own integer is formatted into the text; every value is a {placeholder}.
    text = " ".join(
        [_SELECT, " AND ".join(where), "ORDER BY timestamp, uuid LIMIT", str(int(q.page_size))]
    )
    return text, values


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


class PostHogQueryClient:
    """Runs HogQL queries against one project; the only code that talks to PostHog."""

    def __init__(
        self,
        base_url: str,
        project_id: int,
        personal_api_key: str,
        *,
        timeout_secs: float = 120.0,
        max_attempts: int = 8,
        initial_backoff_secs: float = 1.0,
        max_backoff_secs: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_throttled: Callable[[float], None] | None = None,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/api/projects/{int(project_id)}/query/"
        self._http = httpx.AsyncClient(
            headers={
                "Authorization": f"Bearer {personal_api_key}",
                "User-Agent": f"posthog-customerio/{__version__}",
            },
            timeout=timeout_secs,
            transport=transport,
        )
        self._max_attempts = max_attempts
        self._initial = initial_backoff_secs
        self._max_backoff = max_backoff_secs
        self._sleep = sleep
        self._rng = random.Random()
        self._on_throttled = on_throttled
        self.requests = 0
        self.throttled = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def query(
        self, hogql: str, values: Mapping[str, Any]
    ) -> tuple[list[str], list[list[Any]]]:
        """(columns, rows) of one HogQL query, retrying what is worth retrying."""
        body = {"query": {"kind": "HogQLQuery", "query": hogql, "values": dict(values)}}
        last = ""
        for attempt in range(self._max_attempts):
            wait: float | None = None
            try:
                self.requests += 1
                resp = await self._http.post(self.url, json=body)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    return self._parse(resp)
                detail = _detail(resp)
                if resp.status_code in (401, 403):
                    raise PostHogApiError(
                        f"PostHog refused the personal API key ({resp.status_code}: {detail}); "
                        "it needs the query:read scope on this project"
                    )
                if resp.status_code not in RETRY_STATUSES:
                    raise PostHogApiError(
                        f"PostHog refused the query ({resp.status_code}): {detail}"
                    )
                last = f"HTTP {resp.status_code}: {detail}"
                wait = _retry_after(resp.headers.get("retry-after"), time.time())
                if wait is not None:
                    wait = min(wait, RETRY_AFTER_MAX_SECS)
                if resp.status_code == 429:
                    self.throttled += 1
            backoff = self._rng.uniform(0, min(self._max_backoff, self._initial * 2**attempt))
            delay = max(wait or 0.0, backoff)
            if wait is not None and self._on_throttled is not None:
                self._on_throttled(delay)
            if attempt + 1 < self._max_attempts:
                await self._sleep(delay)
        raise PostHogApiError(
            f"PostHog query failed after {self._max_attempts} attempts; last: {last}"
        )

    @staticmethod
    def _parse(resp: httpx.Response) -> tuple[list[str], list[list[Any]]]:
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise PostHogApiError("PostHog answered 200 with a body that is not JSON") from exc
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise PostHogApiError("PostHog answered 200 without a results list")
        columns = data.get("columns")
        if not isinstance(columns, list):
            columns = list(COLUMNS)
        results: list[list[Any]] = data["results"]
        if NUL_ESCAPE in resp.content:
            results = replace_nul(results)
        return [str(c) for c in columns], results

    async def page(
        self, q: ApiQuery, after: ApiCursor | None, since: str | None = None
    ) -> list[tuple[PostHogEvent | BadRow, ApiCursor]]:
        """One page after ``after``: each row as an event (or why not) and its cursor."""
        hogql, values = build_query(q, after, since)
        columns, rows = await self.query(hogql, values)
        received_ms = int(time.time() * 1000)
        return [row_event(columns, row, received_ms) for row in rows]


def _detail(resp: httpx.Response) -> str:
    try:
        data = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return resp.text[:200] or resp.reason_phrase
    if isinstance(data, dict):
        return str(data.get("detail") or data.get("error") or data)[:500]
    return str(data)[:500]


def row_event(
    columns: Sequence[str], row: Sequence[Any], received_ms: int
) -> tuple[PostHogEvent | BadRow, ApiCursor]:
    """One result row (by column name) → an event and the cursor just after it."""
    obj = {_plain(name): value for name, value in zip(columns, row, strict=False)}
    cursor = ApiCursor(str(obj.get("timestamp") or ""), str(obj.get("uuid") or ""))
    where = f"posthog-api uuid={cursor.uuid or '?'}"
    try:
        return event_from_mapping(obj, person=None, received_ms=received_ms, path=""), cursor
    except InputError as exc:
        return BadRow(where, None, str(exc)), cursor


def _plain(column: str) -> str:
    """``person.properties`` (unaliased) is the event's ``person_properties``."""
    return "person_properties" if column == "person.properties" else column
