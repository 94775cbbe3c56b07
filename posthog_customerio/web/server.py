"""Run ``serve``: bind the socket, wire the connector and the app, hand over to uvicorn.

We bind the socket ourselves so ``--port 0`` works and the embedded sandbox URL is known before
delivery starts. uvicorn turns SIGTERM/SIGINT into a graceful shutdown: stop accepting, finish
open requests, then the app's lifespan drains delivery (``Connector.stop``).
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable

import uvicorn

from posthog_customerio.runtime import Connector, delivery_target
from posthog_customerio.settings import Settings
from posthog_customerio.web.app import create_app

log = logging.getLogger("posthog_customerio.server")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _after_graceful_shutdown(signum: int, frame: object) -> None:
    """uvicorn already shut down gracefully on this signal; nothing is left to do."""


def run_server(settings: Settings, reload_settings: Callable[[], Settings] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; with ``reload_settings``, SIGHUP re-reads the config."""
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    local = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "localhost") else settings.host
    own_url = f"http://{'[' + local + ']' if ':' in local else local}:{port}"
    target = delivery_target(settings, own_url)
    sandbox_app = None
    if target.sandbox:
        from posthog_customerio.customerio.sandbox import SandboxConfig, create_sandbox_app

        site, key = target.site_id, target.api_key
        sandbox_app = create_sandbox_app(SandboxConfig(site_id=site, api_key=key))
        log.warning(
            "SANDBOX MODE: nothing is sent to Customer.io; events go to the embedded sandbox",
            extra={"ctx": {"sandbox": f"{own_url}/sandbox/_sandbox/people"}},
        )
    connector = Connector(settings, target, reload_settings=reload_settings)
    app = create_app(connector, sandbox_app)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(settings.delivery.shutdown_grace_secs) + 1,
        server_header=False,
    )
    server = uvicorn.Server(config)
    # Until the connector takes SIGHUP over (reload), it must not kill the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, to the handlers it found
    # here; with these, a drained shutdown exits 0 (DESIGN.md §5) instead of dying by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _after_graceful_shutdown)
    log.info("listening", extra={"ctx": {"url": f"http://{settings.host}:{port}"}})
    server.run(sockets=[sock])
