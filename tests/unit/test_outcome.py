"""classify(): every status the Track API can answer, as a table."""

from __future__ import annotations

import email.utils

import orjson
import pytest

from posthog_customerio.customerio.client import TrackResponse
from posthog_customerio.delivery.outcome import (
    Outcome,
    OutcomeKind,
    classify,
    error_text,
    parse_retry_after,
)

NOW = 1_700_000_000.0
CAP = 300.0


def resp(
    status: int | None,
    body: bytes | dict[str, object] = b"{}",
    *,
    retry_after: str | None = None,
    error: str | None = None,
    endpoint: str = "batch",
) -> TrackResponse:
    raw = orjson.dumps(body) if isinstance(body, dict) else body
    return TrackResponse(endpoint, status, raw, retry_after, error, 0.01)  # type: ignore[arg-type]


def run(r: TrackResponse, item_count: int = 3) -> Outcome:
    return classify(r, item_count=item_count, now=NOW, retry_after_max_secs=CAP)


V2_ERR = {"errors": [{"reason": "invalid", "field": "identifiers", "message": "missing id"}]}
V1_ERR = {"meta": {"errors": ["email is invalid", "id is too long"]}}
V1_MERGE_ERR = {"meta": {"error": "primary person not found"}}


@pytest.mark.parametrize(
    ("response", "item_count", "kind", "reason"),
    [
        pytest.param(resp(200), 3, OutcomeKind.DELIVERED, "ok", id="200-delivered"),
        pytest.param(resp(202, b""), 3, OutcomeKind.DELIVERED, "ok", id="202-delivered"),
        pytest.param(resp(204, b""), 1, OutcomeKind.DELIVERED, "ok", id="204-delivered"),
        pytest.param(resp(400, V2_ERR), 3, OutcomeKind.SPLIT, "split", id="400-batch-split"),
        pytest.param(resp(413, b""), 3, OutcomeKind.SPLIT, "split", id="413-batch-split"),
        pytest.param(resp(422, V2_ERR), 2, OutcomeKind.SPLIT, "split", id="422-batch-split"),
        pytest.param(resp(400, V2_ERR), 1, OutcomeKind.REJECTED, "rejected", id="400-single"),
        pytest.param(resp(413, b""), 1, OutcomeKind.REJECTED, "rejected", id="413-single"),
        pytest.param(resp(422, V1_ERR), 1, OutcomeKind.REJECTED, "rejected", id="422-single"),
        pytest.param(resp(404, b"nope"), 1, OutcomeKind.REJECTED, "rejected", id="404-single"),
        pytest.param(resp(404, b"nope"), 5, OutcomeKind.REJECTED, "rejected", id="404-batch"),
        pytest.param(resp(409, b""), 1, OutcomeKind.REJECTED, "rejected", id="409-single"),
        pytest.param(resp(401, b"Unauthorized"), 3, OutcomeKind.AUTH, "credentials", id="401"),
        pytest.param(resp(403, b""), 1, OutcomeKind.AUTH, "credentials", id="403"),
        pytest.param(resp(408, b""), 3, OutcomeKind.RETRY, "request_timeout", id="408-retry"),
        pytest.param(resp(429, b""), 3, OutcomeKind.RETRY, "throttled", id="429-retry"),
        pytest.param(resp(500, b""), 3, OutcomeKind.RETRY, "server_error", id="500-retry"),
        pytest.param(resp(502, b"<html>"), 3, OutcomeKind.RETRY, "server_error", id="502-retry"),
        pytest.param(resp(503, b""), 1, OutcomeKind.RETRY, "server_error", id="503-retry"),
        pytest.param(resp(504, b""), 3, OutcomeKind.RETRY, "server_error", id="504-retry"),
        pytest.param(resp(301, b""), 3, OutcomeKind.RETRY, "unexpected_status", id="301-retry"),
        pytest.param(
            resp(None, b"", error="timeout"), 3, OutcomeKind.RETRY, "timeout", id="timeout"
        ),
        pytest.param(
            resp(None, b"", error="connect"), 3, OutcomeKind.RETRY, "connect", id="connect-error"
        ),
        pytest.param(
            resp(None, b"", error="network: ReadError"),
            3,
            OutcomeKind.RETRY,
            "network",
            id="network-error",
        ),
        pytest.param(resp(207, {"errors": []}), 3, OutcomeKind.DELIVERED, "ok", id="207-no-errors"),
        pytest.param(
            resp(207, b"not json"), 3, OutcomeKind.RETRY, "unparsable_207", id="207-unparsable"
        ),
        pytest.param(
            resp(207, {"meta": {}}), 3, OutcomeKind.RETRY, "unparsable_207", id="207-no-list"
        ),
        pytest.param(
            resp(207, {"errors": [{"batch_index": 1, "reason": "invalid"}]}),
            3,
            OutcomeKind.PARTIAL,
            "rejected",
            id="207-partial",
        ),
    ],
)
def test_status_table(
    response: TrackResponse, item_count: int, kind: OutcomeKind, reason: str
) -> None:
    outcome = run(response, item_count)
    assert (outcome.kind, outcome.reason) == (kind, reason)
    assert outcome.throttled == (response.status == 429)


