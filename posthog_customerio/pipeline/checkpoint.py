"""Checkpoints: the name of each source and its position, as stored in the queue.

A checkpoint is committed with the chunk it follows, so these encodings are the runner's: the
parsers only report positions (``FilePosition``, ``ApiCursor``). Changing a format here breaks
the resumption of backfills already under way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson

from posthog_customerio.sources.export_files import FilePosition
from posthog_customerio.sources.posthog_api import ApiCursor


def file_source(path: Path) -> str:
    """The checkpoint name of an export file."""
    return f"file:{path}"


def file_position(text: str | None) -> tuple[FilePosition | None, bool]:
    """(position, complete) from a stored checkpoint (None: not read yet)."""
    if text is None:
        return None, False
    data = orjson.loads(text)
    return FilePosition(int(data["line"]), int(data["offset"])), bool(data.get("complete"))


def file_position_json(pos: FilePosition | None, complete: bool) -> str:
    """A file's position to store; ``complete`` makes a re-run skip the file."""
    line, offset = (pos.line, pos.offset) if pos is not None else (0, 0)
    return orjson.dumps({"line": line, "offset": offset, "complete": complete}).decode()


def api_source(base_url: str, project_id: int, events: Sequence[str] = ()) -> str:
    """The checkpoint name of a query stream; ``--event`` filters make it another stream."""
    name = f"posthog-api:{base_url.rstrip('/')}:project={project_id}"
    return name + (f":events={','.join(sorted(events))}" if events else "")


def cursor_json(cursor: ApiCursor) -> str:
    """The API's position to store: the last row read."""
    return orjson.dumps({"timestamp": cursor.timestamp, "uuid": cursor.uuid}).decode()


def cursor_from_json(text: str) -> ApiCursor:
    data = orjson.loads(text)
    return ApiCursor(str(data["timestamp"]), str(data["uuid"]))
