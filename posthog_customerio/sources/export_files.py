"""PostHog export files: JSON Lines (S3 batch export, optionally gzipped), the events CSV, and
folders of them.

Every reader yields ``Row``s: an event (or the ``BadRow`` that says why a row was unusable, with
its file and line) and the ``FilePosition`` just after it, so a backfill can checkpoint and
resume exactly there. Plain files resume by seeking to the byte offset; gzip files cannot seek,
so they are re-read and the lines before the position skipped (the offset is uncompressed).

Shapes accepted, leniently (PostHog has changed them over the years):

- JSON Lines: one event object per line, as the S3 batch export writes them (``uuid, event,
  distinct_id, timestamp, properties, person_properties, set, set_once, ...``); the nested
  fields may be JSON strings or objects (``normalize.event_from_mapping`` handles both).
- CSV: a header row naming the columns. ``properties``, ``person_properties``, ``set`` and
  ``set_once`` columns hold JSON text; dotted columns (``properties.$current_url``,
  ``person.properties.email``, also with the ``*.`` prefix PostHog's table export writes) are
  folded into those objects, their cells read as JSON when they are JSON (numbers, booleans,
  objects) and as text otherwise. Empty cells are absent values.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from posthog_customerio.errors import InputError
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.normalize import NUL_ESCAPE, event_from_mapping, replace_nul

__all__ = [
    "BadRow",
    "FilePosition",
    "Row",
    "discover",
    "is_gzip",
    "read_file",
]

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv",)
_CSV_OBJECT_PREFIXES = {
    "properties": "properties",
    "person_properties": "person_properties",
    "person.properties": "person_properties",
    "set": "set",
    "set_once": "set_once",
}


@dataclass(frozen=True, slots=True)
class FilePosition:
    """Just after a row: ``line`` physical lines read, ``offset`` bytes (uncompressed)."""

    line: int
    offset: int


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that could not become an event; ``line`` is where it starts (1-based), None
    when the source has no lines (an API page)."""

    path: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Row:
    """One row and the position after it; ``disk_offset`` is the bytes of the file on disk
    read so far (compressed for gzip), for progress bars."""

    item: PostHogEvent | BadRow
    position: FilePosition
    disk_offset: int


def _suffixes(path: Path) -> tuple[str, bool]:
    """(format suffix, gzipped) from the name: ``x.jsonl.gz`` → (``.jsonl``, True)."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    return os.path.splitext(name)[1], gz


def is_gzip(path: Path) -> bool:
    return _suffixes(path)[1]


def _is_export(path: Path) -> bool:
    suffix, _ = _suffixes(path)
    return suffix in JSONL_SUFFIXES or suffix in CSV_SUFFIXES


def discover(paths: Sequence[Path]) -> list[Path]:
    """The files to read: files as given, folders expanded recursively (export files only,
    hidden ones skipped) and sorted by their path inside the folder, which for PostHog's S3
    layout is time order. Raises ``InputError`` for a path that does not exist."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = [
                p
                for p in path.rglob("*")
                if p.is_file()
                and _is_export(p)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            found.extend(sorted(inside, key=lambda p: p.relative_to(path).as_posix()))
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(str(path), "no such file or folder")
    return list(dict.fromkeys(p.resolve() for p in found))


class _Lines:
    """Binary lines of a file from a position on, counting lines and (uncompressed) bytes."""

    def __init__(self, fh: IO[bytes] | gzip.GzipFile, line: int = 0, offset: int = 0) -> None:
        self._fh = fh
        self.line = line
        self.offset = offset

    def __iter__(self) -> Iterator[bytes]:
        for raw in self._fh:
            self.line += 1
            self.offset += len(raw)
            yield raw

    def disk_offset(self) -> int:
        if isinstance(self._fh, gzip.GzipFile):
            raw = getattr(self._fh, "fileobj", None)
            if raw is not None:
                return int(raw.tell())
        return self.offset


def _open(path: Path, start: FilePosition | None) -> _Lines:
    """Open at ``start``: seek for plain files, re-read and skip for gzip."""
    if is_gzip(path):
        lines = _Lines(gzip.open(path, "rb"))  # noqa: SIM115  # the reader's `with` closes it
        if start is not None and start.line > 0:
            for _ in lines:
                if lines.line >= start.line:
                    break
        return lines
    fh = path.open("rb")  # the reader's `with` closes it
    if start is not None:
        fh.seek(start.offset)
        return _Lines(fh, start.line, start.offset)
    return _Lines(fh)


