"""deploy/grafana-dashboard.json: importable as is, and only about metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from posthog_customerio.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
# DESIGN.md §8, the names every deployment may rely on.
DESIGN_METRICS = [
    "posthog_customerio_events_received_total",
    "posthog_customerio_events_dropped_total",
    "posthog_customerio_operations_delivered_total",
    "posthog_customerio_operations_dead_lettered_total",
    "posthog_customerio_requests_total",
    "posthog_customerio_request_duration_seconds",
    "posthog_customerio_queue_depth_operations",
    "posthog_customerio_queue_oldest_age_seconds",
    "posthog_customerio_delivery_latency_seconds",
]
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
METRIC_NAME = re.compile(r"\b((?:posthog_customerio|process)_[a-z0-9_]+)\b")


def exported_names() -> set[str]:
    """Every series name the connector's /metrics can show."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(s.name for s in family.samples)
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in dashboard["panels"] for t in p.get("targets", [])]


def test_is_importable_with_a_prometheus_datasource_input(dashboard: dict[str, Any]) -> None:
    (ds,) = dashboard["__inputs"]
    assert ds["type"] == "datasource"
    assert ds["pluginId"] == "prometheus"
    ref = "${" + ds["name"] + "}"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == ref, panel["title"]
        assert all(t["datasource"]["uid"] == ref for t in panel["targets"]), panel["title"]
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_expr_names_an_existing_metric(dashboard: dict[str, Any]) -> None:
    exported = exported_names()
    assert targets(dashboard)
    for target in targets(dashboard):
        names = METRIC_NAME.findall(target["expr"])
        assert names, target["expr"]
        for name in names:
            assert name in exported, f"{name} (in {target['expr']!r}) is not exported"


def test_every_design_metric_is_exported_and_charted(dashboard: dict[str, Any]) -> None:
    exported = exported_names()
    exprs = " ".join(t["expr"] for t in targets(dashboard))
    for name in DESIGN_METRICS:
        assert name in exported or name + "_bucket" in exported, name
        assert name in exprs, f"no panel shows {name}"
    assert "histogram_quantile(0.99" in exprs
    for family in ("credentials_ok", "rate_limit_requests_per_second", "dead_lettered"):
        assert family in exprs
