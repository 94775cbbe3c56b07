"""The sandbox's workspace model: Customer.io's behaviours, one table row each."""

from __future__ import annotations

from typing import Any

import pytest

from posthog_customerio.customerio.sandbox.workspace import (
    Workspace,
    WorkspaceError,
    identifier_from_path,
)

NOW = 1_800_000_000


def person(ident: dict[str, str], action: str = "identify", **fields: Any) -> dict[str, Any]:
    return {"type": "person", "action": action, "identifiers": ident, **fields}


def event(ident: dict[str, str], name: str, event_id: str | None = None, **fields: Any) -> Any:
    item = person(ident, fields.pop("action", "event"), name=name, timestamp=1_700_000_000)
    if event_id is not None:
        item["id"] = event_id
    item.update(fields)
    return item


def obj(action: str, object_id: str = "acme", **fields: Any) -> dict[str, Any]:
    ids = {"object_type_id": "1", "object_id": object_id}
    return {"type": "object", "action": action, "identifiers": ids, **fields}


def anon(anonymous_id: str, name: str, event_id: str | None = None) -> tuple[str, Any]:
    body: dict[str, Any] = {"name": name, "anonymous_id": anonymous_id}
    if event_id is not None:
        body["id"] = event_id
    return ("v1_anonymous_event", body)


U1 = {"id": "u1"}
U2 = {"id": "u2"}


def run(ops: list[Any]) -> Workspace:
    ws = Workspace(clock=lambda: NOW)
    for op in ops:
        if isinstance(op, dict):
            ws.apply_item(op)
        else:
            method, *args = op
            getattr(ws, method)(*args)
    return ws


def view(ws: Workspace, key: str) -> dict[str, Any] | None:
    found = ws.person_by_id_or_email(key)
    if found is None:
        return None
    detail = ws.person_detail(found)
    detail["event_names"] = [e["name"] for e in detail["events"]]
    return detail