ANON_REFUSED = {"reason": "invalid", "field": "identifiers", "message": "unknown identifier"}
ANON_ID_NAMED = {"reason": "invalid", "message": "anonymous_id is not an identifier"}
NAME_MISSING = {"reason": "required", "field": "name", "message": "missing"}


def _at(index: int, error: dict[str, str]) -> dict[str, object]:
    return {"batch_index": index, **error}


@pytest.mark.parametrize(
    ("response", "item_count", "anonymous", "kind", "failed", "fallback"),
    [
        pytest.param(
            resp(207, {"errors": [_at(1, ANON_REFUSED), _at(2, ANON_ID_NAMED)]}),
            3,
            {1, 2},
            OutcomeKind.PARTIAL,
            set(),
            {1, 2},
            id="207-anonymous-refused-falls-back",
        ),
        pytest.param(
            resp(207, {"errors": [_at(0, ANON_REFUSED), _at(1, ANON_REFUSED)]}),
            3,
            {1},
            OutcomeKind.PARTIAL,
            {0},
            {1},
            id="207-identifiers-of-a-person-item-is-a-failure",
        ),
        pytest.param(
            resp(207, {"errors": [_at(1, NAME_MISSING)]}),
            3,
            {1},
            OutcomeKind.PARTIAL,
            {1},
            set(),
            id="207-anonymous-item-bad-for-another-reason-is-a-failure",
        ),
        pytest.param(
            resp(207, {"errors": [_at(0, NAME_MISSING), _at(2, ANON_REFUSED)]}),
            3,
            {2},
            OutcomeKind.PARTIAL,
            {0},
            {2},
            id="207-both",
        ),
        pytest.param(
            resp(400, {"errors": [ANON_REFUSED]}),
            2,
            {0, 1},
            OutcomeKind.FALLBACK,
            set(),
            set(),
            id="400-identifiers-all-anonymous-falls-back",
        ),
        pytest.param(
            resp(400, {"errors": [ANON_REFUSED]}),
            1,
            {0},
            OutcomeKind.FALLBACK,
            set(),
            set(),
            id="400-identifiers-single-anonymous-falls-back",
        ),
        pytest.param(
            resp(400, {"errors": [ANON_REFUSED]}),
            3,
            {0, 1},
            OutcomeKind.SPLIT,
            set(),
            set(),
            id="400-identifiers-mixed-batch-splits-first",
        ),
        pytest.param(
            resp(400, {"errors": [NAME_MISSING]}),
            2,
            {0, 1},
            OutcomeKind.SPLIT,
            set(),
            set(),
            id="400-other-reason-all-anonymous-splits",
        ),
        pytest.param(
            resp(400, {"errors": [NAME_MISSING]}),
            1,
            {0},
            OutcomeKind.REJECTED,
            set(),
            set(),
            id="400-other-reason-single-anonymous-rejected",
        ),
        pytest.param(
            resp(400, {"errors": [ANON_REFUSED]}),
            1,
            set(),
            OutcomeKind.REJECTED,
            set(),
            set(),
            id="400-identifiers-of-a-person-rejected",
        ),
        pytest.param(
            resp(500, b""), 2, {0, 1}, OutcomeKind.RETRY, set(), set(), id="500-anonymous-retry"
        ),
    ],
)
def test_anonymous_id_items_table(
    response: TrackResponse,
    item_count: int,
    anonymous: set[int],
    kind: OutcomeKind,
    failed: set[int],
    fallback: set[int],
) -> None:
    """Items naming a visitor by anonymous_id, refused for their identifiers, are set apart
    for v1 (never failures); anything else about them is classified as for any item."""
    outcome = classify(
        response, item_count=item_count, now=NOW, retry_after_max_secs=CAP, anonymous=anonymous
    )
    assert outcome.kind is kind
    assert set(outcome.failed) == failed
    assert set(outcome.fallback) == fallback


