"""``python3 dev.py serve``, the README's run command, stops as cleanly as ``serve`` itself.

dev.py passes Ctrl-C (SIGINT) and SIGTERM on to the connector and waits for its graceful stop:
no traceback, the connector's exit code, and the SQLite files closed (no WAL left behind).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Proc, base_env, free_port, wait_until
from tests.samples import POSTHOG_SAMPLES, REPO

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_dev_serve_passes_the_signal_on_and_waits(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    data = tmp_path / "data"
    argv = [sys.executable, str(REPO / "dev.py"), "serve", "--port", str(port)]
    proc = Proc("dev-serve", [*argv, "--data-dir", str(data)], base_env(), tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: proc.popen.poll() is None and httpx.get(f"{url}/healthz").is_success)
        body = (POSTHOG_SAMPLES / "webhook-identify.json").read_bytes()
        headers = {"content-type": "application/json"}
        for _ in range(5):  # delivery to the embedded sandbox is under way when the signal comes
            assert httpx.post(f"{url}/webhook", content=body, headers=headers).is_success
        proc.popen.send_signal(sig)  # to dev.py alone, as `kill` would
        code = proc.popen.wait(60)
    finally:
        proc.close()
        with contextlib.suppress(ProcessLookupError):  # a connector dev.py left behind
            os.killpg(proc.popen.pid, signal.SIGKILL)
    out = proc.output()
    assert code == 0, out
    assert "Traceback" not in out, out
    assert 'msg="connector stopped"' in out, out
    assert not list(data.glob("*-wal")), sorted(p.name for p in data.iterdir())
