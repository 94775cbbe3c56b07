"""queue.forget.body_names: which stored bodies name a forgotten person, in every shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from posthog_customerio.queue.forget import body_names

IDS = frozenset({"u1", "anon-1"})
EMAILS = frozenset({"jane@x.test"})


@pytest.mark.parametrize(
    ("body", "names"),
    [
        pytest.param({"identifiers": {"id": "u1"}}, True, id="v2-id"),
        pytest.param({"identifiers": {"email": "Jane@x.test"}}, True, id="v2-email-any-case"),
        pytest.param({"identifiers": {"anonymous_id": "anon-1"}}, True, id="v2-anonymous-id"),
        pytest.param({"anonymous_id": "anon-1", "name": "e"}, True, id="v1-anonymous-event"),
        pytest.param({"primary": {"id": "x"}, "secondary": {"id": "u1"}}, True, id="merge"),
        pytest.param(
            {"cio_relationships": [{"identifiers": {"anonymous_id": "anon-1"}}]},
            True,
            id="relationship",
        ),
        pytest.param({"identifiers": {"anonymous_id": "anon-2"}}, False, id="other-visitor"),
        pytest.param({"attributes": {"note": "u1"}}, False, id="only-a-value"),
    ],
)
def test_body_names(body: dict[str, Any], names: bool) -> None:
    assert body_names(orjson.dumps(body), IDS, EMAILS) is names