CASES = [
    pytest.param(
        [person(U1, attributes={"plan": "pro"})],
        {"u1": {"attributes": {"plan": "pro"}}},
        {"people": 1},
        id="identify-by-id-creates",
    ),
    pytest.param(
        [person({"email": "Jane@Example.com"}, attributes={"plan": "pro"})],
        {"jane@example.com": {"email": "Jane@Example.com", "id": None}},
        {"people": 1},
        id="identify-by-email-creates-and-finds-case-insensitively",
    ),
    pytest.param(
        [person(U1, attributes={"a": 1}), person(U1, attributes={"b": 2, "a": 3})],
        {"u1": {"attributes": {"a": 3, "b": 2}}},
        {"people": 1},
        id="identify-updates-existing",
    ),
    pytest.param(
        [person(U1, attributes={"a": 1, "b": 2, "c": 3}), person(U1, attributes={"a": ""})],
        {"u1": {"attributes": {"b": 2, "c": 3}}},
        {},
        id="empty-string-removes-attribute",
    ),
    pytest.param(
        [person(U1, attributes={"a": 1, "b": 2}), person(U1, attributes={"b": None})],
        {"u1": {"attributes": {"a": 1}}},
        {},
        id="null-removes-attribute",
    ),
    pytest.param(
        [person(U1, attributes={"_update": True, "a": 1})],
        {"u1": None},
        {"people": 0},
        id="update-flag-never-creates",
    ),
    pytest.param(
        [
            person(U1, attributes={"a": "new"}, timestamp=200),
            person(U1, attributes={"a": "old"}, timestamp=100),
        ],
        {"u1": {"attributes": {"a": "new"}}},
        {"stale_updates_ignored": 1},
        id="older-timestamped-identify-ignored",
    ),
    pytest.param(
        [person(U1, attributes={"email": "a@x.io"})],
        {"a@x.io": {"id": "u1", "email": "a@x.io"}},
        {},
        id="email-attribute-becomes-identifier",
    ),
    pytest.param(
        [
            person({"email": "a@x.io"}, attributes={"plan": "pro"}),
            person(U1, attributes={"email": "a@x.io"}),
        ],
        {"u1": {"email": "a@x.io", "attributes": {"email": "a@x.io", "plan": "pro"}}},
        {"people": 1},
        id="identify-by-id-adopts-email-only-person",
    ),
    pytest.param(
        [person(U1, attributes={"email": "a@x.io"}), person(U2, attributes={"email": "a@x.io"})],
        {"u2": {"email": None}, "a@x.io": {"id": "u1"}},
        {"people": 2, "failures": 1},
        id="email-owned-by-another-person-is-an-update-failure",
    ),
    pytest.param(
        [person(U1, attributes={"plan": "pro"}), person(U1, attributes={"email": "a@x.io"})],
        {"a@x.io": {"id": "u1", "attributes": {"plan": "pro", "email": "a@x.io"}}},
        {"people": 1, "failures": 0},
        id="identify-by-id-adds-a-first-email-to-that-profile",
    ),
    pytest.param(
        [
            person({"email": "a@x.io"}, attributes={"plan": "pro"}),
            person({"email": "a@x.io"}, attributes={"id": "u1"}),
        ],
        {"u1": {"email": "a@x.io", "attributes": {"plan": "pro", "email": "a@x.io"}}},
        {"people": 1, "failures": 0},
        id="identify-by-email-with-an-id-attribute-attaches-the-id",
    ),
    pytest.param(
        [
            person(U1, attributes={"email": "a@x.io"}),
            person(U1, attributes={"email": "b@x.io", "plan": "pro"}),
            person({"email": "a@x.io"}, attributes={"id": "u9"}),
        ],
        {
            "u1": {"email": "a@x.io", "attributes": {"email": "a@x.io", "plan": "pro"}},
            "b@x.io": None,
            "u9": None,
        },
        {"people": 1, "failures": 2},
        id="identifier-change-without-cio-id-is-an-update-failure",
    ),
    pytest.param(
        [
            person(U1, attributes={"email": "a@x.io"}),
            person(U1, attributes={"email": "A@X.io"}),
        ],
        {"a@x.io": {"id": "u1", "email": "A@X.io"}},
        {"people": 1, "failures": 0},
        id="same-email-in-other-capitals-is-no-change",
    ),
    pytest.param(
        [
            anon("anon-1", "viewed"),
            anon("anon-1", "clicked"),
            anon("anon-2", "other"),
            person(U1, attributes={"anonymous_id": "anon-1"}),
        ],
        {"u1": {"event_names": ["viewed", "clicked"], "anonymous_ids": ["anon-1"]}},
        {"anonymous_events_pending": 1, "events_stored": 3},
        id="identify-with-anonymous-id-attaches-stored-anonymous-events",
    ),
    pytest.param(
        [person(U1, attributes={"anonymous_id": "anon-1"}), anon("anon-1", "later")],
        {"u1": {"event_names": ["later"]}},
        {"anonymous_events_pending": 0},
        id="later-anonymous-events-go-to-the-person",
    ),
    pytest.param(
        [event(U1, "purchase", attributes={"price": 5})],
        {"u1": {"event_names": ["purchase"], "attributes": {}}},
        {"people": 1, "events_stored": 1},
        id="event-for-unknown-person-creates-it",
    ),
    pytest.param(
        [event(U1, "/pricing", action="page"), event(U1, "Home", action="screen")],
        {"u1": {"event_names": ["/pricing", "Home"]}},
        {"events_stored": 2},
        id="page-and-screen",
    ),
    pytest.param(
        [
            event(U1, "purchase", "01HZX3J5Q8W9E2R4T6Y8V0J1P2"),
            event(U1, "purchase", "01HZX3J5Q8W9E2R4T6Y8V0J1P2"),
            event(U2, "purchase", "01HZX3J5Q8W9E2R4T6Y8V0J1P2"),
            event(U1, "purchase"),
            event(U1, "purchase"),
        ],
        {"u1": {"event_names": ["purchase"] * 3}},
        {"events_stored": 3, "duplicate_events_ignored": 2},
        id="repeated-event-id-ignored-and-counted",
    ),
    pytest.param(
        [
            anon("a", "x", "01HZX3J5Q8W9E2R4T6Y8V0J1P2"),
            anon("a", "x", "01HZX3J5Q8W9E2R4T6Y8V0J1P2"),
        ],
        {},
        {"events_stored": 1, "duplicate_events_ignored": 1, "anonymous_events_pending": 1},
        id="repeated-anonymous-event-id-ignored",
    ),
    pytest.param(
        [
            person(U1, attributes={"plan": "pro"}),
            event(U1, "one"),
            person(U2, attributes={"plan": "free", "city": "Oslo", "email": "two@x.io"}),
            event(U2, "two"),
            {"type": "person", "action": "merge", "primary": U1, "secondary": U2},
        ],
        {
            "u1": {
                "attributes": {"plan": "pro", "city": "Oslo", "email": "two@x.io"},
                "event_names": ["one", "two"],
                "email": "two@x.io",
            },
            "u2": None,
        },
        {"people": 1, "merges": 1},
        id="merge-fills-missing-attributes-moves-events-deletes-secondary",
    ),
    pytest.param(
        [
            person(U1, attributes={"anonymous_id": "anon-2"}),
            person(U2, attributes={"anonymous_id": "anon-9"}),
            {"type": "person", "action": "merge", "primary": U1, "secondary": U2},
            anon("anon-9", "after-merge"),
        ],
        {"u1": {"event_names": ["after-merge"], "anonymous_ids": ["anon-2", "anon-9"]}},
        {"people": 1},
        id="merge-moves-anonymous-ids",
    ),
    pytest.param(
        [person(U1), {"type": "person", "action": "merge", "primary": U1, "secondary": U2}],
        {"u1": {"attributes": {}}},
        {"people": 1, "merges": 0},
        id="merge-with-unknown-secondary-is-a-no-op",
    ),
    pytest.param(
        [person(U1), event(U1, "x"), person(U1, "delete"), person(U2, "delete")],
        {"u1": None},
        {"people": 0, "deleted_people": 1},
        id="delete-removes-unknown-is-no-op",
    ),
    pytest.param(
        [
            person(U1, attributes={"email": "a@x.io"}),
            person(U1, "suppress"),
            person(U1, attributes={"back": True}),
            event({"email": "a@x.io"}, "x"),
        ],
        {"u1": None},
        {"people": 0, "suppressed_identifiers": 2, "suppressed_ignored": 2},
        id="suppress-deletes-and-blocks-identifiers",
    ),
    pytest.param(
        [person(U1), person(U1, "suppress"), person(U1, "unsuppress"), person(U1)],
        {"u1": {"attributes": {}}},
        {"people": 1, "suppressed_identifiers": 0},
        id="unsuppress-allows-the-identifier-again",
    ),
    pytest.param(
        [
            obj("identify", attributes={"name": "Acme", "tier": "gold"}),
            obj("identify", attributes={"tier": ""}),
            obj("add_relationships", cio_relationships=[{"identifiers": U1}]),
        ],
        {
            "u1": {
                "relationships": [
                    {"object_type_id": "1", "object_id": "acme", "relationship_attributes": {}}
                ]
            }
        },
        {"objects": 1, "relationships": 1, "people": 1},
        id="object-identify-and-add-relationships",
    ),
    pytest.param(
        [
            person(
                U1,
                cio_relationships=[
                    {
                        "identifiers": {"object_type_id": "1", "object_id": "acme"},
                        "relationship_attributes": {"role": "admin"},
                    }
                ],
            )
        ],
        {
            "u1": {
                "relationships": [
                    {
                        "object_type_id": "1",
                        "object_id": "acme",
                        "relationship_attributes": {"role": "admin"},
                    }
                ]
            }
        },
        {"objects": 1, "relationships": 1},
        id="cio-relationships-on-person-identify",
    ),
    pytest.param(
        [
            obj("identify", cio_relationships=[{"identifiers": U1}, {"identifiers": U2}]),
            obj("delete_relationships", cio_relationships=[{"identifiers": U1}]),
        ],
        {
            "u1": {"relationships": []},
            "u2": {
                "relationships": [
                    {"object_type_id": "1", "object_id": "acme", "relationship_attributes": {}}
                ]
            },
        },
        {"relationships": 1},
        id="object-delete-relationships",
    ),
    pytest.param(
        [
            person(
                U1,
                "add_relationships",
                cio_relationships=[{"identifiers": {"object_type_id": "1", "object_id": "acme"}}],
            ),
            person(
                U1,
                "delete_relationships",
                cio_relationships=[{"identifiers": {"object_type_id": "1", "object_id": "acme"}}],
            ),
        ],
        {"u1": {"relationships": []}},
        {"objects": 1, "relationships": 0},
        id="person-add-and-delete-relationships",
    ),
    pytest.param(
        [obj("identify", cio_relationships=[{"identifiers": U1}]), obj("delete")],
        {"u1": {"relationships": []}},
        {"objects": 0, "relationships": 0},
        id="object-delete-removes-relationships",
    ),
    pytest.param(
        [
            ("v1_identify", "a@x.io", {"plan": "pro", "id": "u1"}),
            ("v1_track", "u1", {"name": "bought", "data": {"sku": "x"}, "type": "event"}),
            ("v1_identify", "u2", {}),
            ("v1_merge", {"primary": U1, "secondary": U2}),
        ],
        {
            "u1": {
                "email": "a@x.io",
                "attributes": {"email": "a@x.io", "plan": "pro"},
                "event_names": ["bought"],
            }
        },
        {"people": 1, "merges": 1},
        id="v1-identify-track-merge",
    ),
    pytest.param(
        [
            (
                "v1_identify",
                "u1",
                {
                    "cio_relationships": {
                        "action": "add_relationships",
                        "relationships": [
                            {"identifiers": {"object_type_id": "1", "object_id": "acme"}}
                        ],
                    }
                },
            ),
        ],
        {
            "u1": {
                "attributes": {},
                "relationships": [
                    {"object_type_id": "1", "object_id": "acme", "relationship_attributes": {}}
                ],
            }
        },
        {"objects": 1},
        id="v1-identify-cio-relationships",
    ),
    pytest.param(
        [
            ("v1_identify", "u1", {}),
            ("v1_suppress", "u1"),
            ("v1_unsuppress", "u1"),
            ("v1_identify", "u2", {}),
            ("v1_delete", "u2"),
        ],
        {"u1": None, "u2": None},
        {"people": 0, "suppressed_identifiers": 0, "deleted_people": 2},
        id="v1-suppress-unsuppress-delete",
    ),
    pytest.param(
        [event(U1, "x", action="event", timestamp=None)],
        {
            "u1": {
                "events": [{"name": "x", "type": "event", "id": None, "timestamp": NOW, "data": {}}]
            }
        },
        {},
        id="event-without-timestamp-gets-arrival-time",
    ),
    pytest.param(
        [
            event({"anonymous_id": "anon-1"}, "viewed", action="page"),
            anon("anon-1", "clicked"),
            event({"anonymous_id": "anon-2"}, "other"),
            person(U1, attributes={"anonymous_id": "anon-1"}),
            event({"anonymous_id": "anon-1"}, "later"),
        ],
        {"u1": {"event_names": ["viewed", "clicked", "later"], "anonymous_ids": ["anon-1"]}},
        {"people": 1, "anonymous_events_pending": 1, "events_stored": 4},
        id="v2-anonymous-id-event-is-a-v1-anonymous-event",
    ),
]


