"""The repository stands alone: nothing in it reads the reference folder beside it.

The sample payloads live in ``examples/posthog/``; a path to the reference folder beside the
repository works only on the machine the project was written on, and fails for anyone who
clones it. (The strings below are assembled so that this file does not match itself.)
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.samples import REPO

SHARED = "sha" + "red"
# "../" + SHARED, "/work/" + SHARED, REPO.parent / SHARED, parents[3] / (SHARED + "/posthog")
OUTSIDE = re.compile(rb"""(\.\.[/\\]|/work/)shared\b|parents?(\[\d+\])?\s*/\s*["']shared\b""")
SKIP_DIRS = {".git", ".venv", "data", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def repository_files() -> list[Path]:
    """Tracked files, and new ones not ignored; every file when this is not a git checkout."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return [
            p
            for p in REPO.rglob("*")
            if p.is_file() and not SKIP_DIRS & set(p.relative_to(REPO).parts)
        ]
    return [REPO / name for name in out.decode().split("\0") if name]


def test_nothing_reads_the_folder_beside_the_repository() -> None:
    files = [p for p in repository_files() if p.resolve() != Path(__file__).resolve()]
    assert len(files) > 50, f"found only {len(files)} files under {REPO}"
    hits = []
    for path in files:
        if not path.is_file():  # deleted but not yet committed
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.decode(errors='replace')}")
    assert not hits, "copy what is needed into the repository:\n" + "\n".join(hits)


def test_the_pattern_finds_what_it_must() -> None:
    for text in (
        'SHARED = REPO.parent / "{}"',
        'SHARED = Path(__file__).parents[3] / "{}" / "posthog"',
        'str(Path(__file__).parents[3] / "{}/posthog/webhook-custom-event.json")',
        "  -d @../{}/posthog/webhook-identify.json",
        "see /work/{}/DESIGN.md",
    ):
        line = text.format(SHARED).encode()
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search(b"the queue is shared, so delivery is spread")


def test_browser_tests_leave_the_committed_screenshots_alone() -> None:
    """docs/images/ changes only when asked for (PHCIO_SCREENSHOTS=docs/images)."""
    if os.environ.get("PHCIO_SCREENSHOTS"):
        pytest.skip("PHCIO_SCREENSHOTS is set: this run refreshes the screenshots on purpose")
    from tests.browser.conftest import IMAGES

    assert REPO not in IMAGES.parents, IMAGES