def test_207_lists_exactly_the_failed_indices_with_details() -> None:
    body = {
        "errors": [
            {"batch_index": 0, "reason": "invalid", "field": "identifiers", "message": "no id"},
            {"batch_index": 4, "reason": "required", "field": "name", "message": "missing"},
            {"batch_index": 4, "reason": "invalid", "field": "timestamp", "message": "bad"},
            {"batch_index": 9, "reason": "out of range index is ignored"},
            {"batch_index": -1, "reason": "negative index is ignored"},
            {"batch_index": "2", "reason": "string index is ignored"},
            {"batch_index": True, "reason": "bool index is ignored"},
            "not an object",
        ]
    }
    outcome = run(resp(207, body), item_count=5)
    assert outcome.kind is OutcomeKind.PARTIAL
    assert dict(outcome.failed) == {
        0: "invalid identifiers: no id",
        4: "required name: missing; invalid timestamp: bad",
    }


def test_207_with_only_out_of_range_indices_is_delivered() -> None:
    outcome = run(resp(207, {"errors": [{"batch_index": 3, "reason": "x"}]}), item_count=3)
    assert outcome.kind is OutcomeKind.DELIVERED


@pytest.mark.parametrize(
    ("body", "text"),
    [
        pytest.param(V2_ERR, "invalid identifiers: missing id", id="v2"),
        pytest.param(V1_ERR, "email is invalid; id is too long", id="v1-errors"),
        pytest.param(V1_MERGE_ERR, "primary person not found", id="v1-error"),
        pytest.param({"errors": [{"message": "only a message"}]}, "only a message", id="v2-msg"),
        pytest.param(b"Bad Gateway", "Bad Gateway", id="plain-text"),
        pytest.param(b"", "(empty body)", id="empty"),
    ],
)
def test_error_text(body: bytes | dict[str, object], text: str) -> None:
    raw = orjson.dumps(body) if isinstance(body, dict) else body
    assert error_text(raw) == text


def test_rejected_detail_carries_customerio_message() -> None:
    outcome = run(resp(400, V2_ERR), item_count=1)
    assert outcome.detail == "HTTP 400: invalid identifiers: missing id"


def test_error_text_snippet_is_bounded() -> None:
    assert len(error_text(b"x" * 10_000)) <= 501


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("7", 7.0, id="delta-seconds"),
        pytest.param(" 2.5 ", 2.5, id="fractional-seconds"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("-3", 0.0, id="negative-is-zero"),
        pytest.param("86400", CAP, id="seconds-capped"),
        pytest.param(http_date(NOW + 42), 42.0, id="http-date"),
        pytest.param(http_date(NOW - 60), 0.0, id="http-date-past"),
        pytest.param(http_date(NOW + 3600), CAP, id="http-date-capped"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("nan", None, id="nan"),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW, CAP) == expected


def test_429_carries_capped_retry_after() -> None:
    outcome = run(resp(429, b"", retry_after="1000"))
    assert outcome.retry_after == CAP
    assert outcome.throttled
    outcome = run(resp(503, b"", retry_after=http_date(NOW + 10)))
    assert outcome.retry_after == 10.0
    assert not outcome.throttled
