"""A full pass with distinctive secrets, then grep everything we output for them.

Story, an outage, a poison item, a 401 period, SIGHUP reload, status, metrics, the status
page, the admin API and the CLI; collected: the serve log, every CLI stdout/stderr and every
HTTP response body. The sandbox's own log of request bodies is not our output; the dead
letters' ``request`` fields are, and are checked.
"""

from __future__ import annotations

import base64
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import (
    API_KEY,
    SITE_ID,
    Sandbox,
    Serve,
    make_event,
    record_figures,
    run_cli,
    wait_until,
)
from tests.samples import POSTHOG_SAMPLES

pytestmark = pytest.mark.e2e

WEBHOOK_SECRET = "hook-S3CR3T-41d2c9e0"
ADMIN_TOKEN = "admin-T0K3N-88ab51f7"
SECRETS = {
    "api_key": API_KEY,
    "webhook_secret": WEBHOOK_SECRET,
    "admin_token": ADMIN_TOKEN,
    "basic_auth": base64.b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode(),
}


def write_config(path: Path, sandbox: Sandbox, rate: int) -> None:
    path.write_text(
        f'site_id = "{SITE_ID}"\napi_key = "{API_KEY}"\ntrack_url = "{sandbox.url}"\n'
        f'webhook_secret = "{WEBHOOK_SECRET}"\nadmin_token = "{ADMIN_TOKEN}"\n'
        f"[delivery]\nrate_limit_rps = {rate}\ncredentials_recheck_secs = 1\n"
    )
    path.chmod(0o600)


def test_no_secret_in_any_output(tmp_path: Path, sandbox: Sandbox) -> None:
    cfg = tmp_path / "connector.toml"
    write_config(cfg, sandbox, 100)
    serve = Serve(tmp_path, tmp_path / "data", sandbox, "--config", str(cfg), env_credentials=False)
    outputs: list[tuple[str, str]] = []
    hook = {"Authorization": f"Bearer {WEBHOOK_SECRET}"}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Requested-With": "posthog-customerio"}

    def keep(what: str, r: httpx.Response) -> httpx.Response:
        outputs.append((what, r.text))
        return r

    def cli(*args: str) -> None:
        r = run_cli(*args)
        outputs.append((f"cli {' '.join(args)}", r.stdout + r.stderr))
        assert r.returncode == 0, (args, r.stdout, r.stderr)  # a failed command checks nothing

    try:
        sandbox.faults(reject_event_names=["poison_event"])
        events = [make_event(i) for i in range(20)]
        events.append(make_event(20, name="poison_event"))
        keep("webhook", serve.post({"batch": events}, headers=hook))
        keep("webhook without secret", serve.post({"batch": events}))
        keep("webhook bad json", serve.http.post("/webhook", content=b"{", headers=hook))
        serve.wait_drained()

        sandbox.faults(fail_rate=1.0, reject_event_names=[])  # an outage
        keep("webhook", serve.post({"batch": [make_event(i) for i in range(21, 30)]}, headers=hook))
        time.sleep(1.0)
        sandbox.faults(fail_rate=0.0, reject_credentials=True)  # then a 401 period
        keep("webhook", serve.post({"batch": [make_event(i) for i in range(30, 40)]}, headers=hook))
        wait_until(lambda: serve.http.get("/readyz").status_code == 503)
        keep("readyz", serve.http.get("/readyz"))
        cli("status", "--port", str(serve.port))
        sandbox.faults(reject_credentials=False)
        serve.wait_drained()

        write_config(cfg, sandbox, 80)
        serve.signal(signal.SIGHUP)
        wait_until(lambda: "rate_limit_rps" in serve.proc.output())  # type: ignore[union-attr]

        for path in ("/healthz", "/readyz", "/metrics", "/api/status", "/"):
            keep(path, serve.http.get(path))
        keep("admin without token", serve.http.get("/admin/dead-letters"))
        keep(
            "admin wrong token",
            serve.http.get("/admin/dead-letters", headers={"Authorization": "Bearer x"}),
        )
        listed = keep("admin list", serve.http.get("/admin/dead-letters", headers=admin)).json()
        assert listed["count"] == 1
        dl_id = listed["dead_letters"][0]["id"]
        keep("admin show", serve.http.get(f"/admin/dead-letters/{dl_id}", headers=admin))
        data = ["--data-dir", str(serve.data_dir)]
        cli("dead-letters", "list", *data)
        cli("dead-letters", "list", "--json", *data)
        cli("dead-letters", "show", str(dl_id), *data)
        cli("status", "--json", "--port", str(serve.port))
        cli("check", "--config", str(cfg))
        cli("explain", str(POSTHOG_SAMPLES / "webhook-custom-event.json"))
        keep(
            "admin replay",
            serve.http.post("/admin/dead-letters/replay", json={"all": True}, headers=admin),
        )
        serve.wait_drained()
        keep(
            "admin purge",
            serve.http.post("/admin/dead-letters/purge", json={"all": True}, headers=admin),
        )
    finally:
        serve.close()
    assert serve.proc is not None
    outputs.append(("serve log", serve.proc.output()))
    assert "rate_limit_rps: 100.0 -> 80.0" in outputs[-1][1]  # the SIGHUP reload happened

    leaks = [(what, name) for what, text in outputs for name, s in SECRETS.items() if s in text]
    assert not leaks, leaks
    stats = sandbox.stats()["requests_by_status"]
    assert {"200", "207", "503", "401"} <= set(stats), stats
    record_figures(
        "secrets",
        {
            "outputs_checked": len(outputs),
            "bytes_checked": sum(len(t) for _, t in outputs),
            "secrets_checked": sorted(SECRETS),
            "sandbox_answers": stats,
            "leaks": 0,
        },
    )
