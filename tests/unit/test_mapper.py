"""The mapping contract (DESIGN.md §4), one named case per rule; then the README's story.

Every operation any case produces is also checked against the official Track API spec.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from posthog_customerio.customerio.spec import default_validator, load_spec
from posthog_customerio.mapping.explain import Explanation, explain, format_explanation
from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.limits import MAX_ITEM_BYTES
from posthog_customerio.mapping.mapper import EventMapper, Mapper, MappingOutcome
from posthog_customerio.mapping.operation import Endpoint, Operation, v1_anonymous_body
from posthog_customerio.mapping.rules import AnonymousUsers, MappingRules
from posthog_customerio.mapping.ulid import is_ulid, ulid_from_uuid
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.normalize import event_from_mapping
from posthog_customerio.sources.webhook import parse_webhook_body
from tests.samples import POSTHOG_SAMPLES as SAMPLES

UUID7 = "01924815-6d55-7160-8999-50d836f675cc"
T_MS = 1_727_786_216_789
T_S = 1_727_786_216
ULID = ulid_from_uuid(UUID7, T_MS)
DEVICE = "0192480a-70d5-726b-b2a7-4de452e6b438"

SEND_ALL = MappingRules()
IDENTIFIED_ONLY = MappingRules(anonymous_users=AnonymousUsers.IDENTIFIED_ONLY)
WITH_EMAIL_ONLY = MappingRules(anonymous_users=AnonymousUsers.WITH_EMAIL_ONLY)
BY_EMAIL = MappingRules(identify_by_email=True)

# A person whose operations were sent before: Customer.io has a profile for it.
KNOWN = IdentityState(identified=True, seen=True, exists=True)
KNOWN_WITH_EMAIL = IdentityState(
    identified=True,
    email="jane@example.com",
    seen=True,
    sent_attribute_keys=frozenset({"email"}),
    exists=True,
)
ANON_WITH_EMAIL = IdentityState(email="jane@example.com", seen=True)


def ev(
    name: str = "order_completed",
    did: str = "user_42",
    *,
    identified: bool | str | None = True,
    props: dict[str, Any] | None = None,
    set: dict[str, Any] | None = None,
    set_once: dict[str, Any] | None = None,
    unset: Sequence[str] = (),
    person: dict[str, Any] | None = None,
    uuid: str = UUID7,
) -> PostHogEvent:
    """An event; ``identified`` is ``$is_identified`` (None: absent, as server-side SDKs)."""
    properties: dict[str, Any] = {} if identified is None else {"$is_identified": identified}
    properties.update(props or {})
    return PostHogEvent(
        uuid=uuid,
        event=name,
        distinct_id=did,
        timestamp_ms=T_MS,
        properties=properties,
        set=set or {},
        set_once=set_once or {},
        unset=tuple(unset),
        person_properties=person or {},
    )


def anon(name: str = "clicked", props: dict[str, Any] | None = None, **kwargs: Any) -> PostHogEvent:
    """An anonymous browser: distinct_id = $device_id, $is_identified false."""
    return ev(
        name, DEVICE, identified=False, props={"$device_id": DEVICE, **(props or {})}, **kwargs
    )


# -- spec validation -------------------------------------------------------------------------


@functools.cache
def _local_validator(name: str) -> Draft202012Validator:
    """Plain jsonschema (no oneOf leniency) on one component schema: an independent check."""
    resource = Resource.from_contents(load_spec(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:spec", resource)
    return Draft202012Validator({"$ref": f"urn:spec#/components/schemas/{name}"}, registry=registry)


_V2_SCHEMAS = {
    "identify": "identify_person",
    "identify.link": "identify_person",
    "event": "person_event",
    "page": "person_page",
    "screen": "person_screen",
    "merge": "person_merge",
    "object.identify": "object_identify",
    "add_relationships": "person_add_relationships",
    "delete": "person_delete",
    "suppress": "person_suppress",
}
_V1_ALTERNATIVE = {"event": 0, "page": 1, "screen": 2}


def spec_problems(op: Operation) -> list[str]:
    """Why ``op`` would be rejected by the spec; [] when valid.

    An anonymous item (``identifiers: {"anonymous_id"}``, which the spec does not list) is
    checked independently with the identifier read as an ``id`` (spec.py's reading), and its
    v1 form (the fallback) is checked too.
    """
    body = op.body
    if op.endpoint in (Endpoint.BATCH, Endpoint.ANONYMOUS_ITEM):
        problems = default_validator().validate_batch_item(body)
        local = body
        if op.endpoint is Endpoint.ANONYMOUS_ITEM:
            ids = body["identifiers"]
            if list(ids) != ["anonymous_id"] or not ids["anonymous_id"]:
                problems.append(f"an anonymous item names {ids}")
            local = {**body, "identifiers": {"id": ids["anonymous_id"]}}
            problems += spec_problems(
                dataclasses.replace(op, endpoint=Endpoint.ANONYMOUS, body=v1_anonymous_body(body))
            )
        problems += [e.message for e in _local_validator(_V2_SCHEMAS[op.action]).iter_errors(local)]
        if len(orjson.dumps(body)) > MAX_ITEM_BYTES:
            problems.append("over the 32 KB item limit")
        return problems
    problems = default_validator().validate_request("trackAnonymous", body)
    # The spec's oneOf lets a page view match the "standard" alternative too; check the
    # alternative the body's type names (the way spec.py dispatches).
    index = _V1_ALTERNATIVE[body.get("type", "event")]
    alternative = _local_validator("anonymousEventsRequest").evolve(
        schema={"$ref": f"urn:spec#/components/schemas/anonymousEventsRequest/oneOf/{index}"}
    )
    problems += [e.message for e in alternative.iter_errors(body)]
    if not body.get("anonymous_id"):
        problems.append("an anonymous event without anonymous_id is an invite")
    return problems


def merged_visitor(op: Operation) -> str | None:
    """The anonymous visitor an identify merges, if it is the merging identify."""
    attributes = op.body.get("attributes", {})
    if op.action == "identify" and list(attributes) == ["anonymous_id"]:
        return str(attributes["anonymous_id"])
    return None


def merge_partition(ops: Sequence[Operation]) -> str | None:
    """The alias's partition, where a merge and the identify of its primary are queued."""
    merges = [op for op in ops if op.action == "merge"]
    return merges[0].partition if merges else None


def assert_sendable(ops: Sequence[Operation], event: PostHogEvent) -> None:
    merging = merge_partition(ops)
    for index, op in enumerate(ops):
        assert spec_problems(op) == [], op
        if op.body.get("type") == "object":  # ordered per object, not per person
            ids = op.body["identifiers"]
            assert op.partition == f"object:{ids['object_type_id']}:{ids['object_id']}"
        elif merged_visitor(op) is not None:  # behind the visitor's anonymous events
            assert op.partition == merged_visitor(op) == event.properties["$anon_distinct_id"]
        elif merging is not None and op.partition == merging:
            # behind the alias's own operations: the primary's identify, then the merge
            assert op.partition == event.properties["alias"] != event.distinct_id
            assert op.action == "merge" or ops[index + 1].action == "merge"
        else:
            assert op.partition == event.distinct_id
        assert op.event_uuid == event.uuid
        if op.action in ("event", "page", "screen"):
            assert is_ulid(op.body["id"])
            assert type(op.body["timestamp"]) is int
        else:
            assert "timestamp" not in op.body


# -- the rule table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    event: PostHogEvent
    rules: MappingRules = SEND_ALL
    states: dict[str, IdentityState] = field(default_factory=dict)
    dropped: str | None = None
    # "action" for v2 items, "anonymous:action" for anonymous_id items, "v1_anonymous:action"
    # for v1 anonymous events
    ops: Sequence[str] = ()
    bodies: Sequence[dict[str, Any]] | None = None  # exact bodies, when given
    truncations: dict[str, int] | None = None
    state: IdentityState | None = None  # the distinct_id's state afterwards
    check: Callable[[MappingOutcome], None] | None = None


def attrs(outcome: MappingOutcome, index: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = outcome.operations[index].body.get("attributes", {})
    return result


def body(outcome: MappingOutcome, index: int = 0) -> dict[str, Any]:
    return outcome.operations[index].body


def _is(expected: Any, get: Callable[[MappingOutcome], Any]) -> Callable[[MappingOutcome], None]:
    def check(outcome: MappingOutcome) -> None:
        assert get(outcome) == expected

    return check


def _not_in(key: str, get: Callable[[MappingOutcome], Any]) -> Callable[[MappingOutcome], None]:
    def check(outcome: MappingOutcome) -> None:
        assert key not in get(outcome)

    return check


def _has_note(text: str) -> Callable[[MappingOutcome], None]:
    def check(outcome: MappingOutcome) -> None:
        assert any(text in note for note in outcome.notes), outcome.notes

    return check


def _all(*checks: Callable[[MappingOutcome], None]) -> Callable[[MappingOutcome], None]:
    def check(outcome: MappingOutcome) -> None:
        for one in checks:
            one(outcome)

    return check


def _no_states(outcome: MappingOutcome) -> None:
    assert outcome.states == {}


# "oldest" merged into "older", later "older" into "acct_5521": a chain of merges.
CHAIN = {
    "oldest": dataclasses.replace(KNOWN, merged_into="older"),
    "older": dataclasses.replace(KNOWN, merged_into="acct_5521"),
    "acct_5521": KNOWN,
}
CYCLE_B = dataclasses.replace(KNOWN, merged_into="oldest")
COOKIELESS = "cookieless_YmF6cXV4Zm9vYmFyNjc4"
COOKIELESS_DEVICE = "cookielessd_Zm9vcXV4YmF6YmFyOTAx"

IDENTIFY_SET = ev(
    "$identify",
    props={"$anon_distinct_id": DEVICE, "$device_id": DEVICE},
    set={"email": "jane@example.com", "plan": "pro"},
    set_once={"signup_source": "pricing"},
)

GROUPS = MappingRules(object_types={"company": "1", "team": "2"})
RELATED = frozenset({"1:acme"})


def group_identify(
    *,
    group_type: str = "company",
    key: object = "acme",
    group_set: dict[str, Any] | None = None,
    did: str = "user_42",
    identified: bool | None = True,
) -> PostHogEvent:
    props: dict[str, Any] = {"$group_type": group_type}
    if key is not None:
        props["$group_key"] = key
    if group_set is not None:
        props["$group_set"] = group_set
    return ev("$groupidentify", did, identified=identified, props=props)


CASES = [
    # ---- allowlist
    pytest.param(Case(ev("anything"), ops=["event"]), id="allowlist_empty_sends_everything"),
    pytest.param(
        Case(ev("signup"), MappingRules(event_allowlist=frozenset({"signup"})), ops=["event"]),
        id="allowlist_exact_match_sends",
    ),
    pytest.param(
        Case(
            ev("other"),
            MappingRules(event_allowlist=frozenset({"signup"})),
            dropped="not_in_allowlist",
        ),
        id="allowlist_other_event_dropped",
    ),
    pytest.param(
        Case(
            ev("Signup"),
            MappingRules(event_allowlist=frozenset({"signup"})),
            dropped="not_in_allowlist",
        ),
        id="allowlist_is_case_sensitive",
    ),
    pytest.param(
        Case(
            IDENTIFY_SET,
            MappingRules(event_allowlist=frozenset({"order_completed"})),
            dropped="not_in_allowlist",
            state=IdentityState(identified=True, email="jane@example.com", seen=True),
        ),
        id="allowlist_drop_still_learns_identity",
    ),
    pytest.param(
        Case(
            ev(identified=False, props={"$device_id": "user_42"}),
            MappingRules(
                anonymous_users=AnonymousUsers.IDENTIFIED_ONLY,
                event_allowlist=frozenset({"order_completed"}),
            ),
            states={"user_42": IdentityState(identified=True, email="jane@example.com", seen=True)},
            ops=["identify", "event"],
            check=_is({"email": "jane@example.com"}, attrs),
        ),
        id="allowlist_learned_identity_and_email_used_by_next_allowed_event",
    ),
    # ---- anonymous users
    pytest.param(
        Case(
            anon("$pageview", props={"$current_url": "https://x.test/pricing"}),
            ops=["anonymous:page"],
            bodies=[
                {
                    "type": "person",
                    "action": "page",
                    "identifiers": {"anonymous_id": DEVICE},
                    "name": "https://x.test/pricing",
                    "id": ULID,
                    "timestamp": T_S,
                    "attributes": {
                        "$is_identified": False,
                        "$device_id": DEVICE,
                        "$current_url": "https://x.test/pricing",
                    },
                }
            ],
        ),
        id="send_all_anonymous_pageview_is_anonymous_page",
    ),
    pytest.param(
        Case(anon(), ops=["anonymous:event"], check=_is("event", lambda o: body(o)["action"])),
        id="send_all_anonymous_custom_event_is_an_event",
    ),
    pytest.param(
        Case(
            anon("$screen", props={"$screen_name": "Home"}),
            ops=["anonymous:screen"],
            check=_is("screen", lambda o: body(o)["action"]),
        ),
        id="send_all_anonymous_screen",
    ),
    pytest.param(
        Case(anon(), IDENTIFIED_ONLY, dropped="anonymous_user", state=IdentityState(seen=True)),
        id="identified_only_drops_anonymous",
    ),
    pytest.param(
        Case(ev(identified=False), IDENTIFIED_ONLY, states={"user_42": KNOWN}, ops=["event"]),
        id="identified_only_sticky_once_identified",
    ),
    pytest.param(Case(ev(), IDENTIFIED_ONLY, ops=["event"]), id="identified_only_sends_identified"),
    pytest.param(
        Case(ev(), WITH_EMAIL_ONLY, dropped="no_email"), id="with_email_only_drops_without_email"
    ),
    pytest.param(
        Case(ev(person={"email": "jane@example.com"}), WITH_EMAIL_ONLY, ops=["identify", "event"]),
        id="with_email_only_passes_with_person_email",
    ),
    pytest.param(
        Case(ev(), WITH_EMAIL_ONLY, states={"user_42": KNOWN_WITH_EMAIL}, ops=["event"]),
        id="with_email_only_sticky_stored_email",
    ),
    pytest.param(
        Case(anon(), WITH_EMAIL_ONLY, states={DEVICE: ANON_WITH_EMAIL}, ops=["anonymous:event"]),
        id="with_email_only_anonymous_with_email_is_anonymous_event",
    ),
    pytest.param(
        Case(
            anon("$set", set={"email": "jane@example.com"}),
            dropped="nothing_to_send",
            state=IdentityState(email="jane@example.com", seen=True),
            check=_has_note("anonymous user are not sent"),
        ),
        id="anonymous_set_not_sent_but_email_learned",
    ),
    # ---- who is identified
    pytest.param(
        Case(ev(identified="false"), ops=["anonymous:event"]),
        id="is_identified_string_false_is_anonymous",
    ),
    pytest.param(
        Case(ev(identified="true"), ops=["event"]), id="is_identified_string_true_is_person"
    ),
    pytest.param(
        Case(ev(identified=False), ops=["anonymous:event"]), id="is_identified_false_is_anonymous"
    ),
    pytest.param(
        Case(ev(identified=None, props={"$device_id": "user_42"}), ops=["anonymous:event"]),
        id="distinct_id_equal_to_device_id_is_anonymous",
    ),
    pytest.param(
        Case(
            ev(identified=None, props={"$lib": "posthog-python"}),
            IDENTIFIED_ONLY,
            ops=["event"],
            state=IdentityState(exists=True, identified=True, seen=True),
        ),
        id="server_side_event_is_identified_person",
    ),
    pytest.param(
        Case(
            ev("$identify", identified=False),
            IDENTIFIED_ONLY,
            ops=["identify"],
            state=IdentityState(exists=True, identified=True, seen=True),
        ),
        id="identify_event_identifies",
    ),
    # ---- personless events
    pytest.param(
        Case(anon("$pageview", props={"$process_person_profile": False}), ops=["anonymous:page"]),
        id="personless_send_all_anonymous_event",
    ),
    pytest.param(
        Case(
            ev(props={"$process_person_profile": False}),
            ops=["anonymous:event"],
            state=IdentityState(seen=True),
        ),
        id="personless_never_identifies_even_if_flagged",
    ),
    pytest.param(
        Case(
            anon(props={"$process_person_profile": False}),
            IDENTIFIED_ONLY,
            dropped="anonymous_user",
        ),
        id="personless_identified_only_dropped",
    ),
    pytest.param(
        Case(
            anon(props={"$process_person_profile": False}),
            WITH_EMAIL_ONLY,
            states={DEVICE: ANON_WITH_EMAIL},
            dropped="anonymous_user",
        ),
        id="personless_with_email_only_dropped",
    ),
    pytest.param(
        Case(
            ev(props={"$process_person_profile": "false"}, set={"plan": "x"}),
            states={"user_42": KNOWN},
            ops=["event"],
        ),
        id="personless_known_identified_is_person_event_without_set",
    ),
    # ---- email
    pytest.param(
        Case(
            ev(set={"email": "new@example.com"}, person={"email": "person@example.com"}),
            states={"user_42": KNOWN_WITH_EMAIL},
            ops=["identify", "event"],
            check=_is({"email": "new@example.com"}, attrs),
        ),
        id="email_from_set_wins",
    ),
    pytest.param(
        Case(
            ev(person={"email": " person@example.com "}),
            ops=["identify", "event"],
            check=_is({"email": "person@example.com"}, attrs),
            state=IdentityState(
                exists=True,
                identified=True,
                email="person@example.com",
                seen=True,
                sent_attribute_keys=frozenset({"email"}),
            ),
        ),
        id="email_from_person_properties",
    ),
    pytest.param(
        Case(
            ev(),
            BY_EMAIL,
            states={"user_42": KNOWN_WITH_EMAIL},
            ops=["event"],
            check=_is({"email": "jane@example.com"}, lambda o: body(o)["identifiers"]),
        ),
        id="email_from_stored_state",
    ),
    pytest.param(
        Case(
            ev(set={"email": "not-an-email", "plan": "x"}, person={"email": "person@example.com"}),
            ops=["identify", "event"],
            truncations={"invalid_email": 1},
            check=_is({"email": "person@example.com", "plan": "x"}, attrs),
        ),
        id="email_invalid_set_falls_back_to_person_email",
    ),
    pytest.param(
        Case(
            ev("$set", set={"email": "jane at example", "plan": "x"}),
            ops=["identify"],
            check=_is({"plan": "x"}, attrs),
            state=IdentityState(
                exists=True, identified=True, seen=True, sent_attribute_keys=frozenset({"plan"})
            ),
        ),
        id="email_invalid_is_never_sent",
    ),
    pytest.param(
        Case(
            ev(person={"email": "other@example.com"}),
            states={"user_42": KNOWN_WITH_EMAIL},
            ops=["identify", "event"],
            check=_is({"email": "other@example.com"}, attrs),
        ),
        id="email_change_triggers_identify",
    ),
    pytest.param(
        Case(
            ev(person={"email": "jane@example.com"}),
            states={"user_42": KNOWN_WITH_EMAIL},
            ops=["event"],
        ),
        id="email_known_and_sent_no_identify",
    ),
    # ---- identify by email
    pytest.param(
        Case(
            IDENTIFY_SET,
            BY_EMAIL,
            ops=["identify", "identify"],
            check=_is(
                [{"email": "jane@example.com"}] * 2,
                lambda o: [op.body["identifiers"] for op in o.operations],
            ),
        ),
        id="identify_by_email_uses_email_identifier",
    ),
    pytest.param(
        Case(
            ev(),
            BY_EMAIL,
            ops=["event"],
            check=_is({"id": "user_42"}, lambda o: body(o)["identifiers"]),
        ),
        id="identify_by_email_without_email_falls_back_to_id",
    ),
    pytest.param(
        Case(
            ev(),
            SEND_ALL,
            states={"user_42": KNOWN_WITH_EMAIL},
            ops=["event"],
            check=_is({"id": "user_42"}, lambda o: body(o)["identifiers"]),
        ),
        id="identify_by_id_by_default",
    ),
    # ---- $set / $set_once / $unset
    pytest.param(
        Case(
            ev(props={"price": 5}, set={"plan": "pro"}),
            ops=["identify", "event"],
            bodies=[
                {
                    "type": "person",
                    "action": "identify",
                    "identifiers": {"id": "user_42"},
                    "attributes": {"plan": "pro"},
                },
                {
                    "type": "person",
                    "action": "event",
                    "identifiers": {"id": "user_42"},
                    "name": "order_completed",
                    "id": ULID,
                    "timestamp": T_S,
                    "attributes": {"$is_identified": True, "price": 5},
                },
            ],
        ),
        id="set_becomes_identify_first_and_is_not_event_data",
    ),
    pytest.param(
        Case(ev("$set", set={"plan": "pro"}), ops=["identify"]),
        id="set_event_is_identify_only",
    ),
    pytest.param(
        Case(
            ev("$set", set_once={"plan": "pro"}),
            states={
                "user_42": IdentityState(
                    identified=True, seen=True, sent_attribute_keys=frozenset({"plan"})
                )
            },
            dropped="nothing_to_send",
        ),
        id="set_event_with_nothing_new_is_nothing_to_send",
    ),
    pytest.param(
        Case(
            ev(set_once={"first_seen": "2024"}),
            ops=["identify", "event"],
            check=_is({"first_seen": "2024"}, attrs),
            state=IdentityState(
                exists=True,
                identified=True,
                seen=True,
                sent_attribute_keys=frozenset({"first_seen"}),
            ),
        ),
        id="set_once_sent_the_first_time",
    ),
    pytest.param(
        Case(
            ev(set_once={"first_seen": "2025"}),
            states={
                "user_42": IdentityState(
                    identified=True, seen=True, sent_attribute_keys=frozenset({"first_seen"})
                )
            },
            ops=["event"],
        ),
        id="set_once_skipped_when_person_had_it",
    ),
    pytest.param(
        Case(
            ev(set={"plan": "pro"}, set_once={"plan": "free", "src": "ad"}),
            ops=["identify", "event"],
            check=_is({"plan": "pro", "src": "ad"}, attrs),
        ),
        id="set_once_skipped_when_set_in_same_event",
    ),
    pytest.param(
        Case(
            ev(unset=["plan"]),
            states={
                "user_42": IdentityState(
                    identified=True, seen=True, sent_attribute_keys=frozenset({"plan", "x"})
                )
            },
            ops=["identify", "event"],
            check=_is({"plan": ""}, attrs),
            state=IdentityState(
                exists=True, identified=True, seen=True, sent_attribute_keys=frozenset({"x"})
            ),
        ),
        id="unset_sends_empty_string_and_forgets_the_key",
    ),
    pytest.param(
        Case(
            ev(set={"created_at": "2024-09-30T08:00:00Z"}),
            ops=["identify", "event"],
            check=_is({"created_at": 1_727_683_200}, attrs),
        ),
        id="created_at_iso_to_seconds",
    ),
    pytest.param(
        Case(
            ev(set={"created_at": 1_727_683_200_123}),
            ops=["identify", "event"],
            check=_is({"created_at": 1_727_683_200}, attrs),
        ),
        id="created_at_milliseconds_to_seconds",
    ),
    pytest.param(
        Case(
            ev(set_once={"created_at": 1_727_683_200}),
            ops=["identify", "event"],
            check=_is({"created_at": 1_727_683_200}, attrs),
        ),
        id="created_at_seconds_kept",
    ),
    # ---- event kinds
    pytest.param(
        Case(
            ev("$pageview", props={"$current_url": "https://x.test/a", "$pathname": "/a"}),
            ops=["page"],
            check=_is("https://x.test/a", lambda o: body(o)["name"]),
        ),
        id="pageview_name_is_current_url",
    ),
    pytest.param(
        Case(
            ev("$pageview", props={"$pathname": "/a"}),
            ops=["page"],
            check=_is("/a", lambda o: body(o)["name"]),
        ),
        id="pageview_name_falls_back_to_pathname",
    ),
    pytest.param(
        Case(ev("$pageview"), ops=["page"], check=_is("$pageview", lambda o: body(o)["name"])),
        id="pageview_name_falls_back_to_pageview",
    ),
    pytest.param(
        Case(
            ev("$screen", props={"$screen_name": "Settings"}),
            ops=["screen"],
            check=_is("Settings", lambda o: body(o)["name"]),
        ),
        id="screen_name_is_screen_name",
    ),
    pytest.param(
        Case(ev("$screen"), ops=["screen"], check=_is("$screen", lambda o: body(o)["name"])),
        id="screen_name_falls_back_to_screen",
    ),
    pytest.param(
        Case(
            ev("order_completed"),
            ops=["event"],
            check=_is(
                ("order_completed", ULID, T_S),
                lambda o: (body(o)["name"], body(o)["id"], body(o)["timestamp"]),
            ),
        ),
        id="other_event_is_event_with_ulid_and_seconds",
    ),
    # ---- $identify
    pytest.param(
        Case(
            IDENTIFY_SET,
            ops=["identify", "identify"],
            bodies=[
                {
                    "type": "person",
                    "action": "identify",
                    "identifiers": {"id": "user_42"},
                    "attributes": {
                        "email": "jane@example.com",
                        "plan": "pro",
                        "signup_source": "pricing",
                    },
                },
                {
                    "type": "person",
                    "action": "identify",
                    "identifiers": {"id": "user_42"},
                    "attributes": {"anonymous_id": DEVICE},
                },
            ],
            check=_is(["user_42", DEVICE], lambda o: [op.partition for op in o.operations]),
            state=IdentityState(
                exists=True,
                identified=True,
                email="jane@example.com",
                seen=True,
                sent_attribute_keys=frozenset({"email", "plan", "signup_source"}),
            ),
        ),
        id="identify_carries_anon_distinct_id_as_anonymous_id",
    ),
    pytest.param(
        Case(
            ev("$identify"),
            ops=["identify"],
            bodies=[{"type": "person", "action": "identify", "identifiers": {"id": "user_42"}}],
        ),
        id="identify_without_attributes_still_identifies",
    ),
    pytest.param(
        Case(
            ev("$identify", props={"$anon_distinct_id": "user_42"}),
            ops=["identify"],
            check=_not_in("attributes", body),
        ),
        id="identify_anon_id_equal_to_distinct_id_ignored",
    ),
    # ---- alias / merge
    pytest.param(
        Case(
            ev("$create_alias", props={"alias": "legacy-9001"}),
            states={"legacy-9001": KNOWN},
            ops=["identify", "merge"],
            bodies=[
                {"type": "person", "action": "identify", "identifiers": {"id": "user_42"}},
                {
                    "type": "person",
                    "action": "merge",
                    "primary": {"id": "user_42"},
                    "secondary": {"id": "legacy-9001"},
                },
            ],
            check=_is(["legacy-9001"] * 2, lambda o: [op.partition for op in o.operations]),
        ),
        id="alias_both_identified_merges",
    ),
    pytest.param(
        Case(
            ev("$merge_dangerously", props={"alias": "legacy-9001"}),
            states={"legacy-9001": KNOWN},
            ops=["identify", "merge"],
        ),
        id="merge_dangerously_merges",
    ),
    pytest.param(
        Case(ev("$create_alias", props={"alias": "legacy-9001"}), dropped="alias_not_identified"),
        id="alias_unknown_alias_dropped",
    ),
    pytest.param(
        Case(
            ev("$create_alias", identified=False, props={"alias": "legacy-9001"}),
            states={"legacy-9001": KNOWN},
            dropped="alias_not_identified",
        ),
        id="alias_anonymous_primary_dropped",
    ),
    pytest.param(
        Case(ev("$create_alias"), dropped="missing_alias"),
        id="alias_missing_dropped",
    ),
    pytest.param(
        Case(
            ev(
                "$create_alias",
                props={"alias": "legacy-9001"},
                person={"email": "jane@example.com"},
            ),
            BY_EMAIL,
            states={
                "legacy-9001": IdentityState(
                    identified=True, email="old@example.com", seen=True, exists=True
                )
            },
            ops=["identify", "identify", "merge"],
            check=_is(
                ({"email": "jane@example.com"}, {"email": "old@example.com"}),
                lambda o: (body(o, 2)["primary"], body(o, 2)["secondary"]),
            ),
        ),
        id="alias_identify_by_email_merges_by_email",
    ),
    # ---- groups → objects, relationships
    pytest.param(
        Case(
            group_identify(group_set={"name": "Acme Inc", "plan": "enterprise", "seats": 250}),
            GROUPS,
            ops=["object.identify"],
            bodies=[
                {
                    "type": "object",
                    "action": "identify",
                    "identifiers": {"object_type_id": "1", "object_id": "acme"},
                    "attributes": {"name": "Acme Inc", "plan": "enterprise", "seats": 250},
                }
            ],
            check=_is("object:1:acme", lambda o: o.operations[0].partition),
        ),
        id="groupidentify_mapped_is_object_identify_with_attributes",
    ),
    pytest.param(
        Case(group_identify(), dropped="groups_not_mapped"),
        id="groupidentify_without_object_types_dropped",
    ),
    pytest.param(
        Case(group_identify(group_type="project"), GROUPS, dropped="groups_not_mapped"),
        id="groupidentify_unmapped_type_dropped",
    ),
    pytest.param(
        Case(
            group_identify(),
            MappingRules(event_allowlist=frozenset({"signup"}), object_types={"company": "1"}),
            dropped="not_in_allowlist",
        ),
        id="groupidentify_obeys_the_allowlist",
    ),
    pytest.param(
        Case(
            group_identify(did="$company_acme", identified=None),
            MappingRules(
                anonymous_users=AnonymousUsers.WITH_EMAIL_ONLY, object_types={"company": "1"}
            ),
            ops=["object.identify"],
        ),
        id="groupidentify_server_side_passes_the_anonymous_gate",
    ),
    pytest.param(
        Case(
            group_identify(group_set=None),
            GROUPS,
            ops=["object.identify"],
            check=_not_in("attributes", body),
        ),
        id="groupidentify_without_group_set_creates_the_object",
    ),
    pytest.param(
        Case(
            group_identify(key=42),
            GROUPS,
            ops=["object.identify"],
            check=_is({"object_type_id": "1", "object_id": "42"}, lambda o: body(o)["identifiers"]),
        ),
        id="groupidentify_numeric_key_is_a_string_id",
    ),
    pytest.param(
        Case(group_identify(key=None), GROUPS, dropped="missing_group_key"),
        id="groupidentify_missing_key_dropped",
    ),
    pytest.param(
        Case(
            group_identify(key="k" * 151),
            GROUPS,
            dropped="group_key_too_long",
            truncations={"id_too_long": 1},
        ),
        id="groupidentify_key_over_150_bytes_dropped",
    ),
    pytest.param(
        Case(
            group_identify(
                group_set={"bio": "é" * 600, "n" * 151: 1, **{f"k{i:03}": i for i in range(300)}}
            ),
            GROUPS,
            ops=["object.identify"],
            truncations={"attribute_value": 1, "attribute_name": 1, "attribute_count": 1},
            check=_is(("é" * 500, 300), lambda o: (attrs(o)["bio"], len(attrs(o)))),
        ),
        id="group_attributes_within_limits",
    ),
    pytest.param(
        Case(
            group_identify(group_set={f"k{i:03}": "v" * 900 for i in range(60)}),
            GROUPS,
            ops=["object.identify"],
            truncations={"item_size": 25},
        ),
        id="group_identify_over_item_limit_drops_largest_attributes",
    ),
    pytest.param(
        Case(
            ev(props={"$groups": {"company": "acme", "project": "p1"}}),
            GROUPS,
            ops=["event", "add_relationships"],
            check=_is(
                {
                    "type": "person",
                    "action": "add_relationships",
                    "identifiers": {"id": "user_42"},
                    "cio_relationships": [
                        {"identifiers": {"object_type_id": "1", "object_id": "acme"}}
                    ],
                },
                lambda o: body(o, 1),
            ),
            state=IdentityState(
                exists=True, identified=True, seen=True, relationships=frozenset({"1:acme"})
            ),
        ),
        id="event_with_groups_relates_the_person_once",
    ),
    pytest.param(
        Case(
            ev(props={"$groups": {"company": "acme"}}),
            GROUPS,
            states={"user_42": IdentityState(identified=True, seen=True, relationships=RELATED)},
            ops=["event"],
        ),
        id="event_with_groups_already_related_sends_no_relationship",
    ),
    pytest.param(
        Case(
            ev(props={"$groups": {"company": "globex"}}),
            GROUPS,
            states={"user_42": IdentityState(identified=True, seen=True, relationships=RELATED)},
            ops=["event", "add_relationships"],
            state=IdentityState(
                exists=True,
                identified=True,
                seen=True,
                relationships=frozenset({"1:acme", "1:globex"}),
            ),
        ),
        id="event_with_a_new_group_relates_that_one",
    ),
    pytest.param(
        Case(ev(props={"$groups": {"company": "acme"}}), ops=["event"]),
        id="event_with_groups_without_object_types_sends_no_relationship",
    ),
    pytest.param(
        Case(anon(props={"$groups": {"company": "acme"}}), GROUPS, ops=["anonymous:event"]),
        id="anonymous_event_with_groups_gets_no_relationship",
    ),
    pytest.param(
        Case(
            ev(props={"$groups": {"company": "acme"}, "$process_person_profile": False}),
            GROUPS,
            states={"user_42": KNOWN},
            ops=["event"],
        ),
        id="personless_event_with_groups_gets_no_relationship",
    ),
    pytest.param(
        Case(
            ev("$identify", props={"$groups": {"company": "acme"}}),
            GROUPS,
            ops=["identify", "add_relationships"],
        ),
        id="identify_with_groups_relates_after_the_identify",
    ),
    pytest.param(
        Case(
            ev(props={"$groups": {"company": "acme"}}, person={"email": "jane@example.com"}),
            MappingRules(identify_by_email=True, object_types={"company": "1"}),
            states={"user_42": IdentityState(identified=True, seen=True, relationships=RELATED)},
            ops=["identify", "event", "add_relationships"],
            check=_is({"email": "jane@example.com"}, lambda o: body(o, 2)["identifiers"]),
        ),
        id="identify_by_email_new_identifier_relates_again",
    ),
    pytest.param(
        Case(
            ev(props={"$groups": {"company": "c" * 151}}),
            GROUPS,
            ops=["event"],
            truncations={"id_too_long": 1},
        ),
        id="groups_key_over_150_bytes_not_related",
    ),
    # ---- limits
    pytest.param(
        Case(ev(did="d" * 151), dropped="distinct_id_too_long", truncations={"id_too_long": 1}),
        id="distinct_id_too_long_dropped",
    ),
    pytest.param(
        Case(
            ev(set={"bio": "é" * 600}),
            ops=["identify", "event"],
            truncations={"attribute_value": 1},
            check=_is("é" * 500, lambda o: attrs(o)["bio"]),
        ),
        id="attribute_value_truncated_at_utf8_boundary",
    ),
    pytest.param(
        Case(
            ev(set={"n" * 151: 1, "ok": 1}),
            ops=["identify", "event"],
            truncations={"attribute_name": 1},
            check=_is({"ok": 1}, attrs),
        ),
        id="attribute_name_too_long_dropped",
    ),
    pytest.param(
        Case(
            ev(set={"nested": {"list": ["x" * 100] * 20}, "ok": 1}),
            ops=["identify", "event"],
            truncations={"attribute_value": 1},
            check=_is({"ok": 1}, attrs),
        ),
        id="attribute_nested_over_limit_dropped",
    ),
    pytest.param(
        Case(
            ev("$identify", set={f"k{i:03}": i for i in range(310)}, person={"email": "a@b.co"}),
            ops=["identify"],
            truncations={"attribute_count": 11},
            check=_is(["email", *(f"k{i:03}" for i in range(299))], lambda o: list(attrs(o))),
        ),
        id="attributes_over_300_keep_first_email_first",
    ),
    pytest.param(
        Case(
            ev("e" * 120),
            ops=["event"],
            truncations={"event_name": 1},
            check=_is("e" * 100, lambda o: body(o)["name"]),
        ),
        id="event_name_truncated",
    ),
    pytest.param(
        Case(
            ev(props={"big": "x" * 40_000, "small": 1}),
            ops=["event"],
            truncations={"item_size": 1},
            check=_is({"$is_identified": True, "small": 1}, attrs),
        ),
        id="event_data_over_item_limit_drops_largest_keys",
    ),
    pytest.param(
        Case(
            ev(props={f"k{i}": "x" * 30_000 for i in range(5)}),
            ops=["event"],
            truncations={"item_size": 4},
            check=_is(2, lambda o: len(attrs(o))),
        ),
        id="event_data_over_100k_within_item_limit_too",
    ),
    pytest.param(
        Case(
            anon(props={"a": "x" * 60_000, "b": "y" * 60_000}),
            ops=["v1_anonymous:event"],
            truncations={"event_data": 1},
        ),
        id="anonymous_event_data_over_100k_drops_largest_key",
    ),
    pytest.param(
        Case(
            ev("$identify", set={f"k{i:03}": "v" * 900 for i in range(60)}),
            ops=["identify"],
            truncations={"item_size": 25},  # equal sizes: dropped in key order, deterministic
            check=_is(["k025", "k026"], lambda o: list(attrs(o))[:2]),
        ),
        id="identify_over_item_limit_drops_largest_attributes",
    ),
    pytest.param(
        Case(
            ev("$identify", props={"$anon_distinct_id": "a" * 151}),
            ops=["identify"],
            truncations={"id_too_long": 1},
            check=_not_in("attributes", body),
        ),
        id="anon_distinct_id_too_long_not_merged",
    ),
    pytest.param(
        Case(
            ev("$pageview", props={"title": 5, "url": "https://x"}),
            ops=["page"],
            truncations={"reserved_attribute": 1},
            check=_not_in("title", attrs),
        ),
        id="reserved_event_key_of_wrong_type_dropped",
    ),
    pytest.param(
        Case(
            ev(set={"_update": "yes", "cio_subscription_preferences": 1, "ok": 1}),
            ops=["identify", "event"],
            truncations={"reserved_attribute": 2},
            check=_is({"ok": 1}, attrs),
        ),
        id="reserved_person_attribute_of_wrong_type_dropped",
    ),
    # ---- identity on messy real data (issue 14)
    # rule 1: ids PostHog itself refuses to merge on
    pytest.param(
        Case(
            ev("$pageview", "undefined", identified=False),
            dropped="illegal_distinct_id",
            check=_all(_no_states, _has_note("'undefined' is an id PostHog refuses")),
        ),
        id="illegal_distinct_id_dropped",
    ),
    pytest.param(
        Case(
            ev(did="[object Object]", set={"email": "a@example.com"}), dropped="illegal_distinct_id"
        ),
        id="illegal_distinct_id_with_person_updates_dropped",
    ),
    pytest.param(Case(ev(did="  "), dropped="illegal_distinct_id"), id="blank_distinct_id_dropped"),
    pytest.param(
        Case(
            ev("$identify", props={"$anon_distinct_id": "undefined"}, set={"plan": "pro"}),
            ops=["identify"],
            truncations={"illegal_id": 1},
            check=_all(_is({"plan": "pro"}, attrs), _has_note("refuses to merge on")),
        ),
        id="illegal_anon_distinct_id_sends_no_anonymous_id",
    ),
    pytest.param(
        Case(
            ev("$create_alias", props={"alias": "[object Object]"}),
            states={"[object Object]": KNOWN},
            dropped="illegal_distinct_id",
            truncations={"illegal_id": 1},
            check=_has_note("alias '[object Object]'"),
        ),
        id="alias_to_illegal_id_is_no_merge",
    ),
    pytest.param(
        Case(
            ev("$merge_dangerously", props={"alias": "null"}, set={"plan": "pro"}),
            states={"null": KNOWN},
            ops=["identify"],
            truncations={"illegal_id": 1},
            check=_has_note("not sent: illegal_distinct_id"),
        ),
        id="merge_dangerously_with_illegal_alias_sends_only_the_identify",
    ),
    pytest.param(
        Case(
            group_identify(did="undefined", group_set={"name": "Acme"}),
            GROUPS,
            ops=["object.identify"],
            check=_no_states,
        ),
        id="groupidentify_from_an_illegal_distinct_id_still_identifies_the_object",
    ),
    # rule 2: identifier attributes never change whom the operation addresses
    pytest.param(
        Case(
            ev("$identify", set={"id": "usr_8812", "plan": "team"}),
            ops=["identify"],
            truncations={"identifier_attribute": 1},
            check=_all(_is({"plan": "team"}, attrs), _has_note("attribute id differs")),
        ),
        id="set_id_differing_from_the_identifier_dropped",
    ),
    pytest.param(
        Case(
            ev(set={"cio_id": "a1b2", "plan": "team"}),
            ops=["identify", "event"],
            truncations={"identifier_attribute": 1},
            check=_is({"plan": "team"}, attrs),
        ),
        id="set_cio_id_dropped",
    ),
    pytest.param(
        Case(
            ev(set_once={"id": "usr_1", "first": 1}, unset=["cio_id"]),
            ops=["identify", "event"],
            truncations={"identifier_attribute": 2},
            check=_is({"first": 1}, attrs),
        ),
        id="set_once_id_and_unset_cio_id_dropped",
    ),
    pytest.param(
        Case(
            ev(set={"id": "user_42", "plan": "team"}),
            ops=["identify", "event"],
            truncations={},
            check=_is({"id": "user_42", "plan": "team"}, attrs),
        ),
        id="set_id_equal_to_the_identifier_kept",
    ),
    pytest.param(
        Case(
            ev(set={"email": "jane@example.com", "id": "user_42"}),
            BY_EMAIL,
            ops=["identify", "event"],
            truncations={"identifier_attribute": 1},
            check=_is({"email": "jane@example.com"}, attrs),
        ),
        id="set_id_with_identify_by_email_dropped",
    ),
    # rule 3 (pure part): an email-shaped distinct_id is the email when no other is known
    pytest.param(
        Case(
            ev("$identify", did="rosa@example.org", set={"plan": "starter"}),
            ops=["identify"],
            check=_is({"email": "rosa@example.org", "plan": "starter"}, attrs),
            state=IdentityState(
                exists=True,
                identified=True,
                email="rosa@example.org",
                seen=True,
                sent_attribute_keys=frozenset({"email", "plan"}),
            ),
        ),
        id="email_distinct_id_is_the_email",
    ),
    pytest.param(
        Case(
            ev(did="rosa@example.org", person={"email": "rosa.q@example.net"}),
            ops=["identify", "event"],
            check=_is({"email": "rosa.q@example.net"}, attrs),
        ),
        id="email_distinct_id_has_the_lowest_priority",
    ),
    pytest.param(
        Case(
            ev(did="rosa@example.org"),
            states={"rosa@example.org": KNOWN_WITH_EMAIL},
            ops=["event"],
        ),
        id="email_distinct_id_after_the_stored_email",
    ),
    pytest.param(
        Case(
            ev(did="not-an@address", person={}),
            ops=["event"],
            check=_is(KNOWN, lambda o: o.states["not-an@address"]),
        ),
        id="distinct_id_that_is_no_address_is_no_email",
    ),
    pytest.param(
        Case(
            ev(did="rosa@example.org", props={"$groups": {"company": "acme"}}),
            dataclasses.replace(BY_EMAIL, object_types={"company": "1"}),
            ops=["identify", "event", "add_relationships"],
            check=_is(
                [{"email": "rosa@example.org"}] * 3,
                lambda o: [op.body["identifiers"] for op in o.operations],
            ),
        ),
        id="email_distinct_id_with_identify_by_email_is_the_identifier",
    ),
    pytest.param(
        Case(
            ev("$create_alias", props={"alias": "old@example.org"}),
            BY_EMAIL,
            states={
                "user_42": KNOWN_WITH_EMAIL,
                "old@example.org": IdentityState(identified=True, seen=True, exists=True),
            },
            ops=["identify", "merge"],
            check=_is({"email": "old@example.org"}, lambda o: body(o, 1)["secondary"]),
        ),
        id="alias_email_shaped_id_merges_by_that_email",
    ),
    # rule 3, second half: identify_by_email links the id profile before switching
    pytest.param(
        Case(
            ev("$identify", set={"email": "li@example.org", "name": "Li"}),
            BY_EMAIL,
            states={"user_42": KNOWN},
            ops=["identify.link", "identify"],
            bodies=[
                {
                    "type": "person",
                    "action": "identify",
                    "identifiers": {"id": "user_42"},
                    "attributes": {"email": "li@example.org"},
                },
                {
                    "type": "person",
                    "action": "identify",
                    "identifiers": {"email": "li@example.org"},
                    "attributes": {"email": "li@example.org", "name": "Li"},
                },
            ],
            check=_has_note("exists in Customer.io by id"),
        ),
        id="identify_by_email_links_the_id_profile_before_switching",
    ),
    pytest.param(
        Case(
            ev("$identify", set={"email": "li@example.org"}),
            BY_EMAIL,
            states={"user_42": IdentityState(identified=True, seen=True)},
            ops=["identify"],
        ),
        id="identify_by_email_no_link_when_nothing_was_sent_by_id",
    ),
    pytest.param(
        Case(
            ev("$identify", set={"email": "new@example.org"}),
            BY_EMAIL,
            states={"user_42": KNOWN_WITH_EMAIL},
            ops=["identify"],
            check=_is({"email": "new@example.org"}, lambda o: body(o)["identifiers"]),
        ),
        id="identify_by_email_no_link_when_the_email_changes",
    ),
    pytest.param(
        Case(
            ev(
                "$identify",
                set={"email": "li@example.org"},
                props={"$anon_distinct_id": DEVICE},
            ),
            BY_EMAIL,
            states={"user_42": KNOWN},
            ops=["identify.link", "identify", "identify"],
            check=_is({"id": "user_42"}, lambda o: body(o, 2)["identifiers"]),
        ),
        id="identify_by_email_link_addresses_the_visitor_merge_by_id",
    ),
    pytest.param(
        Case(
            ev(props={"$groups": {"company": "acme"}}, person={"email": "li@example.org"}),
            dataclasses.replace(GROUPS, identify_by_email=True),
            states={"user_42": KNOWN},
            ops=["identify.link", "identify", "event", "add_relationships"],
            check=_is(
                [{"id": "user_42"}] + [{"email": "li@example.org"}] * 3,
                lambda o: [op.body["identifiers"] for op in o.operations],
            ),
        ),
        id="identify_by_email_event_relationship_after_the_link_use_the_email",
    ),
    # rule 4: merges that work
    pytest.param(
        Case(
            ev("$create_alias", "acct_5521", identified=None, props={"alias": "legacy-9001"}),
            states={"legacy-9001": KNOWN},
            ops=["identify", "merge"],
            check=lambda o: (
                _is(
                    ["legacy-9001", "legacy-9001"], lambda o: [op.partition for op in o.operations]
                )(o),
                _is({"id": "acct_5521"}, lambda o: body(o)["identifiers"])(o),
                _is("acct_5521", lambda o: o.states["legacy-9001"].merged_into)(o),
                _is(True, lambda o: o.states["acct_5521"].exists)(o),
            ),
        ),
        id="merge_creates_the_primary_first_in_the_alias_partition",
    ),
    pytest.param(
        Case(
            ev("$create_alias", props={"alias": "legacy-9001"}),
            states={"legacy-9001": IdentityState(identified=True, seen=True)},
            ops=[],
            dropped="nothing_to_send",
            check=lambda o: (
                _is("user_42", lambda o: o.states["legacy-9001"].merged_into)(o),
                _has_note("never reached Customer.io")(o),
            ),
        ),
        id="alias_never_sent_needs_no_merge_but_is_redirected",
    ),
    pytest.param(
        Case(
            ev("invoice_refunded", "legacy-9001", set={"tier": "gold"}),
            states={"legacy-9001": dataclasses.replace(KNOWN, merged_into="acct_5521")},
            ops=["identify", "event"],
            check=_is(
                [{"id": "acct_5521"}] * 2,
                lambda o: [op.body["identifiers"] for op in o.operations],
            ),
        ),
        id="merged_away_id_events_and_attributes_go_to_the_primary",
    ),
    pytest.param(
        Case(
            ev("invoice_refunded", "legacy-9001"),
            BY_EMAIL,
            states={
                "legacy-9001": dataclasses.replace(
                    KNOWN, merged_into="acct_5521", merged_email="acct@example.org"
                )
            },
            ops=["event"],
            check=_is({"email": "acct@example.org"}, lambda o: body(o)["identifiers"]),
        ),
        id="merged_away_id_with_identify_by_email_goes_to_the_primary_email",
    ),
    pytest.param(
        Case(
            ev("$create_alias", props={"alias": "legacy-9001"}),
            states={"legacy-9001": dataclasses.replace(KNOWN, merged_into="user_42")},
            dropped="nothing_to_send",
        ),
        id="alias_already_merged_into_this_person_sends_nothing",
    ),
    pytest.param(
        Case(
            ev("$create_alias", props={"alias": "legacy-9001"}),
            BY_EMAIL,
            dropped="alias_not_identified",
            check=lambda o: (
                _is("user_42", lambda o: o.states["legacy-9001"].merged_into)(o),
                _is(True, lambda o: o.states["user_42"].exists)(o),
            ),
        ),
        id="alias_never_seen_is_redirected_and_the_primary_kept_reachable_by_id",
    ),
    pytest.param(
        Case(
            ev("invoice_refunded", "oldest", set={"tier": "gold"}),
            states=CHAIN,
            ops=["identify", "event"],
            check=_all(
                _is(
                    [{"id": "acct_5521"}] * 2,
                    lambda o: [op.body["identifiers"] for op in o.operations],
                ),
                _is("acct_5521", lambda o: o.states["oldest"].merged_into),
            ),
        ),
        id="merge_chain_events_and_attributes_go_to_its_end_and_the_id_points_there",
    ),
    pytest.param(
        Case(
            ev("invoice_refunded", "oldest", props={"$groups": {"company": "acme"}}),
            dataclasses.replace(GROUPS, identify_by_email=True),
            states={
                "oldest": dataclasses.replace(CHAIN["oldest"], merged_email="older@example.org"),
                "older": dataclasses.replace(CHAIN["older"], merged_email="acct@example.org"),
                "acct_5521": dataclasses.replace(KNOWN, email="acct@example.org"),
            },
            ops=["event", "add_relationships"],
            check=_all(
                _is(
                    [{"email": "acct@example.org"}] * 2,
                    lambda o: [op.body["identifiers"] for op in o.operations],
                ),
                _is(
                    ("acct_5521", "acct@example.org"),
                    lambda o: (o.states["oldest"].merged_into, o.states["oldest"].merged_email),
                ),
            ),
        ),
        id="merge_chain_with_identify_by_email_goes_to_the_end_email",
    ),
    pytest.param(
        Case(
            ev("invoice_refunded", "oldest"),
            states={"oldest": CHAIN["oldest"], "older": CHAIN["older"]},
            ops=["event"],
            check=_is({"id": "acct_5521"}, lambda o: body(o)["identifiers"]),
        ),
        id="merge_chain_end_not_loaded_is_still_its_end",
    ),
    pytest.param(
        Case(
            ev("invoice_refunded", "older"),
            states={
                "oldest": dataclasses.replace(KNOWN, merged_into="older"),
                "older": dataclasses.replace(KNOWN, merged_into="oldest"),
            },
            ops=["event"],
            check=_all(
                _is({"id": "older"}, lambda o: body(o)["identifiers"]),
                _is("oldest", lambda o: o.states.get("older", CYCLE_B).merged_into),
            ),
        ),
        id="merge_cycle_ends_at_its_least_id_from_either_id",
    ),
    pytest.param(
        Case(
            ev("invoice_refunded", "oldest"),
            states={
                "oldest": dataclasses.replace(KNOWN, merged_into="older"),
                "older": CYCLE_B,
            },
            ops=["event"],
            check=_is({"id": "older"}, lambda o: body(o)["identifiers"]),
        ),
        id="merge_cycle_ends_at_its_least_id_from_the_other_id",
    ),
    pytest.param(
        Case(
            ev("$create_alias", props={"alias": "older"}),
            states={"user_42": KNOWN, **CHAIN},
            ops=["identify", "merge"],
            check=_all(
                _is(
                    {
                        "type": "person",
                        "action": "merge",
                        "primary": {"id": "user_42"},
                        "secondary": {"id": "acct_5521"},
                    },
                    lambda o: body(o, 1),
                ),
                _is(
                    {"older": "user_42", "acct_5521": "user_42"},
                    lambda o: {k: s.merged_into for k, s in o.states.items() if k != "user_42"},
                ),
            ),
        ),
        id="merge_of_a_merged_alias_merges_its_chain_end_and_redirects_both",
    ),
    pytest.param(
        Case(
            ev("$create_alias", "oldest", props={"alias": "acct_5521"}),
            states=CHAIN,
            dropped="nothing_to_send",
            check=_not_in("acct_5521", lambda o: o.states),
        ),
        id="merge_into_the_own_chain_end_sends_nothing_and_makes_no_cycle",
    ),
    pytest.param(
        Case(
            ev("$create_alias", "oldest", props={"alias": "legacy-9001"}),
            states={"legacy-9001": KNOWN, **CHAIN},
            ops=["identify", "merge"],
            check=_all(
                _is({"id": "acct_5521"}, lambda o: body(o, 1)["primary"]),
                _is("acct_5521", lambda o: o.states["legacy-9001"].merged_into),
            ),
        ),
        id="merge_by_a_merged_id_goes_into_its_chain_end",
    ),
    # rule 5: cookieless visitors
    pytest.param(
        Case(
            ev("$pageview", COOKIELESS, identified=None, props={"$device_id": COOKIELESS_DEVICE}),
            ops=["anonymous:page"],
            state=IdentityState(seen=True),
            check=_has_note("cookieless visitor"),
        ),
        id="cookieless_visitor_is_anonymous",
    ),
    pytest.param(
        Case(
            ev("clicked", COOKIELESS, identified=None, props={"$device_id": COOKIELESS_DEVICE}),
            IDENTIFIED_ONLY,
            dropped="anonymous_user",
        ),
        id="cookieless_visitor_identified_only_dropped",
    ),
    pytest.param(
        Case(
            ev("clicked", COOKIELESS, identified=True, props={"$device_id": COOKIELESS_DEVICE}),
            IDENTIFIED_ONLY,
            ops=["event"],
        ),
        id="cookieless_visitor_with_is_identified_true_is_a_person",
    ),
    pytest.param(
        Case(
            ev("$identify", COOKIELESS, identified=None, props={"$device_id": COOKIELESS_DEVICE}),
            IDENTIFIED_ONLY,
            ops=["identify"],
        ),
        id="cookieless_identify_identifies",
    ),
    pytest.param(
        Case(
            ev("clicked", COOKIELESS, identified=None, props={"$device_id": COOKIELESS_DEVICE}),
            IDENTIFIED_ONLY,
            states={COOKIELESS: KNOWN},
            ops=["event"],
        ),
        id="cookieless_visitor_once_identified_stays_identified",
    ),
    pytest.param(
        Case(ev(identified=None), IDENTIFIED_ONLY, ops=["event"]),
        id="server_side_event_without_device_id_stays_identified",
    ),
    # rule 6: an event whose properties were unusable (dropped by the source) has no
    # $device_id/$is_identified: its identity is unknown, so it identifies nobody on its own
    pytest.param(
        Case(
            dataclasses.replace(ev(identified=None), properties_dropped=True),
            ops=["anonymous:event"],
            state=IdentityState(seen=True),
            check=_has_note("properties unusable: identity unknown"),
        ),
        id="properties_dropped_send_all_sent_anonymous",
    ),
    pytest.param(
        Case(
            dataclasses.replace(ev(identified=None), properties_dropped=True),
            IDENTIFIED_ONLY,
            dropped="anonymous_user",
        ),
        id="properties_dropped_identified_only_dropped",
    ),
    pytest.param(
        Case(
            dataclasses.replace(ev(identified=None), properties_dropped=True),
            IDENTIFIED_ONLY,
            states={"user_42": KNOWN},
            ops=["event"],
            check=_is((), lambda o: o.notes),
        ),
        id="properties_dropped_known_person_stays_identified",
    ),
    pytest.param(
        Case(
            dataclasses.replace(ev("$identify", identified=None), properties_dropped=True),
            IDENTIFIED_ONLY,
            ops=["identify"],
        ),
        id="properties_dropped_identify_still_identifies",
    ),
    # rule 7: objects are normalised like people
    pytest.param(
        Case(
            group_identify(
                group_set={"name": "Harbor Ops", "created_at": "2024-11-18T07:30:00.000Z"}
            ),
            GROUPS,
            ops=["object.identify"],
            check=_is({"name": "Harbor Ops", "created_at": 1_731_915_000}, attrs),
        ),
        id="groupidentify_created_at_to_seconds",
    ),
    pytest.param(
        Case(
            group_identify(group_set={"created_at": 1_731_915_000_000}),
            GROUPS,
            ops=["object.identify"],
            check=_is({"created_at": 1_731_915_000}, attrs),
        ),
        id="groupidentify_created_at_milliseconds_to_seconds",
    ),
    # ---- state bookkeeping
    pytest.param(
        Case(ev(), states={"user_42": KNOWN}, ops=["event"], check=_is({}, lambda o: o.states)),
        id="unchanged_state_not_returned",
    ),
]


_LABEL_PREFIX = {Endpoint.BATCH: "", Endpoint.ANONYMOUS_ITEM: "anonymous:"}


def _labels(ops: Sequence[Operation]) -> list[str]:
    return [_LABEL_PREFIX.get(op.endpoint, "v1_anonymous:") + op.action for op in ops]


@pytest.mark.parametrize("case", CASES)
def test_mapping_rule(case: Case) -> None:
    outcome = EventMapper(case.rules).map(case.event, case.states)
    assert outcome.dropped == case.dropped, outcome.notes
    assert _labels(outcome.operations) == list(case.ops)
    if case.bodies is not None:
        assert [op.body for op in outcome.operations] == list(case.bodies)
    if case.truncations is not None:
        assert dict(outcome.truncations) == case.truncations
    if case.state is not None:
        assert outcome.states[case.event.distinct_id] == case.state
    if case.check is not None:
        case.check(outcome)
    assert_sendable(outcome.operations, case.event)


# -- properties of the mapper as a whole ------------------------------------------------------


def test_event_mapper_is_a_mapper() -> None:
    mapper: Mapper = EventMapper(SEND_ALL)
    assert mapper.distinct_ids(ev()) == ("user_42",)


@pytest.mark.parametrize(
    ("event", "ids"),
    [
        pytest.param(ev("$create_alias", props={"alias": "x"}), ("user_42", "x"), id="alias"),
        pytest.param(ev("$merge_dangerously", props={"alias": "x"}), ("user_42", "x"), id="merge"),
        pytest.param(ev("$create_alias", props={"alias": "user_42"}), ("user_42",), id="self"),
        pytest.param(ev("$create_alias"), ("user_42",), id="no_alias"),
    ],
)
def test_distinct_ids_whose_state_mapping_reads(event: PostHogEvent, ids: tuple[str, ...]) -> None:
    assert tuple(EventMapper(SEND_ALL).distinct_ids(event)) == ids


def test_mapping_is_pure_and_deterministic() -> None:
    states = {"user_42": KNOWN_WITH_EMAIL}
    before = orjson.dumps(IDENTIFY_SET.set)
    one = EventMapper(BY_EMAIL).map(IDENTIFY_SET, states)
    two = EventMapper(BY_EMAIL).map(IDENTIFY_SET, states)
    assert one == two
    assert states == {"user_42": KNOWN_WITH_EMAIL}
    assert orjson.dumps(IDENTIFY_SET.set) == before


def test_same_uuid_same_event_id_across_replays() -> None:
    mapper = EventMapper(SEND_ALL)
    ids = {mapper.map(ev(), {}).operations[0].body["id"] for _ in range(3)}
    assert ids == {ULID}


def test_anonymous_history_then_identify_merges_by_anonymous_id() -> None:
    """The Customer.io side of the anonymous → identified story: same id on both."""
    results = explain([anon("$pageview"), IDENTIFY_SET], SEND_ALL)
    (page,) = results[0].operations
    merge = results[1].operations[-1]
    assert page.body["identifiers"]["anonymous_id"] == DEVICE
    assert merge.body["attributes"] == {"anonymous_id": DEVICE}
    # The identify that merges is ordered behind the visitor's events: the same partition.
    assert page.partition == merge.partition == DEVICE


@pytest.mark.parametrize("rules", [SEND_ALL, BY_EMAIL], ids=["by_id", "by_email"])
def test_merge_chain_then_an_event_of_the_first_id_reaches_the_end(rules: MappingRules) -> None:
    """A merged into B, later B into C (each a delivered person), then A's event and
    attributes: they go to C, and after the second merge no operation addresses B."""
    people = [
        ev("signed_up", did, uuid=f"0192480a-70d5-726b-b2a7-00000000000{i}", set=email)
        for i, (did, email) in enumerate(
            [("a", {"email": "a@example.org"}), ("b", {"email": "b@example.org"}), ("c", {})]
        )
    ]
    merges = [
        ev("$create_alias", "b", uuid="0192480a-70d5-726b-b2a7-000000000010", props={"alias": "a"}),
        ev("$create_alias", "c", uuid="0192480a-70d5-726b-b2a7-000000000011", props={"alias": "b"}),
    ]
    after = [
        ev("invoice_refunded", "a", uuid=f"0192480a-70d5-726b-b2a7-00000000002{i}", set=set_)
        for i, set_ in enumerate([{}, {"tier": "gold"}])
    ]
    states: dict[str, IdentityState] = {}
    results = explain([*people, *merges, *after], rules, states)
    second_merge = results[4].operations[-1].body
    assert second_merge["action"] == "merge"
    c = {"id": "c"}
    b = {"email": "b@example.org"} if rules.identify_by_email else {"id": "b"}
    assert (second_merge["primary"], second_merge["secondary"]) == (c, b)
    late = [op for result in results[5:] for op in result.operations]
    assert [op.action for op in late] == ["event", "identify", "event"]
    assert all(op.body["identifiers"] == c for op in late), [op.body for op in late]
    assert states["a"].merged_into == "c"  # pointed at the end: one read next time


def test_sticky_flags_never_turn_off() -> None:
    states: dict[str, IdentityState] = {}
    explain(
        [ev(person={"email": "jane@example.com"}), ev(identified=False)], WITH_EMAIL_ONLY, states
    )
    assert states["user_42"].identified
    assert states["user_42"].email == "jane@example.com"


# -- the story (examples/posthog/README.md) --------------------------------------------------

STORY = [
    "pageview-anonymous",
    "personless",
    "identify",
    "pageview-identified",
    "autocapture",
    "custom-event",
    "groupidentify",
    "create-alias",
    "screen",
    "server-side",
]

STORY_SEND_ALL = [
    ("$pageview", "send", None, ["anonymous:page"]),
    ("$pageview", "send", None, ["anonymous:page"]),
    ("$identify", "send", None, ["identify", "identify"]),  # the person's, then the merge
    ("$pageview", "send", None, ["page"]),
    ("$autocapture", "send", None, ["event"]),
    ("order_completed", "send", None, ["identify", "event"]),
    ("$groupidentify", "drop", "groups_not_mapped", []),
    ("$create_alias", "drop", "alias_not_identified", []),
    ("$screen", "send", None, ["screen"]),
    ("subscription_renewed", "send", None, ["identify", "event"]),
]


def _gated(reason: str) -> list[tuple[str, str, str | None, list[str]]]:
    return [
        ("$pageview", "drop", reason, []),
        ("$pageview", "drop", reason, []),
        *STORY_SEND_ALL[2:],
    ]


def story_events() -> list[PostHogEvent]:
    return [
        event
        for name in STORY
        for event in parse_webhook_body(
            (SAMPLES / f"webhook-{name}.json").read_bytes(), received_ms=0
        )
    ]


def _summary(results: Sequence[Explanation]) -> list[tuple[str, str, str | None, list[str]]]:
    return [(x.event, x.decision, x.reason, _labels(x.operations)) for x in results]


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        pytest.param(SEND_ALL, STORY_SEND_ALL, id="send_all"),
        pytest.param(IDENTIFIED_ONLY, _gated("anonymous_user"), id="identified_only"),
        pytest.param(WITH_EMAIL_ONLY, _gated("no_email"), id="with_email_only"),
        pytest.param(
            MappingRules(identify_by_email=True, anonymous_users=AnonymousUsers.IDENTIFIED_ONLY),
            _gated("anonymous_user"),
            id="identified_only_by_email",
        ),
    ],
)
def test_story(rules: MappingRules, expected: list[Any]) -> None:
    events = story_events()
    results = explain(events, rules)
    assert _summary(results) == expected
    for event, result in zip(events, results, strict=True):
        assert_sendable(result.operations, event)
    identify = results[2].operations[0].body
    merge = next(op for op in results[2].operations if merged_visitor(op) is not None)
    assert merge.body["attributes"]["anonymous_id"] == events[0].distinct_id
    assert merge.body["identifiers"] == identify["identifiers"]
    assert identify["attributes"]["email"] == "jane@example.com"
    assert identify["attributes"]["created_at"] == 1_727_683_200
    if rules.identify_by_email:
        assert all(
            op.body.get("identifiers") == {"email": "jane@example.com"}
            for x in results[2:]
            for op in x.operations
        )


