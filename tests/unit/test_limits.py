"""Track API limits: enforced before sending, every change counted (DESIGN.md §4)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from posthog_customerio.mapping.limits import (
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES_PER_CALL,
    MAX_EVENT_NAME_BYTES,
    MAX_ID_BYTES,
    Counts,
    fit_item,
    fits_id,
    json_size,
    limit_attributes,
    limit_event_name,
    shrink_mapping,
    truncate_utf8,
    utf8_len,
)


def test_constants_match_the_spec() -> None:
    assert (MAX_ID_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES_PER_CALL) == (150, 1000, 300)
    assert MAX_EVENT_NAME_BYTES == 100


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        pytest.param("abc", 3, "abc", id="fits"),
        pytest.param("abcd", 3, "abc", id="ascii_cut"),
        pytest.param("aé", 2, "a", id="two_byte_char_not_split"),
        pytest.param("a€", 3, "a", id="three_byte_char_not_split"),
        pytest.param("a😀b", 5, "a😀", id="four_byte_char_kept_whole"),
        pytest.param("😀", 3, "", id="nothing_fits"),
    ],
)
def test_truncate_utf8(text: str, limit: int, expected: str) -> None:
    assert truncate_utf8(text, limit) == expected


@given(st.text(), st.integers(min_value=0, max_value=64))
def test_truncate_utf8_is_a_valid_prefix_within_the_limit(text: str, limit: int) -> None:
    cut = truncate_utf8(text, limit)
    assert text.startswith(cut)
    assert utf8_len(cut) <= limit
    assert utf8_len(cut) > limit - 4 or cut == text


def test_fits_id_counts_bytes_not_characters() -> None:
    assert fits_id("a" * 150)
    assert not fits_id("a" * 151)
    assert not fits_id("é" * 76)  # 152 bytes in 76 characters


def test_event_name_truncated_and_counted() -> None:
    counts: Counts = {}
    assert limit_event_name("n" * 100, counts) == "n" * 100
    assert counts == {}
    assert limit_event_name("ü" * 60, counts) == "ü" * 50
    assert counts == {"event_name": 1}


@pytest.mark.parametrize(
    ("attributes", "expected", "counts"),
    [
        pytest.param({"a": 1, "b": "x"}, {"a": 1, "b": "x"}, {}, id="within_limits_unchanged"),
        pytest.param(
            {"long": "v" * 1001},
            {"long": "v" * 1000},
            {"attribute_value": 1},
            id="string_truncated",
        ),
        pytest.param(
            {"n" * 151: 1, "ok": 2}, {"ok": 2}, {"attribute_name": 1}, id="long_name_dropped"
        ),
        pytest.param(
            {"nested": {"k": "v" * 1000}, "ok": True},
            {"ok": True},
            {"attribute_value": 1},
            id="big_object_dropped",
        ),
        pytest.param({"list": ["v"] * 10}, {"list": ["v"] * 10}, {}, id="small_array_kept"),
        pytest.param({"none": None, "f": 1.5}, {"none": None, "f": 1.5}, {}, id="scalars_kept"),
    ],
)
def test_limit_attributes(
    attributes: dict[str, Any], expected: dict[str, Any], counts: Counts
) -> None:
    got: Counts = {}
    assert limit_attributes(attributes, got) == expected
    assert got == counts


def test_limit_attributes_keeps_the_first_300_in_order() -> None:
    attributes = {f"k{i:03}": i for i in range(305)}
    counts: Counts = {}
    limited = limit_attributes(attributes, counts)
    assert list(limited) == [f"k{i:03}" for i in range(300)]
    assert counts == {"attribute_count": 5}


def test_shrink_mapping_drops_largest_first() -> None:
    data = {"small": "x", "big": "y" * 500, "medium": "z" * 100}
    counts: Counts = {}
    shrunk = shrink_mapping(data, 200, counts, "event_data")
    assert shrunk == {"small": "x", "medium": "z" * 100}
    assert counts == {"event_data": 1}
    assert json_size(shrunk) <= 200


def test_shrink_mapping_returns_input_when_it_fits() -> None:
    data = {"a": 1}
    assert shrink_mapping(data, 100, {}, "event_data") is data


def test_shrink_mapping_respects_protected_keys() -> None:
    counts: Counts = {}
    assert shrink_mapping({"keep": "x" * 50}, 10, counts, "k", protected={"keep"}) is None
    assert counts == {}


@given(st.dictionaries(st.text(max_size=5), st.text(max_size=40), max_size=20), st.integers(2, 300))
def test_shrink_mapping_result_fits_exactly(data: dict[str, str], budget: int) -> None:
    shrunk = shrink_mapping(data, budget, {}, "k")
    assert shrunk is not None
    assert len(orjson.dumps(shrunk)) <= budget
    assert shrunk.items() <= data.items()


def test_fit_item_drops_keys_of_the_named_field_only() -> None:
    body = {"name": "n", "attributes": {"a": "x" * 40, "b": "y"}}
    counts: Counts = {}
    fitted = fit_item(body, "attributes", counts, max_bytes=50)
    assert fitted == {"name": "n", "attributes": {"b": "y"}}
    assert counts == {"item_size": 1}
    assert body["attributes"] == {"a": "x" * 40, "b": "y"}  # input untouched


def test_fit_item_gives_up_when_the_rest_is_too_big() -> None:
    assert fit_item({"name": "n" * 100, "attributes": {}}, "attributes", {}, max_bytes=50) is None


def test_json_size_handles_ints_orjson_cannot() -> None:
    assert json_size({"n": 2**70}) == len('{"n":1180591620717411303424}')
