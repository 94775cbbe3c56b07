"""A small PostHog query API for tests: ``POST /api/projects/{id}/query/`` over given rows.

It answers the one HogQL shape ``sources/posthog_api.py`` sends, reading the bounds from the
request's ``values`` (``since``, ``until``, ``events``, ``after_ts``/``after_uuid``) and the page
size from ``LIMIT``, like PostHog: ``{"columns": [...], "results": [[...]], "hasMore": ...}``.
Every ``throttle_every``-th request gets ``429`` with ``Retry-After: 0``. It runs on uvicorn in
a thread on 127.0.0.1; rows can be added while it runs (new events "arriving" in PostHog).

It also takes the capture API's ``POST /batch/`` (``{"api_key": ..., "batch": [...]}``, the
reverse path): ``captured`` keeps one event per uuid, as PostHog does, and
``capture_posts`` every event posted; ``capture_down`` answers 503 with ``Retry-After: 0``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from posthog_customerio.sources.normalize import parse_timestamp_ms

COLUMNS = ["uuid", "event", "distinct_id", "timestamp", "properties", "person_properties"]


def api_row(export_row: dict[str, Any]) -> dict[str, Any]:
    """An S3-export row as the query API returns it (ISO timestamp, JSON-text properties)."""
    ms = parse_timestamp_ms(export_row["timestamp"])
    assert ms is not None
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}000Z"
    props = export_row.get("properties") or "{}"
    person = export_row.get("person_properties") or "{}"
    return {
        "uuid": export_row["uuid"],
        "event": export_row["event"],
        "distinct_id": export_row["distinct_id"],
        "timestamp": iso,
        "properties": props if isinstance(props, str) else json.dumps(props),
        "person_properties": person if isinstance(person, str) else json.dumps(person),
    }


class FakePostHog:
    def __init__(
        self, rows: list[dict[str, Any]], *, project_id: int = 2, key: str = "phx_test_key"
    ) -> None:
        self.rows = [api_row(r) for r in rows]
        self.project_id = project_id
        self.key = key
        self.throttle_every = 0
        self.requests: list[dict[str, Any]] = []
        self.throttled = 0
        self._lock = threading.Lock()
        self.url = ""
        self.project_api_key = "phc_test_project"
        self.captured: dict[str, dict[str, Any]] = {}  # uuid -> event, deduplicated
        self.capture_posts: list[dict[str, Any]] = []  # every event posted, repeats included
        self.capture_requests = 0
        self.capture_down = False

    async def capture_batch(self, request: Request) -> JSONResponse:
        with self._lock:
            self.capture_requests += 1
        if self.capture_down:
            return JSONResponse({"detail": "unavailable"}, 503, {"Retry-After": "0"})
        body = await request.json()
        if body.get("api_key") != self.project_api_key:
            return JSONResponse({"type": "authentication_error"}, 401)
        batch = body.get("batch")
        if not isinstance(batch, list):
            return JSONResponse({"type": "validation_error"}, 400)
        with self._lock:
            for event in batch:
                self.capture_posts.append(event)
                self.captured.setdefault(event["uuid"], event)
        return JSONResponse({"status": "Ok"})

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self.rows.extend(api_row(r) for r in rows)

    def _key(self, row: dict[str, Any]) -> tuple[int, str]:
        ms = parse_timestamp_ms(row["timestamp"])
        assert ms is not None
        return ms, row["uuid"]

    async def query(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return JSONResponse({"detail": "Invalid personal API key."}, 401)
        if int(request.path_params["project_id"]) != self.project_id:
            return JSONResponse({"detail": "Project not found."}, 404)
        body = await request.json()
        query = body["query"]
        assert query["kind"] == "HogQLQuery"
        self.requests.append(query)
        if self.throttle_every and len(self.requests) % self.throttle_every == 0:
            self.throttled += 1
            return JSONResponse({"detail": "Rate limit exceeded"}, 429, {"Retry-After": "0"})
        values = query.get("values") or {}
        limit_match = re.search(r"LIMIT (\d+)", query["query"])
        assert limit_match is not None
        limit = int(limit_match.group(1))
        since = parse_timestamp_ms(values["since"])
        until = parse_timestamp_ms(values["until"]) if "until" in values else None
        after = None
        if "after_ts" in values:
            after = (parse_timestamp_ms(values["after_ts"]), values["after_uuid"])
        events = set(values.get("events") or [])
        with self._lock:
            rows = sorted(self.rows, key=self._key)
        out = []
        for row in rows:
            key = self._key(row)
            if since is not None and key[0] < since:
                continue
            if until is not None and key[0] >= until:
                continue
            if events and row["event"] not in events:
                continue
            if after is not None and key <= after:
                continue
            out.append([row[c] for c in COLUMNS])
            if len(out) > limit:
                break
        has_more = len(out) > limit
        return JSONResponse(
            {
                "columns": COLUMNS,
                "types": [[c, "String"] for c in COLUMNS],
                "results": out[:limit],
                "hasMore": has_more,
                "limit": limit,
                "offset": 0,
            }
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/projects/{project_id}/query/", self.query, methods=["POST"]),
                Route("/api/projects/{project_id}/query", self.query, methods=["POST"]),
                Route("/batch/", self.capture_batch, methods=["POST"]),
            ]
        )


@contextmanager
def running(fake: FakePostHog) -> Iterator[FakePostHog]:
    """Serve ``fake`` on a free loopback port in a thread, for the duration."""
    config = uvicorn.Config(
        fake.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake PostHog did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(10)
