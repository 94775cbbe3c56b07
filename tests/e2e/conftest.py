from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Sandbox, Serve


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path)
    yield sb
    sb.close()


@pytest.fixture
def serve(tmp_path: Path, sandbox: Sandbox) -> Iterator[Serve]:
    sv = Serve(tmp_path, tmp_path / "data", sandbox)
    yield sv
    sv.close()
