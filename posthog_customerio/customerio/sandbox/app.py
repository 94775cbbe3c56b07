"""The sandbox: a local Customer.io Track API over HTTP (DESIGN.md §6).

It answers like Customer.io (``200 {}``, ``207`` with ``errors[].batch_index``, ``400``,
``401``, ``413``), validates every body against the official OpenAPI document, applies
accepted operations to an in-memory ``Workspace`` and keeps a log of every Track request,
so tests can drive the real connector over loopback and assert on what it did.

Faults are injected before any work is applied, so a failed request changes nothing:
latency, then credentials, then the rate limit (429 with ``Retry-After``), then the random
failure (``fail_rate`` → ``fail_status``). ``POST /_sandbox/faults`` changes them at run time.
``reject_anonymous_batch`` is per item: it answers batch items naming a person by
``anonymous_id`` as Customer.io would if it refused that identifier (a 207 error on
``identifiers``), to exercise the connector's fallback to ``POST /api/v1/events``.

Control and inspection live under ``/_sandbox/`` (no auth; it is a local test tool):
``faults``, ``reset``, ``people``, ``people/{id_or_email}``, ``anonymous_events``,
``objects``, ``requests?since=N&limit=M``, ``stats``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from posthog_customerio.customerio.sandbox.workspace import Workspace, WorkspaceError
from posthog_customerio.customerio.spec import SpecProblem, SpecValidator, default_validator

__all__ = ["SandboxConfig", "SandboxServer", "create_sandbox_app", "run_sandbox"]

log = logging.getLogger(__name__)

ITEM_MAX_BYTES = 32 * 1024  # "each of the requests within the batch must be 32kb or smaller"
REGION = {"url": "https://track.customer.io", "region": "us", "environment_id": 1}
_JSON = "application/json; charset=utf-8"
_LOG_MAX_ENTRIES = 100_000
_LOG_MAX_BYTES = 64 * 1024 * 1024  # raw bodies kept for /_sandbox/requests
_LOG_BODY_MAX_BYTES = 1024 * 1024  # a larger body is kept as its first bytes only
_EVENT_ACTIONS = frozenset({"event", "page", "screen"})


@dataclass(frozen=True)
class SandboxConfig:
    """Credentials the sandbox accepts, its limits, and the faults it starts with."""

    site_id: str = "sandbox"
    api_key: str = field(default="sandbox", repr=False)
    fail_rate: float = 0.0
    fail_status: int = 503
    rate_limit_rps: float | None = None
    retry_after_secs: int = 1
    latency_ms: int = 0
    reject_credentials: bool = False
    reject_event_names: frozenset[str] = frozenset()
    reject_anonymous_batch: bool = False
    max_body_bytes: int = 500_000
    seed: int | None = None


# Fields POST /_sandbox/faults may change, with the JSON types each accepts.
_FAULT_FIELDS: dict[str, tuple[type, ...]] = {
    "fail_rate": (int, float),
    "fail_status": (int,),
    "rate_limit_rps": (int, float, type(None)),
    "retry_after_secs": (int,),
    "latency_ms": (int, float),
    "reject_credentials": (bool,),
    "reject_event_names": (list,),
    "reject_anonymous_batch": (bool,),
    "max_body_bytes": (int,),
    "seed": (int, type(None)),
}


def _json(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON, headers=headers)


def _v1_error(message: str) -> dict[str, Any]:
    return {"meta": {"errors": [message]}}


def _v2_error(field: str, message: str, reason: str = "invalid") -> dict[str, Any]:
    return {"errors": [{"reason": reason, "field": field, "message": message}]}


def _describe(problems: list[SpecProblem]) -> str:
    return "; ".join(str(p) for p in problems[:5])


def _names_anonymous(item: Mapping[str, Any]) -> bool:
    identifiers = item.get("identifiers")
    return isinstance(identifiers, dict) and "anonymous_id" in identifiers


class _TokenBucket:
    """Allows ``rate`` requests per second with a burst of one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class _LoggedRequest:
    seq: int
    time: float
    method: str
    path: str
    status: int
    body: bytes
    body_bytes: int
    response: bytes

    def to_json(self) -> dict[str, Any]:
        body: object = None
        if self.body_bytes > len(self.body):
            body = {
                "truncated": True,
                "bytes": self.body_bytes,
                "head": self.body[:1024].decode("utf-8", "replace"),
            }
        elif self.body:
            try:
                body = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                body = self.body.decode("utf-8", "replace")
        try:
            response: object = orjson.loads(self.response) if self.response else None
        except orjson.JSONDecodeError:
            response = self.response.decode("utf-8", "replace")
        return {
            "seq": self.seq,
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "body": body,
            "response": response,
        }


