"""The one admin auth rule (``web.admin.admin_denied``), as a table of requests."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from posthog_customerio.web.admin import admin_denied, is_loopback_host

TOKEN = "admin-token-for-tests"
CSRF = ("x-requested-with", "posthog-customerio")


def request(
    method: str = "GET",
    client: str = "127.0.0.1",
    host: str = "127.0.0.1:8787",
    headers: tuple[tuple[str, str], ...] = (),
) -> Request:
    raw = [(b"host", host.encode()), *((k.encode(), v.encode()) for k, v in headers)]
    scope = {
        "type": "http",
        "method": method,
        "path": "/admin/dead-letters",
        "headers": raw,
        "client": (client, 50000),
        "query_string": b"",
    }
    return Request(scope)


def bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


@pytest.mark.parametrize(
    ("req", "token", "status"),
    [
        pytest.param(request(), None, None, id="loopback-get"),
        pytest.param(request(host="[::1]:8787", client="::1"), None, None, id="ipv6-loopback"),
        pytest.param(request(host="localhost:8787"), None, None, id="localhost-name"),
        pytest.param(request(client="10.0.0.5"), None, 403, id="remote-client-no-token"),
        pytest.param(request(host="evil.example:8787"), None, 403, id="dns-rebinding-host"),
        pytest.param(request(method="POST"), None, 403, id="post-without-csrf-header"),
        pytest.param(request(method="POST", headers=(CSRF,)), None, None, id="post-with-header"),
        pytest.param(
            request(method="POST", headers=(CSRF, ("origin", "http://127.0.0.1:8787"))),
            None,
            None,
            id="same-origin",
        ),
        pytest.param(
            request(method="POST", headers=(CSRF, ("origin", "http://evil.example"))),
            None,
            403,
            id="cross-origin",
        ),
        pytest.param(
            request(method="POST", headers=(CSRF, ("origin", "null"))), None, 403, id="null-origin"
        ),
        pytest.param(request(), TOKEN, 401, id="token-set-loopback-is-not-enough"),
        pytest.param(request(headers=(bearer("wrong"),)), TOKEN, 401, id="wrong-token"),
        pytest.param(
            request(client="10.0.0.5", host="connector.internal", headers=(bearer(TOKEN),)),
            TOKEN,
            None,
            id="remote-with-token",
        ),
        pytest.param(
            request(method="POST", client="10.0.0.5", headers=(bearer(TOKEN),)),
            TOKEN,
            403,
            id="token-post-still-needs-csrf-header",
        ),
        pytest.param(
            request(method="POST", headers=(bearer(TOKEN), CSRF)), TOKEN, None, id="token-post"
        ),
    ],
)
def test_admin_denied(req: Request, token: str | None, status: int | None) -> None:
    refusal = admin_denied(req, token)
    assert (refusal.status_code if refusal is not None else None) == status
    if refusal is not None:
        assert TOKEN.encode() not in bytes(refusal.body)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("10.0.0.1", False),
        ("example.com", False),
        ("", False),
        ("testclient", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
