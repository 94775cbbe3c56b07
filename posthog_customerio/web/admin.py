"""Admin HTTP endpoints of ``serve``: dead letters (list, show, replay, purge) and
``POST /admin/forget`` (GDPR erasure of people, as ``posthog-customerio forget``). The work
and the answers' data come from ``posthog_customerio.admin``, which the CLI calls too; this
module checks access and parses requests.

Every admin route goes through ``admin_denied`` (one rule, reuse it for any new admin route):

- with ``admin_token`` set: ``Authorization: Bearer <admin_token>``, compared in constant time;
- without it: only loopback clients, addressing the server by a loopback name
  (``localhost``, ``127.0.0.1``, ``[::1]``) so a DNS-rebinding page cannot reach it;
- state-changing requests (POST) must also carry ``X-Requested-With: posthog-customerio``
  (a cross-site HTML form cannot set a header) and, when the browser sends ``Origin``, it must
  match ``Host`` (a cross-site script cannot forge it). The status page sends that header.

Answers: ``401`` without the token, ``403`` for everything else refused, ``400`` naming the bad
field of a JSON body. Nothing returned contains a credential: dead letters keep the request
they carried with its ``Authorization`` already redacted.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from posthog_customerio import admin
from posthog_customerio.admin import Selection
from posthog_customerio.errors import QueueUnavailable
from posthog_customerio.runtime import Connector
from posthog_customerio.settings import is_loopback_host
from posthog_customerio.web.responses import error_response, json_response

CSRF_HEADER = "x-requested-with"
CSRF_VALUE = "posthog-customerio"
MAX_BODY_BYTES = 1_048_576
MAX_LIST_LIMIT = 10_000
MAX_FORGET_IDS = 1_000
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[Request], Awaitable[Response]]


def _host_name(host_header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8787`` → ``::1``)."""
    return urlsplit(f"//{host_header}").hostname or ""


def admin_denied(request: Request, admin_token: str | None) -> Response | None:
    """None if ``request`` may use admin routes, else the response refusing it."""
    if admin_token:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), admin_token.encode()
        ):
            return error_response(401, "missing or wrong Authorization: Bearer <admin token>")
    else:
        client = request.client.host if request.client is not None else ""
        if not is_loopback_host(client) or not is_loopback_host(
            _host_name(request.headers.get("host", ""))
        ):
            return error_response(
                403, "admin endpoints need admin_token, or a loopback client and address"
            )
    if request.method not in SAFE_METHODS:
        if request.headers.get(CSRF_HEADER, "").strip().lower() != CSRF_VALUE:
            return error_response(
                403, f"state-changing admin requests need X-Requested-With: {CSRF_VALUE}"
            )
        origin = request.headers.get("origin")
        if (
            origin is not None
            and urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()
        ):
            return error_response(
                403, "Origin does not match Host: cross-site admin request refused"
            )
    return None


class _BadRequest(Exception):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message


def _number(value: str | None, name: str, *, integer: bool = False) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        raise _BadRequest(name, "must be a number") from None
    if number != number or number < 0:
        raise _BadRequest(name, "must be a number >= 0")
    return number


async def _json_object(request: Request) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _BadRequest("", f"body is over {MAX_BODY_BYTES} bytes")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _BadRequest("", "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise _BadRequest("", "body must be a JSON object")
    return data


def _forget_request(data: dict[str, Any]) -> tuple[list[str], bool]:
    """``{"distinct_ids": ["..."], "suppress": false}`` → (ids, suppress)."""
    unknown = sorted(set(data) - {"distinct_ids", "suppress"})
    if unknown:
        raise _BadRequest(unknown[0], "unknown field (use distinct_ids, suppress)")
    ids = data.get("distinct_ids")
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, str) and i for i in ids)
        or len(ids) > MAX_FORGET_IDS
    ):
        raise _BadRequest(
            "distinct_ids", f"must be an array of 1 to {MAX_FORGET_IDS} non-empty strings"
        )
    suppress = data.get("suppress", False)
    if not isinstance(suppress, bool):
        raise _BadRequest("suppress", "must be true or false")
    return list(ids), suppress  # admin.forget takes each id once