class _RequestLog:
    """Recent Track requests, bounded by count and by the bytes of the bodies kept."""

    def __init__(self) -> None:
        self.entries: deque[_LoggedRequest] = deque()
        self.seq = 0
        self.kept_bytes = 0
        self.by_status: dict[int, int] = {}

    def add(self, method: str, path: str, status: int, body: bytes, response: bytes) -> None:
        self.seq += 1
        kept = body if len(body) <= _LOG_BODY_MAX_BYTES else body[:1024]
        self.entries.append(
            _LoggedRequest(self.seq, time.time(), method, path, status, kept, len(body), response)
        )
        self.kept_bytes += len(kept)
        self.by_status[status] = self.by_status.get(status, 0) + 1
        while self.entries and (
            len(self.entries) > _LOG_MAX_ENTRIES or self.kept_bytes > _LOG_MAX_BYTES
        ):
            self.kept_bytes -= len(self.entries.popleft().body)

    def since(self, seq: int, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.entries or self.entries[-1].seq <= seq:
            return out
        start = max(0, seq - self.entries[0].seq + 1)  # seqs are consecutive
        for index in range(start, len(self.entries)):
            out.append(self.entries[index].to_json())
            if len(out) >= limit:
                break
        return out


class _Reply(Exception):
    """Ends a Track request early with this status and body (a fault, an error)."""

    def __init__(self, status: int, body: object, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers


Handler = Callable[[Request, bytes], Awaitable[object]]


class _Sandbox:
    """The state behind one sandbox app: workspace, faults, request log."""

    def __init__(self, config: SandboxConfig, validator: SpecValidator) -> None:
        self.config = config
        self.validator = validator
        self.workspace = Workspace()
        self.log = _RequestLog()
        token = base64.b64encode(f"{config.site_id}:{config.api_key}".encode()).decode()
        self._expected_auth = f"Basic {token}".encode()
        self._set_faults(config)

    def _set_faults(self, config: SandboxConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.bucket = _TokenBucket(config.rate_limit_rps) if config.rate_limit_rps else None

    def faults_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "fail_rate": c.fail_rate,
            "fail_status": c.fail_status,
            "rate_limit_rps": c.rate_limit_rps,
            "retry_after_secs": c.retry_after_secs,
            "latency_ms": c.latency_ms,
            "reject_credentials": c.reject_credentials,
            "reject_event_names": sorted(c.reject_event_names),
            "reject_anonymous_batch": c.reject_anonymous_batch,
            "max_body_bytes": c.max_body_bytes,
            "seed": c.seed,
        }

    # -- the Track request pipeline --------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if hmac.compare_digest(header.encode(), self._expected_auth):
            return True
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = f"{self.config.site_id}:{self.config.api_key}".encode()
        return hmac.compare_digest(decoded, expected)

    async def _faults(self, request: Request) -> None:
        c = self.config
        if c.latency_ms > 0:
            await asyncio.sleep(c.latency_ms / 1000)
        if c.reject_credentials or not self._authorized(request):
            raise _Reply(401, _v1_error("Unauthorized request"))
        if self.bucket is not None and not self.bucket.take():
            raise _Reply(
                429,
                _v1_error("Too many requests"),
                {"Retry-After": str(c.retry_after_secs)},
            )
        if c.fail_rate > 0 and self.rng.random() < c.fail_rate:
            raise _Reply(c.fail_status, _v1_error("Service unavailable (sandbox fault)"))

    def track(
        self, handler: Handler, *, v2: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a Track endpoint: faults, size limit, logging, Customer.io's answers."""

        async def endpoint(request: Request) -> Response:
            body = b""
            status: int = 200
            payload: object = {}
            headers: Mapping[str, str] | None = None
            try:
                limit = self.config.max_body_bytes
                declared = request.headers.get("content-length", "")
                size = int(declared) if declared.isdigit() else 0
                if size < limit:  # a body declared too large is not even read
                    body = await request.body()
                    size = len(body)
                await self._faults(request)
                if size >= limit:
                    message = f"the request body must be smaller than {limit} bytes"
                    raise _Reply(
                        413, _v2_error("", message, "too_large") if v2 else _v1_error(message)
                    )
                result = await handler(request, body)
                if result is not None:
                    status, payload = 207, result
            except _Reply as reply:
                status, payload, headers = reply.status, reply.body, reply.headers
            response = _json(payload, status, headers)
            self.log.add(request.method, request.url.path, status, body, bytes(response.body))
            return response

        return endpoint

    def _parse(self, body: bytes, *, v2: bool) -> Any:
        if not body:
            field, message = "", "request body is empty"
        else:
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                field, message = "", f"request body is not valid JSON: {exc}"
        raise _Reply(400, _v2_error(field, message) if v2 else _v1_error(message))

    def _poisoned(self, item: Mapping[str, Any]) -> bool:
        names = self.config.reject_event_names
        return bool(names) and item.get("name") in names

    # -- v2 --------------------------------------------------------------------------

    async def batch(self, request: Request, body: bytes) -> object:
        data = self._parse(body, v2=True)
        if not isinstance(data, dict) or not isinstance(data.get("batch"), list):
            raise _Reply(400, _v2_error("batch", "the body must be an object with a batch array"))
        items: list[Any] = data["batch"]
        check_sizes = len(body) > ITEM_MAX_BYTES
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            error = self._item_error(item, check_sizes)
            if error is None:
                try:
                    self.workspace.apply_item(item)
                except WorkspaceError as exc:
                    error = {"reason": exc.reason, "field": exc.field, "message": exc.message}
            if error is not None:
                errors.append({"batch_index": index, **error})
        return {"errors": errors} if errors else None

    def _item_error(self, item: Any, check_size: bool) -> dict[str, str] | None:
        if check_size and len(orjson.dumps(item)) > ITEM_MAX_BYTES:
            return {
                "reason": "too_large",
                "field": "",
                "message": f"each operation must be {ITEM_MAX_BYTES} bytes or smaller",
            }
        problems = self.validator.check_batch_item(item)
        if problems:
            return {"reason": "invalid", "field": problems[0].field, "message": _describe(problems)}
        if self.config.reject_anonymous_batch and _names_anonymous(item):
            return {
                "reason": "invalid",
                "field": "identifiers",
                "message": "identifiers must be one of id, email, phone or cio_id (sandbox fault)",
            }
        if self._poisoned(item) and item.get("action") in _EVENT_ACTIONS:
            return {
                "reason": "invalid",
                "field": "name",
                "message": f"event name {item['name']!r} is rejected by this sandbox",
            }
        return None

    async def entity(self, request: Request, body: bytes) -> object:
        if len(body) > ITEM_MAX_BYTES:
            raise _Reply(413, _v2_error("", f"the body must be {ITEM_MAX_BYTES} bytes or smaller"))
        item = self._parse(body, v2=True)
        error = self._item_error(item, check_size=False)
        if error is not None:
            raise _Reply(400, {"errors": [error]})
        try:
            self.workspace.apply_item(item)
        except WorkspaceError as exc:
            raise _Reply(400, _v2_error(exc.field, exc.message, exc.reason)) from exc
        return None

    # -- v1 --------------------------------------------------------------------------

    def _v1_body(self, operation_id: str, body: bytes) -> dict[str, Any]:
        data = self._parse(body, v2=False)
        if not isinstance(data, dict):
            raise _Reply(400, _v1_error("the body must be a JSON object"))
        problems = self.validator.check_request(operation_id, data)
        if problems:
            raise _Reply(400, _v1_error(_describe(problems)))
        return data

    @staticmethod
    def _identifier(request: Request) -> str:
        # From the raw path, so a percent-encoded "/" stays inside the identifier; the app
        # may be mounted under a prefix (``serve --sandbox``).
        raw = request.scope.get("raw_path") or request.url.path.encode()
        path = raw.decode("latin-1").split("?", 1)[0]
        _, _, rest = path.partition("/api/v1/customers/")
        return unquote(rest.split("/", 1)[0])

    async def v1_identify(self, request: Request, body: bytes) -> object:
        data = self._v1_body("identify", body)
        self._v1_apply(lambda: self.workspace.v1_identify(self._identifier(request), data))
        return None

    async def v1_track(self, request: Request, body: bytes) -> object:
        data = self._v1_body("track", body)
        if self._poisoned(data):
            raise _Reply(400, _v1_error(f"event name {data['name']!r} is rejected by this sandbox"))
        self._v1_apply(lambda: self.workspace.v1_track(self._identifier(request), data))
        return None

    async def v1_anonymous_event(self, request: Request, body: bytes) -> object:
        data = self._v1_body("trackAnonymous", body)
        anonymous_id = data.get("anonymous_id")
        if not isinstance(anonymous_id, str) or not anonymous_id:
            # Customer.io would record an "invite" event; the connector must never send one.
            raise _Reply(400, _v1_error("anonymous_id is required (sandbox refuses invite events)"))
        if self._poisoned(data):
            raise _Reply(400, _v1_error(f"event name {data['name']!r} is rejected by this sandbox"))
        self._v1_apply(lambda: self.workspace.v1_anonymous_event(data))
        return None

    async def v1_delete(self, request: Request, body: bytes) -> object:
        self._v1_apply(lambda: self.workspace.v1_delete(self._identifier(request)))
        return None

    async def v1_suppress(self, request: Request, body: bytes) -> object:
        self._v1_apply(lambda: self.workspace.v1_suppress(self._identifier(request)))
        return None

    async def v1_unsuppress(self, request: Request, body: bytes) -> object:
        self._v1_apply(lambda: self.workspace.v1_unsuppress(self._identifier(request)))
        return None

    async def v1_merge(self, request: Request, body: bytes) -> object:
        data = self._parse(body, v2=False)
        problems = self.validator.check_request("merge", data)
        if problems:
            raise _Reply(400, {"meta": {"error": _describe(problems)}})
        try:
            self.workspace.v1_merge(data)
        except WorkspaceError as exc:
            raise _Reply(400, {"meta": {"error": exc.message}}) from exc
        return None

    async def region(self, request: Request, body: bytes) -> object:
        raise _Reply(200, REGION)

    @staticmethod
    def _v1_apply(apply: Callable[[], None]) -> None:
        try:
            apply()
        except WorkspaceError as exc:
            raise _Reply(400, _v1_error(f"{exc.field}: {exc.message}")) from exc

    # -- control and inspection ------------------------------------------------------

    async def set_faults(self, request: Request) -> Response:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _json(_v2_error("", "the body must be JSON"), 400)
        if not isinstance(data, dict):
            return _json(_v2_error("", "the body must be a JSON object"), 400)
        changes: dict[str, Any] = {}
        for key, value in data.items():
            accepted = _FAULT_FIELDS.get(key)
            if accepted is None:
                return _json(_v2_error(key, "unknown fault setting"), 400)
            if not isinstance(value, accepted) or (
                isinstance(value, bool) and bool not in accepted
            ):
                return _json(_v2_error(key, "wrong type"), 400)
            if isinstance(value, list):
                value = frozenset(str(v) for v in value)
            changes[key] = value
        if not 0.0 <= float(changes.get("fail_rate", 0.0)) <= 1.0:
            return _json(_v2_error("fail_rate", "must be between 0 and 1"), 400)
        rps = changes.get("rate_limit_rps")
        if rps is not None and rps <= 0:
            return _json(_v2_error("rate_limit_rps", "must be > 0, or null for no limit"), 400)
        self._set_faults(replace(self.config, **changes))
        return _json(self.faults_json())

    async def get_faults(self, request: Request) -> Response:
        return _json(self.faults_json())

    async def reset(self, request: Request) -> Response:
        self.workspace.reset()
        self.log = _RequestLog()
        self._set_faults(self.config)
        return _json({})

    async def people(self, request: Request) -> Response:
        return _json([p.summary() for p in self.workspace.people.values()])

    async def person(self, request: Request) -> Response:
        person = self.workspace.person_by_id_or_email(request.path_params["key"])
        if person is None:
            return _json({"error": "no such person"}, 404)
        return _json(self.workspace.person_detail(person))

    async def reporting(self, request: Request) -> Response:
        """Send signed reporting webhooks about one person (``sandbox/reporting.py``)."""
        from posthog_customerio.customerio.sandbox.reporting import send_reporting

        try:
            spec = orjson.loads(await request.body())
            person = self.workspace.person_by_id_or_email(str(spec["person"]))
            url, key = str(spec["url"]), str(spec["signing_key"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _json({"error": "need JSON with person, url and signing_key"}, 400)
        if person is None:
            return _json({"error": "no such person"}, 404)
        sent = await send_reporting(
            person,
            url,
            key,
            metrics=list(spec.get("metrics") or ["delivered", "opened", "clicked"]),
            object_type=str(spec.get("object_type", "email")),
            wrong_signature=bool(spec.get("wrong_signature", False)),
            repeat=int(spec.get("repeat", 1)),
        )
        return _json({"sent": sent})

    async def anonymous_events(self, request: Request) -> Response:
        return _json(self.workspace.anonymous_events_json())

    async def objects(self, request: Request) -> Response:
        return _json(self.workspace.objects_json())

    async def requests(self, request: Request) -> Response:
        try:
            since = int(request.query_params.get("since", "0"))
            limit = min(10_000, max(1, int(request.query_params.get("limit", "1000"))))
        except ValueError:
            return _json(_v2_error("since", "since and limit must be integers"), 400)
        return _json(self.log.since(since, limit))

    async def stats(self, request: Request) -> Response:
        return _json(
            {
                "requests_total": self.log.seq,
                "requests_by_status": {str(k): v for k, v in sorted(self.log.by_status.items())},
                **self.workspace.stats(),
            }
        )


def create_sandbox_app(config: SandboxConfig | None = None) -> Starlette:
    """The sandbox as an ASGI app; ``app.state.sandbox`` holds its state (for tests)."""
    sandbox = _Sandbox(config or SandboxConfig(), default_validator())
    t = sandbox.track
    customer = "/api/v1/customers/{identifier:path}"
    routes = [
        Route("/api/v1/accounts/region", t(sandbox.region, v2=False), methods=["GET"]),
        Route("/api/v2/batch", t(sandbox.batch), methods=["POST"]),
        Route("/api/v2/entity", t(sandbox.entity), methods=["POST"]),
        Route("/api/v1/events", t(sandbox.v1_anonymous_event, v2=False), methods=["POST"]),
        Route(customer, t(sandbox.v1_identify, v2=False), methods=["PUT"]),
        Route(customer, t(sandbox.v1_delete, v2=False), methods=["DELETE"]),
        Route(f"{customer}/events", t(sandbox.v1_track, v2=False), methods=["POST"]),
        Route(f"{customer}/suppress", t(sandbox.v1_suppress, v2=False), methods=["POST"]),
        Route(f"{customer}/unsuppress", t(sandbox.v1_unsuppress, v2=False), methods=["POST"]),
        Route("/api/v1/merge_customers", t(sandbox.v1_merge, v2=False), methods=["POST"]),
        Route("/_sandbox/faults", sandbox.set_faults, methods=["POST"]),
        Route("/_sandbox/faults", sandbox.get_faults, methods=["GET"]),
        Route("/_sandbox/reset", sandbox.reset, methods=["POST"]),
        Route("/_sandbox/people", sandbox.people, methods=["GET"]),
        Route("/_sandbox/people/{key:path}", sandbox.person, methods=["GET"]),
        Route("/_sandbox/anonymous_events", sandbox.anonymous_events, methods=["GET"]),
        Route("/_sandbox/reporting", sandbox.reporting, methods=["POST"]),
        Route("/_sandbox/objects", sandbox.objects, methods=["GET"]),
        Route("/_sandbox/requests", sandbox.requests, methods=["GET"]),
        Route("/_sandbox/stats", sandbox.stats, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = sandbox
    return app


def _uvicorn_config(app: Starlette, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, lifespan="off"
    )


def run_sandbox(
    host: str = "127.0.0.1",
    port: int = 8788,
    config: SandboxConfig | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the sandbox until interrupted (blocking)."""
    config = config or SandboxConfig()
    log.warning("Customer.io sandbox on http://%s:%d (site_id=%s)", host, port, config.site_id)
    uvicorn.Server(_uvicorn_config(create_sandbox_app(config), host, port, log_level)).run()


class SandboxServer:
    """The sandbox on a loopback port in a background thread, for tests and demos.

    ``with SandboxServer(config) as server: httpx.get(server.url + "/_sandbox/people")``.
    """

    def __init__(self, config: SandboxConfig | None = None, host: str = "127.0.0.1") -> None:
        self.config = config or SandboxConfig()
        self.app = create_sandbox_app(self.config)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._server = uvicorn.Server(_uvicorn_config(self.app, self.host, self.port, "warning"))
        self._thread = threading.Thread(target=self._run, name="cio-sandbox", daemon=True)

    def _run(self) -> None:
        self._server.run(sockets=[self._socket])

    def start(self) -> SandboxServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sandbox did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