def test_story_explained_for_humans() -> None:
    text = "\n\n".join(format_explanation(x) for x in explain(story_events(), SEND_ALL))
    assert "DROP  reason: groups_not_mapped" in text
    assert "POST /api/v2/batch (item, anonymous_id)" in text
    assert '"anonymous_id": "0192480a-70d5-726b-b2a7-4de452e6b438"' in text
    assert "SEND  2 operations" in text


def test_explain_notes_and_truncations_are_shown() -> None:
    event = event_from_mapping(
        {"event": "e" * 120, "distinct_id": "u", "properties": {"$is_identified": True}},
        person=None,
        received_ms=T_MS,
        path="",
    )
    (result,) = explain([event], SEND_ALL)
    assert result.as_dict()["truncations"] == {"event_name": 1}
    text = format_explanation(result)
    assert "changed or dropped for Customer.io: event_name=1" in text
    assert "note: uuid derived from content" in text


def test_explain_shows_what_the_source_dropped_and_the_illegal_ids_as_dropped() -> None:
    event = event_from_mapping(
        {
            "event": "$identify",
            "distinct_id": "u",
            "timestamp": "soon",
            "properties": {"$anon_distinct_id": "undefined", "$set": "{", "$is_identified": 1},
            "$set": {"id": "other", "plan": "pro"},
        },
        person="jane",
        received_ms=T_MS,
        path="",
    )
    (result,) = explain([event], SEND_ALL)
    text = format_explanation(result)
    assert "changed or dropped for Customer.io: identifier_attribute=1, illegal_id=1" in text
    for note in (
        "properties.$set is a string but not valid JSON: dropped",
        "person must be an object, not a string: ignored",
        "timestamp unparseable: time of receipt used",
    ):
        assert f"note: {note}" in text