@pytest.mark.parametrize(("ops", "people", "stats"), CASES)
def test_workspace_behaviour(
    ops: list[Any], people: dict[str, dict[str, Any] | None], stats: dict[str, int]
) -> None:
    ws = run(ops)
    for key, expected in people.items():
        got = view(ws, key)
        if expected is None:
            assert got is None, f"{key} should not exist"
            continue
        assert got is not None, f"{key} should exist"
        for field, value in expected.items():
            assert got[field] == value, (key, field)
    actual = ws.stats()
    for name, value in stats.items():
        assert actual[name] == value, name


@pytest.mark.parametrize(
    ("ops", "field"),
    [
        pytest.param([person({"cio_id": "ffff"})], "identifiers.cio_id", id="unknown-cio-id"),
        pytest.param([anon("", "x")], "anonymous_id", id="anonymous-event-needs-anonymous-id"),
        pytest.param(
            [
                {
                    "type": "object",
                    "action": "delete_relationships",
                    "identifiers": {"cio_object_id": "nope"},
                }
            ],
            "identifiers.cio_object_id",
            id="unknown-cio-object-id",
        ),
        pytest.param([person(U1, "frobnicate")], "action", id="unknown-action"),
    ],
)
def test_operations_that_cannot_apply_raise(ops: list[Any], field: str) -> None:
    with pytest.raises(WorkspaceError) as caught:
        run(ops)
    assert caught.value.field == field