def read_file(path: Path, *, received_ms: int, start: FilePosition | None = None) -> Iterator[Row]:
    """The rows of one export file, from ``start`` (a position a previous read yielded)."""
    suffix, _ = _suffixes(path)
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, received_ms, start)
    return _read_jsonl(path, received_ms, start)


def _read_jsonl(path: Path, received_ms: int, start: FilePosition | None) -> Iterator[Row]:
    shown = str(path)
    lines = _open(path, start)
    with lines._fh:
        for raw in lines:
            line = lines.line
            position = FilePosition(lines.line, lines.offset)
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield Row(
                    BadRow(shown, line, f"not valid JSON ({exc})"), position, lines.disk_offset()
                )
                continue
            if not isinstance(obj, dict):
                yield Row(
                    BadRow(shown, line, "expected a JSON object"), position, lines.disk_offset()
                )
                continue
            if NUL_ESCAPE in raw:
                obj = replace_nul(obj)
            yield Row(_event(obj, shown, line, received_ms), position, lines.disk_offset())


def _event(obj: dict[str, Any], shown: str, line: int, received_ms: int) -> PostHogEvent | BadRow:
    try:
        return event_from_mapping(obj, person=None, received_ms=received_ms, path="")
    except InputError as exc:
        return BadRow(shown, line, str(exc))


# --- CSV --------------------------------------------------------------------------------------


def _text_lines(lines: _Lines) -> Iterator[str]:
    for raw in lines:
        yield raw.decode("utf-8-sig" if lines.line == 1 else "utf-8", errors="replace")


def _read_csv(path: Path, received_ms: int, start: FilePosition | None) -> Iterator[Row]:
    shown = str(path)
    head = _open(path, None)
    with head._fh:
        reader = csv.reader(_text_lines(head))
        header = next(reader, None)
        header_end = FilePosition(head.line, head.offset)
    if header is None:
        return
    columns = [_column(name) for name in header]
    lines = _open(path, start if start is not None and start.line > 0 else header_end)
    with lines._fh:
        reader = csv.reader(_text_lines(lines))
        while True:
            first_line = lines.line + 1
            try:
                record = next(reader, None)
            except csv.Error as exc:
                position = FilePosition(lines.line, lines.offset)
                yield Row(
                    BadRow(shown, first_line, f"malformed CSV ({exc})"),
                    position,
                    lines.disk_offset(),
                )
                continue
            if record is None:
                return
            position = FilePosition(lines.line, lines.offset)
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(columns):
                reason = f"has {len(record)} columns, the header names {len(columns)}"
                yield Row(BadRow(shown, first_line, reason), position, lines.disk_offset())
                continue
            try:
                obj = _csv_object(columns, record)
            except InputError as exc:
                yield Row(BadRow(shown, first_line, str(exc)), position, lines.disk_offset())
                continue
            yield Row(_event(obj, shown, first_line, received_ms), position, lines.disk_offset())


def _column(name: str) -> tuple[str, list[str]]:
    """A header cell → (target field, key path inside it); ``*.`` prefixes are dropped."""
    name = name.strip()
    while name.startswith("*."):
        name = name[2:]
    for prefix in sorted(_CSV_OBJECT_PREFIXES, key=len, reverse=True):
        if name.startswith(prefix + "."):
            keys = name[len(prefix) + 1 :].split(".")
            return _CSV_OBJECT_PREFIXES[prefix], keys
    if name == "person.properties":
        return "person_properties", []
    return name, []


def _cell(value: str) -> Any:
    """A dotted column's cell: JSON when it is JSON (numbers, booleans, objects), else text."""
    text = value.strip()
    if text[:1] in "{[-0123456789tfn" and text:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return value


def _csv_object(columns: list[tuple[str, list[str]]], record: list[str]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for (field, keys), value in zip(columns, record, strict=True):
        if value == "":
            continue
        if not keys:
            if field in ("properties", "person_properties", "set", "set_once"):
                nested.setdefault(field, {})
                parsed = _json_object(value, field)
                for k, v in parsed.items():
                    nested[field].setdefault(k, v)
            else:
                obj[field] = value
            continue
        target = nested.setdefault(field, {})
        for key in keys[:-1]:
            child = target.get(key)
            if not isinstance(child, dict):
                child = target[key] = {}
            target = child
        target[keys[-1]] = _cell(value)
    obj.update(nested)
    return obj


def _json_object(value: str, field: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InputError(field, "is not valid JSON") from exc
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise InputError(field, "must be a JSON object")
    return parsed
