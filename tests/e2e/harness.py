"""Real processes on loopback: the sandbox and ``serve`` as subprocesses.

Every end-to-end test drives the connector exactly as an operator would: a command line,
environment variables, HTTP on 127.0.0.1, and real signals.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
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
        self,
        log_dir: Path,
        data_dir: Path,
        sandbox: Sandbox | None,
        *args: str,
        env_credentials: bool = True,
        **env: str,
    ) -> None:
        self.log_dir = log_dir
        self.data_dir = data_dir
        self.sandbox = sandbox
        self.args = args
        self.env = env
        self.env_credentials = env_credentials  # False: the credentials come from --config
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
        if self.sandbox is not None and self.env_credentials:
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
        time.sleep(1.1)  # /api/status caches queue stats for up to 1 s: never trust an old 0
        wait_until(lambda: self.status()["queue"]["depth"] == 0, timeout=timeout)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.popen.send_signal(sig)

    def admin(self, path: str, body: Any, **headers: str) -> httpx.Response:
        """A state-changing admin request, as the status page sends it."""
        return self.http.post(
            path, json=body, headers={"X-Requested-With": "posthog-customerio", **headers}
        )

    def metric(self, name: str) -> float:
        """The sum of every sample of ``posthog_customerio_<name>`` on /metrics."""
        total = 0.0
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(f"posthog_customerio_{name}") and not line.startswith("#"):
                head, _, value = line.rpartition(" ")
                if head.split("{", 1)[0] == f"posthog_customerio_{name}":
                    total += float(value)
        return total

    def close(self) -> None:
        self.http.close()
        if self.proc is not None:
            self.proc.close()


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "posthog_customerio", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        env=base_env(**(env or {})),
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


# --- event streams and what the sandbox received ----------------------------------------


def make_event(i: int, users: int = 40, name: str = "step_done") -> dict[str, Any]:
    """Event number ``i`` of a stream: a UUIDv7-shaped uuid, ``properties.seq = i``."""
    user = f"crash_user_{i % users}"
    return {
        "event": {
            "uuid": f"01930000-{i // 65536:04x}-7{i % 4096:03x}-8000-{i:012x}",
            "event": name,
            "distinct_id": user,
            "timestamp": f"2024-10-01T12:{(i // 60) % 60:02d}:{i % 60:02d}.000Z",
            "properties": {"$is_identified": True, "seq": i, "$set": {"last_seq": i}},
        },
        "person": {"properties": {"email": f"{user}@example.com"}},
    }


class EventStream(threading.Thread):
    """One sender posting ``make_event(0..total)`` in batches, in order, retrying each refused
    or failed post like PostHog does; ``acked`` lists the seqs that got a 200."""

    def __init__(
        self,
        serve: Serve,
        total: int,
        *,
        batch: int = 5,
        users: int = 40,
        pause_secs: float = 0.0,
        make: Callable[[int, int], dict[str, Any]] = make_event,
    ) -> None:
        super().__init__(daemon=True)
        self.serve, self.total, self.batch, self.users = serve, total, batch, users
        self.pause_secs = pause_secs
        self.make = make
        self.acked: list[int] = []
        self.refused: Counter[int | str] = Counter()  # status (or "error") of refused posts
        self.stopping = threading.Event()

    def run(self) -> None:
        i = 0
        with httpx.Client(timeout=10) as client:
            while i < self.total and not self.stopping.is_set():
                batch = [
                    self.make(j, self.users) for j in range(i, min(i + self.batch, self.total))
                ]
                try:
                    r = client.post(f"{self.serve.url}/webhook", json={"batch": batch})
                except httpx.HTTPError:
                    self.refused["error"] += 1
                    time.sleep(0.05)
                    continue
                if r.status_code == 200:
                    self.acked.extend(range(i, i + len(batch)))
                    i += len(batch)
                    if self.pause_secs:
                        time.sleep(self.pause_secs)
                else:
                    self.refused[r.status_code] += 1
                    time.sleep(0.05)

    def finish(self, timeout: float = 300) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the event stream did not finish"

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def person_seqs(sandbox: Sandbox, name: str = "step_done") -> dict[str, list[int]]:
    """Per person, the ``seq`` of each stored event called ``name``, in stored order."""
    seqs: dict[str, list[int]] = defaultdict(list)
    for person in sandbox.people():
        full = sandbox.person(person["id"])
        assert full is not None
        for ev in full["events"]:
            if ev["name"] == name:
                data = ev.get("data") or ev.get("attributes") or {}
                seqs[person["id"]].append(int(data["seq"]))
    return seqs


def assert_delivered_once_in_order(
    sandbox: Sandbox, expected: list[int], name: str = "step_done"
) -> None:
    seqs = person_seqs(sandbox, name)
    delivered = sorted(s for user in seqs.values() for s in user)
    assert delivered == sorted(expected), "missing or duplicated events"
    for user, got in seqs.items():
        assert got == sorted(got), f"order broken for {user}"


def accepted_event_ids(requests: list[dict[str, Any]]) -> Counter[str]:
    """How many times Customer.io (the sandbox) accepted each event id, from its request log:
    items of 200 batches, items of 207 batches not listed as failed, 200 anonymous events."""
    accepted: Counter[str] = Counter()
    for req in requests:
        body = req.get("body")
        if req["status"] not in (200, 207) or not isinstance(body, dict):
            continue
        if req["path"].endswith("/api/v2/batch"):
            failed = set()
            if req["status"] == 207 and isinstance(req.get("response"), dict):
                failed = {e.get("batch_index") for e in req["response"].get("errors", [])}
            for index, item in enumerate(body.get("batch", [])):
                if index not in failed and isinstance(item, dict) and item.get("id"):
                    accepted[str(item["id"])] += 1
        elif req["path"].endswith("/api/v1/events") and body.get("id"):
            accepted[str(body["id"])] += 1
    return accepted


def record_figures(test: str, figures: dict[str, Any]) -> None:
    """Print a test's figures (``pytest -s`` shows them) and, with ``RELIABILITY_SUMMARY``
    set, merge them into that JSON file (docs/reliability.md copies them)."""
    print(f"\nRELIABILITY {test} {json.dumps(figures, sort_keys=True)}")
    path = os.environ.get("RELIABILITY_SUMMARY")
    if path:
        target = Path(path)
        data = json.loads(target.read_text()) if target.exists() else {}
        data[test] = figures
        target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def running(*things: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for t in reversed(things):
            t.close()