def test_merge_into_a_person_that_does_not_exist_does_nothing() -> None:
    """ "If the primary profile doesn't exist, your request won't do anything" (Customer.io's
    "Merge duplicate people"): no error, no person created, the secondary left as it was."""
    ws = run([person(U2, attributes={"a": 1})])
    ws.merge(U1, U2)
    ws.apply_item({"type": "person", "action": "merge", "primary": U1, "secondary": U2})
    assert view(ws, "u1") is None
    secondary = view(ws, "u2")
    assert secondary is not None and secondary["attributes"] == {"a": 1}
    assert ws.stats()["people"] == 1
    assert ws.stats()["merges"] == 0
    assert ws.stats()["merges_ignored"] == 2


@pytest.mark.parametrize(
    ("segment", "identifiers"),
    [
        pytest.param("user-1", {"id": "user-1"}, id="id"),
        pytest.param("a@x.io", {"email": "a@x.io"}, id="email"),
        pytest.param("cio_a3000001", {"cio_id": "a3000001"}, id="cio-id"),
    ],
)
def test_identifier_from_path(segment: str, identifiers: dict[str, str]) -> None:
    assert identifier_from_path(segment) == identifiers


def test_cio_id_finds_and_inspection_by_cio_id() -> None:
    ws = run([person(U1)])
    found = ws.person_by_id_or_email("u1")
    assert found is not None
    assert ws.find({"cio_id": found.cio_id}) is found
    assert ws.person_by_id_or_email(f"cio_{found.cio_id}") is found


