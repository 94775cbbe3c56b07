"""What an operator's tools see: /metrics with the names of DESIGN.md §8, counts that agree
with Customer.io's (the sandbox's) view, and JSON logs a log pipeline can parse."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import API_KEY, Sandbox, Serve, wait_until
from tests.e2e.traffic import event, identified, mixed_batch

pytestmark = pytest.mark.e2e

DESIGN_METRICS = {
    "posthog_customerio_events_received": "counter",
    "posthog_customerio_events_dropped": "counter",
    "posthog_customerio_operations_delivered": "counter",
    "posthog_customerio_operations_dead_lettered": "counter",
    "posthog_customerio_requests": "counter",
    "posthog_customerio_request_duration_seconds": "histogram",
    "posthog_customerio_queue_depth_operations": "gauge",
    "posthog_customerio_queue_oldest_age_seconds": "gauge",
    "posthog_customerio_delivery_latency_seconds": "histogram",
}


def scrape(serve: Serve) -> dict[str, Any]:
    r = serve.http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def total(families: dict[str, Any], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in families[name].samples
        if s.name == name + "_total" and all(s.labels.get(k) == v for k, v in labels.items())
    )


def by_label(families: dict[str, Any], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in families[name].samples:
        if s.name == name + "_total":
            out[s.labels[label]] = out.get(s.labels[label], 0) + s.value
    return out


def accepted_by_sandbox(sandbox: Sandbox) -> dict[str, int]:
    """Operations the sandbox answered 200 for, by action (v2 items; v1 anonymous events)."""
    counts: dict[str, int] = {}
    for req in sandbox.requests():
        if req["status"] != 200 or req["method"] != "POST":
            continue
        if req["path"] == "/api/v2/batch":
            for item in req["body"]["batch"]:
                counts[item["action"]] = counts.get(item["action"], 0) + 1
        elif req["path"] == "/api/v1/events":
            counts["anonymous"] = counts.get("anonymous", 0) + 1
    return counts


def test_metrics_names_and_counts_match_the_sandbox(serve: Serve, sandbox: Sandbox) -> None:
    rng = random.Random(3)
    posted, duplicates = 0, 0
    for _ in range(15):
        batch = mixed_batch(rng, rng.randint(1, 8))
        duplicates += len(batch) - len({e["uuid"] for e in batch})
        posted += len(batch)
        assert serve.post(batch).status_code == 200
    serve.wait_drained()
    families = wait_until(
        lambda: (
            (f := scrape(serve)) and total(f, "posthog_customerio_events_received") == posted and f
        ),
        timeout=10,
    )
    for name, kind in DESIGN_METRICS.items():
        assert name in families, f"/metrics lacks {name}"
        assert families[name].type == kind, name
    assert "process_resident_memory_bytes" in families
    assert "process_cpu_seconds" in families

    assert total(families, "posthog_customerio_events_received", source="webhook") == posted
    assert total(families, "posthog_customerio_events_dropped", reason="duplicate") == duplicates
    delivered = by_label(families, "posthog_customerio_operations_delivered", "action")
    seen = accepted_by_sandbox(sandbox)
    assert sum(delivered.values()) == sum(seen.values()) > 0, (delivered, seen)
    stats = sandbox.stats()
    assert sum(delivered.values()) == stats["events_stored"] + seen.get("identify", 0), (
        delivered,
        seen,
        stats,
    )
    requests = by_label(families, "posthog_customerio_requests", "status")
    assert requests.get("200", 0) == stats["requests_by_status"]["200"]
    latency = families["posthog_customerio_delivery_latency_seconds"]
    count = next(s.value for s in latency.samples if s.name.endswith("_count"))
    assert count == sum(delivered.values())
    gauges = {
        n: families[n].samples[0].value for n in ("posthog_customerio_queue_depth_operations",)
    }
    assert gauges["posthog_customerio_queue_depth_operations"] == 0


def test_json_logs_one_object_per_line_and_no_secret(tmp_path: Path, sandbox: Sandbox) -> None:
    serve = Serve(tmp_path, tmp_path / "data", sandbox, "--log-format", "json")
    try:
        sandbox.faults(reject_event_names=["poison_event"])
        assert serve.post([identified("signed_up", 1), identified("poison_event", 2)]).is_success
        wait_until(lambda: serve.status()["queue"]["dead_letters"] == 1)
        assert serve.post(event("$pageview", "anon-1")).is_success
        serve.wait_drained()
    finally:
        serve.close()
    assert serve.proc is not None
    output = serve.proc.output()
    assert API_KEY not in output
    lines = [line for line in output.splitlines() if line.strip()]
    records = []
    for line in lines:
        record = json.loads(line)  # every line, not only ours: uvicorn's too
        assert {"ts", "level", "logger", "msg"} <= set(record), line
        records.append(record)
    msgs = [r["msg"] for r in records]
    assert "connector started" in msgs
    assert "connector stopped" in msgs
    dead = [r for r in records if r["msg"] == "dead-lettered"]
    assert len(dead) == 1 and dead[0]["reasons"] == {"rejected": 1}
