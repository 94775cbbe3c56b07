"""The export file readers: JSON Lines (plain, gzip), CSV, folders, bad rows, resuming."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from posthog_customerio.errors import InputError
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.export_files import BadRow, FilePosition, discover, read_file

DATA = Path(__file__).resolve().parents[1] / "data"
CSV = DATA / "posthog-events-export.csv"

ROW_STRINGS = {
    "uuid": "0192240b-3a08-72e6-ae97-ba94d0eda82f",
    "event": "$identify",
    "distinct_id": "user_147",
    "team_id": 2,
    "timestamp": "2024-09-24 12:39:28.520+00:00",
    "properties": json.dumps(
        {"$lib": "web", "$is_identified": True, "$set": {"email": "a@example.com"}}
    ),
    "person_properties": json.dumps({"email": "a@example.com"}),
    "set": json.dumps({"plan": "pro"}),
    "set_once": None,
}
ROW_OBJECTS = {
    **ROW_STRINGS,
    "uuid": "0192240b-3a08-72e6-ae97-ba94d0eda830",
    "properties": {"$lib": "web", "$is_identified": True, "$set": {"email": "a@example.com"}},
    "person_properties": {"email": "a@example.com"},
    "set": {"plan": "pro"},
    "set_once": {"first_seen": "2024-09-24"},
}


def events(path: Path, start: FilePosition | None = None) -> list[PostHogEvent | BadRow]:
    return [row.item for row in read_file(path, received_ms=0, start=start)]


def write_jsonl(path: Path, rows: list[object], *, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("gz", [pytest.param(False, id="plain"), pytest.param(True, id="gzip")])
def test_jsonl_fields_as_json_strings_or_objects(tmp_path: Path, gz: bool) -> None:
    name = "export.jsonl.gz" if gz else "export.jsonl"
    path = write_jsonl(tmp_path / name, [ROW_STRINGS, ROW_OBJECTS], gz=gz)
    first, second = events(path)
    assert isinstance(first, PostHogEvent) and isinstance(second, PostHogEvent)
    for ev in (first, second):
        assert ev.event == "$identify" and ev.distinct_id == "user_147"
        assert ev.set == {"plan": "pro", "email": "a@example.com"}
        assert ev.person_properties == {"email": "a@example.com"}
        assert ev.properties == {"$lib": "web", "$is_identified": True}
    assert second.set_once == {"first_seen": "2024-09-24"}


def test_the_export_sample_reads_without_a_bad_row(posthog_samples: Path) -> None:
    rows = list(read_file(posthog_samples / "export-sample.jsonl", received_ms=0))
    assert len(rows) == 2000
    assert all(isinstance(r.item, PostHogEvent) for r in rows)
    size = (posthog_samples / "export-sample.jsonl").stat().st_size
    assert rows[-1].position == FilePosition(2000, size)


def test_bad_rows_are_reported_with_file_and_line_and_skipped(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            ROW_STRINGS,
            "{not json",
            "[1, 2]",
            {**ROW_OBJECTS, "distinct_id": None},
            "",
            {**ROW_OBJECTS, "properties": "{broken"},
            {**ROW_OBJECTS, "uuid": "0192240b-3a08-72e6-ae97-ba94d0eda831"},
        ],
    )
    items = events(path)
    good = [i for i in items if isinstance(i, PostHogEvent)]
    bad = [i for i in items if isinstance(i, BadRow)]
    assert [e.uuid for e in good] == [
        ROW_STRINGS["uuid"],
        ROW_OBJECTS["uuid"],  # one bad field never loses an event: its properties dropped
        "0192240b-3a08-72e6-ae97-ba94d0eda831",
    ]
    assert good[1].properties_dropped and good[1].notes == (
        "properties is a string but not valid JSON: dropped",
    )
    assert [(b.line, b.reason.split(" (")[0]) for b in bad] == [
        (2, "not valid JSON"),
        (3, "expected a JSON object"),
        (4, "distinct_id: is missing"),
    ]
    assert str(bad[0]).startswith(f"{path}:2: not valid JSON")


@pytest.mark.parametrize("gz", [pytest.param(False, id="plain"), pytest.param(True, id="gzip")])
def test_reading_resumes_exactly_after_a_position(tmp_path: Path, gz: bool) -> None:
    rows = [{**ROW_OBJECTS, "uuid": f"0192240b-3a08-72e6-ae97-{i:012d}"} for i in range(10)]
    path = write_jsonl(tmp_path / ("r.jsonl.gz" if gz else "r.jsonl"), rows, gz=gz)
    whole = list(read_file(path, received_ms=0))
    resumed = events(path, start=whole[3].position)
    assert [e.uuid for e in resumed if isinstance(e, PostHogEvent)] == [r["uuid"] for r in rows[4:]]
    assert whole[3].position.line == 4


def test_csv_export_with_json_and_dotted_columns() -> None:
    items = events(CSV)
    assert len(items) == 5
    pageview, identify, order, feature, bad = items
    assert isinstance(pageview, PostHogEvent)
    assert pageview.properties["$current_url"] == "https://app.example.com/pricing"
    assert pageview.properties["$pathname"] == "/pricing"
    assert pageview.person_properties == {"email": "user901@example.com"}
    assert isinstance(identify, PostHogEvent)
    assert identify.set == {"email": "user902@example.com", "plan": "team"}
    assert identify.properties["$anon_distinct_id"] == "0192f0a0-aaaa-7000-8000-0000000000aa"
    assert isinstance(order, PostHogEvent)
    assert order.properties["revenue"] == 129.5
    assert order.properties["items"] == [{"sku": "MUG", "qty": 2}]
    assert order.timestamp_ms == 1730280044004
    assert isinstance(feature, PostHogEvent)  # no properties JSON: dotted column only
    assert feature.properties == {"$current_url": "https://app.example.com/p/3"}
    assert isinstance(bad, BadRow)
    assert (bad.line, bad.reason) == (6, "distinct_id: is missing")


def test_csv_resumes_after_a_position_and_reads_gzip(tmp_path: Path) -> None:
    whole = list(read_file(CSV, received_ms=0))
    rest = events(CSV, start=whole[1].position)
    assert [getattr(e, "event", None) for e in rest] == [
        "order_completed",
        "feature_used",
        None,
    ]
    gz = tmp_path / "events.csv.gz"
    gz.write_bytes(gzip.compress(CSV.read_bytes()))
    assert [getattr(e, "uuid", None) for e in events(gz, start=whole[1].position)] == [
        getattr(e, "uuid", None) for e in rest
    ]


def test_csv_rows_with_the_wrong_number_of_columns_are_bad(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("uuid,event,distinct_id,timestamp\nu1,e,d\nu2,e,d,2024-01-01T00:00:00Z\n")
    first, second = events(path)
    assert isinstance(first, BadRow) and first.line == 2 and "3 columns" in first.reason
    assert isinstance(second, PostHogEvent) and second.uuid == "u2"


def test_folders_are_read_recursively_in_name_order(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    for rel in [
        "2024/10/02/part-0.jsonl.gz",
        "2024/10/01/part-1.jsonl",
        "2024/10/01/part-0.jsonl",
        "2024/09/30/events.csv",
        "2024/10/01/.hidden.jsonl",
        "2024/10/01/manifest.txt",
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    found = [p.relative_to(root.resolve()).as_posix() for p in discover([root])]
    assert found == [
        "2024/09/30/events.csv",
        "2024/10/01/part-0.jsonl",
        "2024/10/01/part-1.jsonl",
        "2024/10/02/part-0.jsonl.gz",
    ]
    with pytest.raises(InputError, match="no such file"):
        discover([tmp_path / "missing"])


def test_nul_in_a_jsonl_row_becomes_the_replacement_character(tmp_path: Path) -> None:
    """PostgreSQL's text cannot hold U+0000: a distinct_id with one failed the whole chunk."""
    path = write_jsonl(tmp_path / "nul.jsonl", [{**ROW_OBJECTS, "distinct_id": "user_\x00"}])
    [event] = events(path)
    assert isinstance(event, PostHogEvent) and event.distinct_id == "user_\ufffd"
