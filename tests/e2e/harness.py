"""Real processes on loopback: the sandbox and ``serve`` as subprocesses.

Every end-to-end test drives the connector exactly as an operator would: a command line,
environment variables, HTTP on 127.0.0.1, and real signals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

SITE_ID = "e2e-site"
API_KEY = "e2e-secret-key-7f3a9c"  # grepped for in every output: it must never appear


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


class Proc:
    """A subprocess with its output in a file, stopped on exit."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.popen.returncode)

    def close(self) -> None:
        self.terminate(15)
        self._log.close()


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUSTOMERIO_", "POSTHOG_"))}
    env.update(extra)
    return env


class Sandbox:
    def __init__(self, log_dir: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "posthog_customerio", "sandbox", "--port", str(self.port)]
        argv += ["--site-id", SITE_ID, "--api-key", API_KEY, *args]
        self.proc = Proc(f"sandbox-{self.port}", argv, base_env(), log_dir)
        self.http = httpx.Client(base_url=self.url, timeout=10)
        wait_until(lambda: self.http.get("/_sandbox/stats").status_code == 200)

    def people(self) -> list[dict[str, Any]]:
        return list(self.http.get("/_sandbox/people").json())

    def person(self, ident: str) -> dict[str, Any] | None:
        r = self.http.get(f"/_sandbox/people/{ident}")
        return None if r.status_code == 404 else dict(r.json())

    def requests(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        since = 0
        while True:
            page = self.http.get("/_sandbox/requests", params={"since": since}).json()
            rows = page["requests"] if isinstance(page, dict) else page
            if not rows:
                return out
            out.extend(rows)
            since = rows[-1]["seq"]

    def stats(self) -> dict[str, Any]:
        return dict(self.http.get("/_sandbox/stats").json())

    def faults(self, **faults: Any) -> dict[str, Any]:
        return dict(self.http.post("/_sandbox/faults", json=faults).json())

    def close(self) -> None:
        self.http.close()
        self.proc.close()


class Serve:
    """``posthog-customerio serve`` pointed at a sandbox, on its own data dir."""

    def __init__(
        self, log_dir: Path, data_dir: Path, sandbox: Sandbox | None, *args: str, **env: str
    ) -> None:
        self.log_dir = log_dir
        self.data_dir = data_dir
        self.sandbox = sandbox
        self.args = args
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.proc: Proc | None = None
        self.start()

    def start(self) -> None:
        if self.proc is not None:
            self.proc.close()  # a restart after kill(): release the old log file
        extra = {
            "POSTHOG_CUSTOMERIO_BATCH_LINGER_SECS": "0.05",
            "POSTHOG_CUSTOMERIO_RETRY_INITIAL_BACKOFF_SECS": "0.05",
            "POSTHOG_CUSTOMERIO_RETRY_MAX_BACKOFF_SECS": "0.5",
            **self.env,
        }
        if self.sandbox is not None:
            extra.update(
                CUSTOMERIO_SITE_ID=SITE_ID,
                CUSTOMERIO_API_KEY=API_KEY,
                CUSTOMERIO_TRACK_URL=self.sandbox.url,
            )
        argv = [sys.executable, "-m", "posthog_customerio", "serve", "--port", str(self.port)]
        argv += ["--data-dir", str(self.data_dir), *self.args]
        n = len(list(self.log_dir.glob(f"serve-{self.port}*.log")))
        self.proc = Proc(f"serve-{self.port}-{n}", argv, base_env(**extra), self.log_dir)
        wait_until(self._healthy)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.popen.poll() is not None:
            raise AssertionError(f"serve exited early:\n{self.proc.output()}")
        return self.http.get("/healthz").status_code == 200

    def post(self, body: Any, **kw: Any) -> httpx.Response:
        return self.http.post("/webhook", json=body, **kw)

    def status(self) -> dict[str, Any]:
        return dict(self.http.get("/api/status").json())

    def wait_drained(self, timeout: float = 60) -> None:
        wait_until(lambda: self.status()["queue"]["depth"] == 0, timeout=timeout)

    def close(self) -> None:
        self.http.close()
        if self.proc is not None:
            self.proc.close()


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "posthog_customerio", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        env=base_env(**(env or {})),
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def running(*things: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for t in reversed(things):
            t.close()