async def _selection(request: Request) -> Selection:
    """The dead letters a replay/purge body selects: ``{"ids": [...]}``, ``{"all": true}``
    or ``{"reason": "...", "since": <unix seconds>}`` (either or both)."""
    data = await _json_object(request)
    unknown = sorted(set(data) - {"ids", "all", "reason", "since"})
    if unknown:
        raise _BadRequest(unknown[0], "unknown field (use ids, all, or reason/since)")
    modes = [k for k in ("ids", "all") if k in data] + (
        ["filter"] if "reason" in data or "since" in data else []
    )
    if len(modes) != 1:
        raise _BadRequest("", 'give exactly one of "ids", "all": true, or "reason"/"since"')
    if "ids" in data:
        ids = data["ids"]
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        ):
            raise _BadRequest("ids", "must be a non-empty array of integer ids")
        return Selection(ids=tuple(ids))
    if "all" in data:
        if data["all"] is not True:
            raise _BadRequest("all", "must be true")
        return Selection()
    reason = data.get("reason")
    if reason is not None and (not isinstance(reason, str) or not reason):
        raise _BadRequest("reason", "must be a non-empty string")
    since = data.get("since")
    if since is not None and (
        isinstance(since, bool) or not isinstance(since, int | float) or since < 0
    ):
        raise _BadRequest("since", "must be Unix seconds (a number >= 0)")
    return Selection(reason=reason, since=float(since) if since is not None else None)


def admin_routes(connector: Connector) -> list[Route]:
    """The admin routes; each checks ``admin_denied`` against the live settings."""

    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            token = connector.settings.admin_token
            refusal = admin_denied(request, token.get_secret_value() if token else None)
            if refusal is not None:
                return refusal
            try:
                return await handler(request)
            except _BadRequest as exc:
                return error_response(400, exc.message, exc.field)
            except QueueUnavailable as exc:
                return error_response(503, f"queue unavailable, retry later: {exc}")

        return endpoint

    async def list_dead_letters(request: Request) -> Response:
        params = request.query_params
        since = _number(params.get("since"), "since")
        limit = _number(params.get("limit"), "limit", integer=True)
        letters = await admin.list_dead_letters(
            connector.queue,
            reason=params.get("reason") or None,
            since=since,
            limit=min(int(limit) if limit is not None else 100, MAX_LIST_LIMIT),
        )
        return json_response({"dead_letters": letters, "count": len(letters)})

    async def show_dead_letter(request: Request) -> Response:
        letter = await admin.show_dead_letter(connector.queue, int(request.path_params["id"]))
        if letter is None:
            return error_response(404, f"no dead letter with id {request.path_params['id']}")
        return json_response(letter)

    async def replay(request: Request) -> Response:
        n = await admin.replay(connector.queue, await _selection(request), via="http")
        return json_response({"replayed": n})

    async def purge(request: Request) -> Response:
        n = await admin.purge(connector.queue, await _selection(request), via="http")
        return json_response({"purged": n})

    async def forget(request: Request) -> Response:
        ids, suppress = _forget_request(await _json_object(request))
        result = await admin.forget(
            connector.queue, connector.mapper, ids, suppress=suppress, via="http"
        )
        return json_response(admin.forget_json(result, suppress))

    return [
        Route("/admin/dead-letters", guarded(list_dead_letters), methods=["GET"]),
        Route("/admin/dead-letters/replay", guarded(replay), methods=["POST"]),
        Route("/admin/dead-letters/purge", guarded(purge), methods=["POST"]),
        Route("/admin/dead-letters/{id:int}", guarded(show_dead_letter), methods=["GET"]),
        Route("/admin/forget", guarded(forget), methods=["POST"]),
    ]


__all__ = ["admin_denied", "admin_routes", "is_loopback_host"]
