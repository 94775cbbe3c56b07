"""The systems under test as subprocesses on loopback: the sandbox and ``serve``.

The benchmarks' own launcher (the end-to-end tests have theirs, tests/e2e/harness.py, with
restarts, logs and faults the benchmarks do not need). The delivery settings ``Serve`` starts
with are part of what the figures in docs/benchmarks.md mean, so they are written out here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

SITE_ID = "bench-site"
API_KEY = "bench-secret-key"

# Short waits, so a drain is timed and not the linger or a backoff; each benchmark may override.
SERVE_DEFAULTS = {
    "POSTHOG_CUSTOMERIO_BATCH_LINGER_SECS": "0.05",
    "POSTHOG_CUSTOMERIO_RETRY_INITIAL_BACKOFF_SECS": "0.05",
    "POSTHOG_CUSTOMERIO_RETRY_MAX_BACKOFF_SECS": "0.5",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = predicate()
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


class _Process:
    """``python -m posthog_customerio ARGS`` with its output in ``log_dir``, healthy on return."""

    def __init__(self, log_dir: Path, args: list[str], env: dict[str, str], health: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)
        own = ("CUSTOMERIO_", "POSTHOG_")  # the caller's settings would change what is measured
        clean = {k: v for k, v in os.environ.items() if not k.startswith(own)}
        argv = [sys.executable, "-m", "posthog_customerio", *args, "--port", str(self.port)]
        self.log_path = log_dir / f"{args[0]}-{self.port}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            argv,
            env={**clean, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: self._healthy(health))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _healthy(self, path: str) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.log_path.name} exited early:\n{self.log_path.read_text()}")
        return self.http.get(path).status_code == 200

    def close(self) -> None:
        self.http.close()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()


class Sandbox(_Process):
    """``posthog-customerio sandbox``: Customer.io's Track API, validating every request."""

    def __init__(self, log_dir: Path, *args: str) -> None:
        argv = ["sandbox", "--site-id", SITE_ID, "--api-key", API_KEY, *args]
        super().__init__(log_dir, argv, {}, "/_sandbox/stats")

    def stats(self) -> dict[str, Any]:
        return dict(self.http.get("/_sandbox/stats").json())

    def faults(self, **faults: Any) -> dict[str, Any]:
        return dict(self.http.post("/_sandbox/faults", json=faults).json())


class Serve(_Process):
    """``posthog-customerio serve`` delivering to ``sandbox``, on its own data dir."""

    def __init__(self, log_dir: Path, data_dir: Path, sandbox: Sandbox, **env: str) -> None:
        env = {
            **SERVE_DEFAULTS,
            **env,
            "CUSTOMERIO_SITE_ID": SITE_ID,
            "CUSTOMERIO_API_KEY": API_KEY,
            "CUSTOMERIO_TRACK_URL": sandbox.url,
        }
        super().__init__(log_dir, ["serve", "--data-dir", str(data_dir)], env, "/healthz")

    def status(self) -> dict[str, Any]:
        return dict(self.http.get("/api/status").json())

    def wait_drained(self, timeout: float = 60) -> None:
        time.sleep(1.1)  # /api/status caches queue stats for up to 1 s: never trust an old 0
        wait_until(lambda: self.status()["queue"]["depth"] == 0, timeout=timeout)
