#!/usr/bin/env python3
"""The two alternatives ``bench/compare.py`` measures us against, as one subprocess each.

    .venv/bin/python bench/alternatives.py app --events events.jsonl --track-url URL ...
    .venv/bin/python bench/alternatives.py official --events events.jsonl --track-url URL ...

``app``: a faithful re-implementation of PostHog's archived "Customer.io Connector" app as the
plugin server ran it: ``onEvent`` per event — an in-memory customer status (the plugin's
``storage``), then ``PUT /api/v1/customers/{id}`` with ``$set`` + ``_update`` + ``identifier``
(+ ``email``) and ``POST /api/v1/customers/{id}/events`` with ``name``, ``type``,
``timestamp`` (seconds) and ``data``; 408/429/5xx and network errors raise ``RetryError``.
The plugin server ran ``onEvent`` in ``WORKER_CONCURRENCY`` × ``TASKS_PER_WORKER`` (2 × 10 on
two cores) concurrent tasks; its last versions ran ``onEvent`` "without any retries", earlier
ones retried a few times: we retry ``--retries`` times (default 3, backoff 0.5 s × 2^n), then
the event is gone. asyncio + httpx (the plugin used node-fetch, keep-alive pooled).

``official``: what a PostHog user writes by hand with Customer.io's official Python client
(``customerio`` 3.x on PyPI): ``identify(id, email=..., **$set)`` then
``track(customer_id, name, data=..., timestamp=...)`` per event, in ``--threads`` threads,
one client per thread; a failed call is logged and the script moves on. The client only
speaks https; for the loopback sandbox its base URL is pointed at http and its retrying
adapter (3 retries, 0.02 s backoff, 429 only with Retry-After) is mounted for http too.

Events are offered at ``--rate`` events/s (0 = all at once). Writes a JSON result: per event
the time it was offered and whether it was sent, request count, peak RSS (VmHWM), CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import resource
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

EMAIL_RE = re.compile(
    r"^(([^<>()[\]\\.,;:\s@\"]+(\.[^<>()[\]\\.,;:\s@\"]+)*)|(\".+\"))@"
    r"((\[[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\])|(([a-zA-Z\-0-9]+\.)+[a-zA-Z]{2,}))$"
)


class RetryError(Exception):
    pass


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def js_number(seconds: float) -> int | float:
    """JSON.stringify of a JS number: whole numbers have no fraction."""
    return int(seconds) if seconds == int(seconds) else seconds


def event_seconds(event: dict[str, Any]) -> float:
    ts = event.get("timestamp")
    if ts:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
    return time.time()


class App:
    """The app's ``onEvent`` (config: send all events, no allowlist, identify by id)."""

    def __init__(self, client: httpx.AsyncClient, auth: str, retries: int) -> None:
        self.client = client
        self.auth = auth
        self.retries = retries
        self.status: dict[str, set[str]] = {}  # the plugin's storage: customer-status/{id}
        self.requests = 0

    async def call(self, method: str, path: str, body: dict[str, Any]) -> None:
        headers = {
            "User-Agent": "PostHog Customer.io App",
            "Authorization": self.auth,
            "Content-Type": "application/json",
        }
        self.requests += 1
        try:
            r = await self.client.request(method, path, content=orjson.dumps(body), headers=headers)
        except httpx.HTTPError as exc:
            raise RetryError(f"Cannot reach the Customer.io API. {exc}") from exc
        if r.status_code in (401, 403):
            raise RuntimeError(f"Customer.io Site ID or API Key invalid! {r.status_code}")
        if r.status_code in (408, 429) or r.status_code // 100 == 5:
            raise RetryError(f"intermittent error {r.status_code}")
        if r.status_code // 100 != 2:
            raise RuntimeError(f"unexpected error {r.status_code}: {r.text}")

    def email_of(self, event: dict[str, Any]) -> str | None:
        set_ = event.get("$set")
        if not isinstance(set_, dict) or not set_.get("email"):
            return None
        if isinstance(set_["email"], str) and EMAIL_RE.match(set_["email"].lower()):
            return str(set_["email"])
        if EMAIL_RE.match(str(event["distinct_id"]).lower()):
            return str(event["distinct_id"])
        return None

    async def on_event(self, event: dict[str, Any]) -> None:
        if event["event"] == "$create_alias":
            return
        status = self.status.setdefault(event["distinct_id"], set())
        exists = "seen" in status
        email = self.email_of(event)
        status.add("seen")
        if event["event"] == "$identify":
            status.add("identified")
        if email:
            status.add("with_email")
        props = dict(event.get("properties") or {})
        props.pop("$set", None)
        props.pop("$set_once", None)
        customer: dict[str, Any] = {
            **(event.get("$set") or {}),
            "_update": exists,
            "identifier": event["distinct_id"],
        }
        ident = event["distinct_id"]
        if email:
            customer["email"] = email
        await self.call("PUT", f"/api/v1/customers/{ident}", customer)
        kind = {"$pageview": "page", "$screen": "screen"}.get(event["event"], "event")
        await self.call(
            "POST",
            f"/api/v1/customers/{ident}/events",
            {
                "name": event["event"],
                "type": kind,
                "timestamp": js_number(event_seconds(event)),
                "data": props,
            },
        )

    async def run_one(self, event: dict[str, Any]) -> bool:
        for attempt in range(self.retries + 1):
            try:
                await self.on_event(event)
                return True
            except RetryError:
                if attempt == self.retries:
                    return False  # the plugin server gives up: the event is gone
                await asyncio.sleep(0.5 * 2**attempt)
            except RuntimeError:
                return False
        return False


