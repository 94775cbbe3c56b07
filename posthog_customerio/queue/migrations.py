"""Schema migrations: the numbered SQL files of each store's dialect, found in one way.

Each dialect has a folder ``sql/<dialect>/`` of ``NNNN_name.sql`` files numbered 1..n; the
stores apply them in order and record each version in ``schema_version``.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal, NamedTuple

Dialect = Literal["sqlite", "postgres"]


class Migration(NamedTuple):
    version: int
    name: str  # the file name, recorded beside the version
    sql: str


def migrations(dialect: Dialect) -> list[Migration]:
    """The migrations of ``sql/<dialect>/``, in order; raises if not numbered 1..n."""
    root = resources.files("posthog_customerio.queue").joinpath("sql", dialect)
    found = sorted(
        Migration(int(entry.name[:4]), entry.name, entry.read_text(encoding="utf-8"))
        for entry in root.iterdir()
        if entry.name.endswith(".sql") and entry.name[:4].isdigit()
    )
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations are not numbered 1..n: {[m.name for m in found]}")
    return found
