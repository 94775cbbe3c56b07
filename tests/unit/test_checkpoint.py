"""Checkpoint formats: stored positions of backfills under way must keep reading back."""

from __future__ import annotations

from pathlib import Path

from posthog_customerio.pipeline.checkpoint import (
    api_source,
    cursor_from_json,
    cursor_json,
    file_position,
    file_position_json,
    file_source,
)
from posthog_customerio.sources.export_files import FilePosition
from posthog_customerio.sources.posthog_api import ApiCursor


def test_file_positions_keep_their_stored_form() -> None:
    assert file_source(Path("exports/a.jsonl")) == "file:exports/a.jsonl"
    text = file_position_json(FilePosition(12, 3456), complete=False)
    assert text == '{"line":12,"offset":3456,"complete":false}'
    assert file_position(text) == (FilePosition(12, 3456), False)
    assert file_position(file_position_json(None, True)) == (FilePosition(0, 0), True)
    assert file_position('{"line":1,"offset":2}') == (FilePosition(1, 2), False)
    assert file_position(None) == (None, False)


def test_api_cursors_keep_their_stored_form() -> None:
    cursor = ApiCursor("2024-09-24T12:00:00.000000Z", "0192240a-44e3-7223-9bc4-96cb8e81973e")
    text = cursor_json(cursor)
    assert text == (
        '{"timestamp":"2024-09-24T12:00:00.000000Z","uuid":"0192240a-44e3-7223-9bc4-96cb8e81973e"}'
    )
    assert cursor_from_json(text) == cursor


def test_api_source_names_one_stream_per_event_filter() -> None:
    assert (
        api_source("https://eu.posthog.com/", 7) == "posthog-api:https://eu.posthog.com:project=7"
    )
    assert (
        api_source("https://eu.posthog.com", 7, ["b", "a"])
        == "posthog-api:https://eu.posthog.com:project=7:events=a,b"
    )