def test_identifiers_change_when_addressed_by_cio_id() -> None:
    ws = run([person(U1, attributes={"email": "a@x.io"})])
    found = ws.person_by_id_or_email("u1")
    assert found is not None
    ws.apply_item(person({"cio_id": found.cio_id}, attributes={"id": "u2", "email": "b@x.io"}))
    assert (found.id, found.email) == ("u2", "b@x.io")
    assert ws.person_by_id_or_email("a@x.io") is None
    assert ws.stats()["failures"] == 0


def test_reset_forgets_everything() -> None:
    ws = run([person(U1), event(U1, "x", "01HZX3J5Q8W9E2R4T6Y8V0J1P2"), anon("a", "y")])
    ws.reset()
    assert ws.stats()["people"] == 0
    assert ws.anonymous_events == {}
    ws.apply_item(event(U1, "x", "01HZX3J5Q8W9E2R4T6Y8V0J1P2"))
    assert ws.stats()["duplicate_events_ignored"] == 0


def test_objects_json_lists_related_people() -> None:
    ws = run(
        [obj("identify", attributes={"name": "Acme"}, cio_relationships=[{"identifiers": U1}])]
    )
    [acme] = ws.objects_json()
    assert acme["attributes"] == {"name": "Acme"}
    assert [r["id"] for r in acme["relationships"]] == ["u1"]
