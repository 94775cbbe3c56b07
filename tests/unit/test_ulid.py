"""Event ids: deterministic ULIDs derived from PostHog uuids (DESIGN.md §4)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from posthog_customerio.mapping.ulid import CROCKFORD, is_ulid, ulid_from_uuid

UUID7 = "01924815-6d55-7160-8999-50d836f675cc"  # 2024-10-01T12:36:56.789Z
UUID7_MS = 0x01924815_6D55


def _decode(ulid: str) -> int:
    value = 0
    for char in ulid:
        value = value * 32 + CROCKFORD.index(char)
    return value


def test_uuid7_keeps_its_128_bits_and_millisecond_timestamp() -> None:
    ulid = ulid_from_uuid(UUID7, 0)
    assert is_ulid(ulid)
    assert _decode(ulid) == uuid.UUID(UUID7).int
    assert _decode(ulid) >> 80 == UUID7_MS


def test_uuid7_ignores_the_event_time() -> None:
    assert ulid_from_uuid(UUID7, 1) == ulid_from_uuid(UUID7, 2_000_000_000_000)


def test_uuid7_in_any_spelling_is_the_same_id() -> None:
    assert ulid_from_uuid(UUID7.upper(), 0) == ulid_from_uuid(UUID7, 0)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(str(uuid.UUID(int=12345, version=4)), id="uuid4"),
        pytest.param("0192480a-70d5-126b-b2a7-4de452e6b438", id="uuid1"),
        pytest.param("not-a-uuid-at-all", id="non_uuid_string"),
        pytest.param("", id="empty_string"),
    ],
)
def test_other_uuids_use_event_time_and_a_hash(value: str) -> None:
    ts = 1_727_786_216_789
    ulid = ulid_from_uuid(value, ts)
    assert is_ulid(ulid)
    assert _decode(ulid) >> 80 == ts
    assert ulid == ulid_from_uuid(value, ts)
    assert ulid != ulid_from_uuid(value + "x", ts)


def test_event_time_is_clamped_to_48_bits() -> None:
    assert _decode(ulid_from_uuid("x", -5)) >> 80 == 0
    assert _decode(ulid_from_uuid("x", 1 << 60)) >> 80 == (1 << 48) - 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("01ARZ3NDEKTSV4RRFFQ69G5FAV", True, id="spec_example"),
        pytest.param("01arz3ndektsv4rrffq69g5fav", True, id="lowercase"),
        pytest.param("81ARZ3NDEKTSV4RRFFQ69G5FAV", False, id="over_128_bits"),
        pytest.param("01ARZ3NDEKTSV4RRFFQ69G5FA", False, id="25_chars"),
        pytest.param("01ARZ3NDEKTSV4RRFFQ69G5FAU", False, id="letter_u"),
        pytest.param(None, False, id="not_a_string"),
    ],
)
def test_is_ulid(value: object, expected: bool) -> None:
    assert is_ulid(value) is expected


@given(st.uuids(), st.integers(min_value=0, max_value=(1 << 48) - 1))
def test_any_uuid_gives_a_valid_deterministic_ulid(value: uuid.UUID, ts: int) -> None:
    ulid = ulid_from_uuid(str(value), ts)
    assert is_ulid(ulid)
    assert set(ulid) <= set(CROCKFORD)
    assert ulid == ulid_from_uuid(str(value), ts)
    if value.version == 7:
        assert _decode(ulid) == value.int
    else:
        assert _decode(ulid) >> 80 == ts


@given(st.text(max_size=60), st.integers(min_value=-(1 << 50), max_value=1 << 50))
def test_any_string_gives_a_valid_ulid(value: str, ts: int) -> None:
    assert is_ulid(ulid_from_uuid(value, ts))


@given(st.integers(min_value=0, max_value=(1 << 48) - 1))
def test_uuid7_ulids_sort_by_time(ms: int) -> None:
    early = uuid.UUID(int=(ms << 80) | (7 << 76) | (2 << 62), version=None)
    later = uuid.UUID(int=((ms + 1) << 80) | (7 << 76) | (2 << 62)) if ms < (1 << 48) - 1 else early
    assert ulid_from_uuid(str(early), 0) <= ulid_from_uuid(str(later), 0)