def plugin_event(body: dict[str, Any]) -> dict[str, Any]:
    """The plugin server's ProcessedPluginEvent: ``$set`` lifted out of the properties."""
    ev = dict(body["event"])
    props = ev.get("properties") or {}
    if "$set" in props:
        ev["$set"] = props["$set"]
    return ev


def offer_times(count: int, rate: float, t0: float) -> list[float]:
    return [t0 if rate <= 0 else t0 + i / rate for i in range(count)]


async def run_app(args: argparse.Namespace, events: list[dict[str, Any]]) -> dict[str, Any]:
    token = base64.b64encode(f"{args.site_id}:{args.api_key}".encode()).decode()
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=64)
    offered: list[float] = []
    ok = [False] * len(events)
    async with httpx.AsyncClient(base_url=args.track_url, timeout=30, limits=limits) as client:
        app = App(client, f"Basic {token}", args.retries)
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        t0 = time.time()
        offered = offer_times(len(events), args.rate, t0)

        async def feeder() -> None:
            for i, due in enumerate(offered):
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                queue.put_nowait(i)
            for _ in range(args.concurrency):
                queue.put_nowait(None)

        async def task() -> None:
            while (i := await queue.get()) is not None:
                ok[i] = await app.run_one(plugin_event(events[i]))

        await asyncio.gather(feeder(), *(task() for _ in range(args.concurrency)))
        t1 = time.time()
    return {"t0": t0, "t1": t1, "offered": offered, "ok": ok, "requests": app.requests}


def run_official(args: argparse.Namespace, events: list[dict[str, Any]]) -> dict[str, Any]:
    import logging

    from customerio import CustomerIO, CustomerIOException

    logging.getLogger("urllib3").setLevel(logging.ERROR)
    ok = [False] * len(events)
    lock = threading.Lock()
    cursor = iter(range(len(events)))
    requests = 0
    t0 = time.time()
    offered = offer_times(len(events), args.rate, t0)

    def make_client() -> Any:
        cio = CustomerIO(args.site_id, args.api_key, retries=3, timeout=30)
        cio.base_url = f"{args.track_url}/api/v1"  # the sandbox speaks http on loopback
        session = cio.http
        session.mount("http://", session.adapters["https://"])
        return cio

    def worker() -> None:
        nonlocal requests
        cio = make_client()
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            delay = offered[i] - time.time()
            if delay > 0:
                time.sleep(delay)
            body = events[i]
            ev = body["event"]
            props = dict(ev.get("properties") or {})
            set_ = props.pop("$set", None) or {}
            email = (body.get("person") or {}).get("properties", {}).get("email")
            attrs = {**set_, **({"email": email} if email else {})}
            try:
                with lock:
                    requests += 1
                cio.identify(id=ev["distinct_id"], **attrs)
                with lock:
                    requests += 1
                cio.track(
                    customer_id=ev["distinct_id"],
                    name=ev["event"],
                    data=props,
                    timestamp=int(event_seconds(ev)),
                )
                ok[i] = True
            except CustomerIOException:
                pass  # a hand-written script logs it and moves on

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"t0": t0, "t1": time.time(), "offered": offered, "ok": ok, "requests": requests}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("which", choices=["app", "official"])
    ap.add_argument("--events", type=Path, required=True, help="JSON Lines of webhook bodies")
    ap.add_argument("--track-url", required=True)
    ap.add_argument("--site-id", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--rate", type=float, default=0.0, help="events/s offered; 0 = all at once")
    ap.add_argument("--concurrency", type=int, default=20, help="app: concurrent onEvent tasks")
    ap.add_argument("--retries", type=int, default=3, help="app: retries of a RetryError")
    ap.add_argument("--threads", type=int, default=20, help="official: threads")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    events = [orjson.loads(line) for line in args.events.read_bytes().splitlines() if line]
    cpu0 = time.process_time()
    if args.which == "app":
        result = asyncio.run(run_app(args, events))
    else:
        result = run_official(args, events)
    result["cpu_secs"] = time.process_time() - cpu0
    result["rss_peak_mb"] = vm_hwm_mb()
    args.out.write_bytes(orjson.dumps(result))
    print(f"{args.which}: {sum(result['ok'])}/{len(events)} sent", file=sys.stderr)


if __name__ == "__main__":
    main()