def test_export_sample_maps_to_valid_operations_under_every_mode() -> None:
    lines = (SAMPLES / "export-sample.jsonl").read_bytes().splitlines()
    events = [
        event_from_mapping(orjson.loads(line), person=None, received_ms=0, path="")
        for line in lines
        if line.strip()
    ]
    for rules in (SEND_ALL, IDENTIFIED_ONLY, WITH_EMAIL_ONLY, BY_EMAIL):
        results = explain(events, rules)
        assert any(x.decision == "send" for x in results)
        for event, result in zip(events, results, strict=True):
            assert_sendable(result.operations, event)


def test_operation_that_cannot_fit_is_dropped_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unreachable with real limits (ids and names are capped first), but never sent over."""
    monkeypatch.setattr("posthog_customerio.mapping.mapper.fit_item", lambda *a, **k: None)
    outcome = EventMapper(SEND_ALL).map(ev(set={"a": 1}), {})
    assert outcome.operations == []
    assert outcome.dropped == "operation_too_large"
    assert any("32 KB" in note for note in outcome.notes)


# -- groups → objects in the story, and the deletion of a forgotten person ---------------------


def test_story_with_company_mapped_to_an_object_type() -> None:
    events = story_events()
    results = explain(events, GROUPS)
    summary = _summary(results)
    expected = [*STORY_SEND_ALL]
    expected[5] = ("order_completed", "send", None, ["identify", "event", "add_relationships"])
    expected[6] = ("$groupidentify", "send", None, ["object.identify"])
    assert summary == expected
    for event, result in zip(events, results, strict=True):
        assert_sendable(result.operations, event)
    relate = results[5].operations[2].body
    assert relate["cio_relationships"] == [
        {"identifiers": {"object_type_id": "1", "object_id": "acme-inc"}}
    ]
    obj = results[6].operations[0]
    assert obj.partition == "object:1:acme-inc"
    assert obj.body["attributes"] == {"name": "Acme Inc", "plan": "enterprise", "seats": 250}
    # the same event again (a new uuid): the relationship is not sent twice
    states: dict[str, IdentityState] = {}
    again = explain([events[5], replace_uuid(events[5])], GROUPS, states)
    assert [_labels(x.operations) for x in again] == [
        ["identify", "event", "add_relationships"],
        ["identify", "event"],  # its $set is sent again; the relationship is not
    ]
    assert states["user_42"].relationships == frozenset({"1:acme-inc"})
    text = format_explanation(results[6])
    assert "object.identify -> POST /api/v2/batch (item)" in text


def replace_uuid(event: PostHogEvent) -> PostHogEvent:
    return dataclasses.replace(event, uuid="01924815-6d55-7160-8999-000000000001")


@pytest.mark.parametrize(
    ("rules", "state", "suppress", "expected"),
    [
        pytest.param(SEND_ALL, None, False, [{"id": "user_42"}], id="by_id"),
        pytest.param(SEND_ALL, KNOWN_WITH_EMAIL, False, [{"id": "user_42"}], id="email_ignored"),
        pytest.param(
            BY_EMAIL,
            KNOWN_WITH_EMAIL,
            False,
            [{"email": "jane@example.com"}, {"id": "user_42"}],
            id="identify_by_email_deletes_the_email_profile_and_the_id_one",
        ),
        pytest.param(BY_EMAIL, KNOWN, False, [{"id": "user_42"}], id="identify_by_email_no_email"),
        pytest.param(SEND_ALL, None, True, [{"id": "user_42"}], id="suppress"),
    ],
)
def test_forget_operations(
    rules: MappingRules, state: IdentityState | None, suppress: bool, expected: list[Any]
) -> None:
    ops = EventMapper(rules).forget_operations("user_42", state, suppress=suppress)
    action = "suppress" if suppress else "delete"
    assert [op.body["identifiers"] for op in ops] == expected
    for op in ops:
        assert op.body == {
            "type": "person",
            "action": action,
            "identifiers": op.body["identifiers"],
        }
        assert (op.partition, op.action, op.endpoint) == ("user_42", action, Endpoint.BATCH)
        assert spec_problems(op) == []


def test_forget_operations_skip_an_id_customerio_cannot_hold() -> None:
    assert EventMapper(SEND_ALL).forget_operations("x" * 151, None) == []


def test_identity_state_codec_reads_states_stored_before_related_existed() -> None:
    from posthog_customerio.queue.codec import decode_state, encode_state

    old = b'{"identified":true,"email":"a@b.co","seen":true,"set_once_keys":["email"]}'
    state = decode_state(old)
    assert state.relationships == frozenset()
    assert encode_state(state) == old  # unchanged bytes without relationships
    related = IdentityState(identified=True, relationships=frozenset({"2:b", "1:a"}))
    assert b'"related":["1:a","2:b"]' in encode_state(related)
    assert decode_state(encode_state(related)) == related


def test_identity_state_codec_reads_states_written_by_earlier_versions() -> None:
    """The stored keys are still ``set_once_keys`` and ``related`` (the fields were renamed
    ``sent_attribute_keys`` and ``relationships``): existing databases read unchanged, and a
    state is written back byte for byte as before."""
    from posthog_customerio.queue.codec import decode_state, encode_state

    old = (
        b'{"identified":true,"email":"a@b.co","seen":true,'
        b'"set_once_keys":["email","plan"],"related":["1:acme"]}'
    )
    state = decode_state(old)
    assert state == IdentityState(
        identified=True,
        email="a@b.co",
        seen=True,
        sent_attribute_keys=frozenset({"email", "plan"}),
        relationships=frozenset({"1:acme"}),
        exists=True,  # written before ``exists``: an identified person's events were sent
    )
    assert encode_state(state) == old
