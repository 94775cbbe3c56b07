"""The mapping contract (DESIGN.md §4): one PostHog event + the identity state of the ids it
touches → the updated states and zero or more Customer.io operations, or a drop reason.

Pure and deterministic (no I/O, clock or randomness): the queue calls it inside the
transaction that stores its result, ``explain`` calls it to show a user what would happen,
and the tests table-drive it. Steps, in order:

0. refuse a distinct_id Customer.io cannot hold or PostHog refuses to merge on (``ids``);
1. learn: identified (sticky), email, seen — from every event, before any filter;
2. filter: allowlist, then the ``anonymous_users`` gate (drop reasons are metric labels);
3. build: an ``identify`` first when person attributes or a not-yet-sent email are present,
   then the event/page/screen (person: v2 batch item; anonymous: v2 batch item with an
   ``anonymous_id`` identifier) or the merge, then ``add_relationships`` for mapped ``$groups``
   not yet related; a mapped ``$groupidentify`` is an object ``identify`` instead (its own
   partition); the ``anonymous_id`` of ``$identify`` goes in an identify of its own, queued in
   the anonymous visitor's partition behind the visitor's events;
4. enforce the Track API limits (``limits``), counting every change.

Decisions where the contract is silent are documented inline and in ``docs/mapping.md``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.ids import is_cookieless, is_illegal_id
from posthog_customerio.mapping.limits import (
    MAX_EVENT_DATA_BYTES,
    MAX_ITEM_BYTES,
    Counts,
    count,
    fit_item,
    fits_id,
    json_size,
    limit_attributes,
    limit_event_name,
    shrink_mapping,
)
from posthog_customerio.mapping.operation import (
    LINK_IDENTIFY,
    MERGE,
    OBJECT_IDENTIFY,
    Endpoint,
    Operation,
)
from posthog_customerio.mapping.rules import AnonymousUsers, MappingRules
from posthog_customerio.mapping.ulid import ulid_from_uuid
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.normalize import parse_timestamp_ms


@dataclass(frozen=True, slots=True)
class MappingOutcome:
    """What a ``Mapper`` returns for one event."""

    states: Mapping[str, IdentityState]
    operations: Sequence[Operation]
    dropped: str | None = None  # reason, a stable metric label such as "not_in_allowlist"
    truncations: Mapping[str, int] = field(default_factory=dict)  # kind -> count
    notes: Sequence[str] = ()  # human-readable, for explain and logs


class Mapper(Protocol):
    """Pure mapping, as the queue calls it inside its transaction (``EventMapper`` is the one
    the connector uses; tests inject small ones)."""

    def distinct_ids(self, event: PostHogEvent) -> Sequence[str]:
        """The distinct_ids whose identity state the mapping of ``event`` reads."""
        ...

    def map(self, event: PostHogEvent, states: Mapping[str, IdentityState]) -> MappingOutcome:
        """Decide the operations for ``event`` given the loaded states: those of
        ``distinct_ids(event)`` and of their ``merged_into`` chains (``with_merge_chains``)."""
        ...


# ``$lib`` of the events the reverse path captures into PostHog (mapping/reporting.py): the
# loop guard drops them, so an "Email Opened" never travels back to Customer.io.
OWN_LIB = "posthog-customerio"

ALIAS_EVENTS = frozenset({"$create_alias", "$merge_dangerously"})
# Person operations that create the person they address when Customer.io does not know it.
_CREATING_ACTIONS = frozenset(
    {"identify", LINK_IDENTIFY, "event", "page", "screen", "add_relationships"}
)
GROUP_IDENTIFY = "$groupidentify"
_NEVER_SEEN = IdentityState()
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

# Keys the spec types inside event data; a PostHog property of the wrong type there would make
# Customer.io reject the whole item, so such a value is dropped (counted "reserved_attribute").
_STRING = (str,)
_RESERVED_EVENT_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "event": {"recipient": _STRING, "from_address": _STRING, "reply_to": _STRING},
    "page": {
        "path": _STRING,
        "referrer": _STRING,
        "search": _STRING,
        "title": _STRING,
        "url": _STRING,
        "keywords": (list,),
    },
    "screen": {},
    "anonymous_event": {"from_address": _STRING, "reply_to": _STRING},
    "anonymous_page": {},
    "anonymous_screen": {},
}
# Person attributes that are identifiers in Customer.io: sent only equal to the identifier.
_IDENTIFIER_ATTRIBUTES = ("id", "cio_id")
_RESERVED_PERSON_KEYS: dict[str, tuple[type, ...]] = {
    "_update": (bool,),
    "cio_subscription_preferences": (dict,),
}


def valid_email(value: object) -> str | None:
    """The address if ``value`` looks like one and can be an identifier (<= 150 bytes)."""
    if not isinstance(value, str):
        return None
    address = value.strip()
    if _EMAIL.fullmatch(address) and fits_id(address):
        return address
    return None


def _flag(value: object) -> bool | None:
    """``$is_identified`` / ``$process_person_profile``: bool, "true"/"false", 1/0; else None."""
    if value is None:  # the usual absent property: skip the type tests
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        return None
    if isinstance(value, int | float):
        return bool(value)
    return None


def _alias(event: PostHogEvent) -> str | None:
    alias = event.properties.get("alias")
    if isinstance(alias, int) and not isinstance(alias, bool):
        alias = str(alias)
    return alias if isinstance(alias, str) and alias else None


def _group_key(value: object) -> str | None:
    """A ``$group_key`` / ``$groups`` value as an object id: a non-empty string (ints too)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value if isinstance(value, str) and value else None


def object_partition(object_type_id: str, object_id: str) -> str:
    """The ordering key of one object's operations (never a person's distinct_id in practice)."""
    return f"object:{object_type_id}:{object_id}"


class EventMapper:
    """The ``Mapper`` the queue injects: ``MappingRules`` are the app's options."""

    __slots__ = ("_rules",)

    def __init__(self, rules: MappingRules) -> None:
        self._rules = rules

    @property
    def rules(self) -> MappingRules:
        return self._rules

    def distinct_ids(self, event: PostHogEvent) -> Sequence[str]:
        """The distinct_id, plus the alias of ``$create_alias``/``$merge_dangerously``."""
        if event.event in ALIAS_EVENTS:
            alias = _alias(event)
            if alias is not None and alias != event.distinct_id:
                return (event.distinct_id, alias)
        return (event.distinct_id,)

    def map(self, event: PostHogEvent, states: Mapping[str, IdentityState]) -> MappingOutcome:
        """Decide the operations for ``event``; see the module docstring for the steps."""
        did = event.distinct_id
        if event.properties.get("$lib") == OWN_LIB:
            return MappingOutcome(
                states={},
                operations=(),
                dropped="own_event",
                notes=("captured by this connector from Customer.io: not sent back",),
            )
        if not did:
            return MappingOutcome(states={}, operations=(), dropped="missing_distinct_id")
        if not fits_id(did):
            return MappingOutcome(
                states={},
                operations=(),
                dropped="distinct_id_too_long",
                truncations={"id_too_long": 1},
                notes=("distinct_id is over 150 bytes, so it cannot be a Customer.io id",),
            )
        if is_illegal_id(did):
            if event.event != GROUP_IDENTIFY:
                return MappingOutcome(
                    states={},
                    operations=(),
                    dropped="illegal_distinct_id",
                    notes=(f"distinct_id {did!r} is an id PostHog refuses to merge on",),
                )
            # The object does not depend on its sender's id; nothing is learnt about that id.
            outcome = _Mapping(self._rules, event, {}).run()
            return dataclasses.replace(outcome, states={})
        return _Mapping(self._rules, event, states).run()

    def forget_operations(
        self, distinct_id: str, state: IdentityState | None, *, suppress: bool = False
    ) -> list[Operation]:
        """The Customer.io ``delete`` (or ``suppress``) of a forgotten person.

        Addressed the way the person was sent: by ``{"id"}``, and with ``identify_by_email``
        and a stored email also by ``{"email"}`` (first), since events sent before the email
        was known went to the id. Deleting an unknown person is a no-op in Customer.io, so
        both are safe. An id Customer.io cannot hold (over 150 bytes) gets nothing.
        """
        action = "suppress" if suppress else "delete"
        identifiers: list[dict[str, str]] = []
        if self._rules.identify_by_email and state is not None and state.email is not None:
            identifiers.append({"email": state.email})
        if distinct_id and fits_id(distinct_id):
            identifiers.append({"id": distinct_id})
        return [
            Operation(
                partition=distinct_id,
                endpoint=Endpoint.BATCH,
                action=action,
                body={"type": "person", "action": action, "identifiers": ids},
            )
            for ids in identifiers
        ]


class _Mapping:
    """The mapping of one event; an object only to share its inputs between the steps."""

    __slots__ = (
        "counts",
        "did",
        "email",
        "event",
        "extra_states",
        "identified",
        "notes",
        "personless",
        "prev",
        "rules",
        "state",
        "states",
        "too_large",
    )

    def __init__(
        self, rules: MappingRules, event: PostHogEvent, states: Mapping[str, IdentityState]
    ) -> None:
        self.rules = rules
        self.event = event
        self.states = states
        self.did = event.distinct_id
        self.prev = states.get(self.did, _NEVER_SEEN)
        self.counts: Counts = {}
        self.notes: list[str] = []
        self.personless = _flag(event.properties.get("$process_person_profile")) is False
        self.identified = False
        self.email: str | None = None
        self.state = self.prev
        self.too_large = False  # an operation could not be made to fit the 32 KB item limit
        self.extra_states: dict[str, IdentityState] = {}  # other ids' states (a merge's alias)

    # -- step 1: learn ---------------------------------------------------------------------

    def learn(self) -> None:
        event, prev = self.event, self.prev
        props = event.properties
        explicit = _flag(props.get("$is_identified"))
        if event.event == "$identify":
            flag = True
        elif explicit is not None:
            flag = explicit
        elif event.properties_dropped:
            # No $device_id to tell a browser from a server: not enough to identify anyone.
            flag = False
            if not prev.identified:
                self.notes.append("properties unusable: identity unknown, treated as anonymous")
        elif is_cookieless(self.did, props.get("$device_id")):
            flag = False  # its $device_id is not its distinct_id, yet it is a browser visitor
            if not prev.identified:
                self.notes.append("cookieless visitor without $is_identified: anonymous")
        else:
            # No (usable) $is_identified: the browser's anonymous id is its $device_id;
            # anything else is a server-side event, a person as in the app.
            flag = self.did != props.get("$device_id")
        if self.personless and not prev.identified:
            self.notes.append("personless event ($process_person_profile: false): anonymous")
        self.identified = prev.identified or (flag and not self.personless)
        self.email = self._learn_email()
        keys = prev.sent_attribute_keys
        if self.email != prev.email and "email" in keys:
            keys = keys - {"email"}  # Customer.io has an older address: send the new one
        relationships = prev.relationships
        if self.rules.identify_by_email and self.email != prev.email:
            relationships = frozenset()  # a new identifier is a new profile: relate it again
        # The usual event of a known person changes nothing: keep ``prev`` rather than build an
        # equal state (a frozen dataclass is costly to build and to compare).
        if (
            prev.seen
            and self.identified == prev.identified
            and self.email == prev.email
            and keys is prev.sent_attribute_keys
            and relationships is prev.relationships
        ):
            return
        self.state = IdentityState(
            identified=self.identified,
            email=self.email,
            seen=True,
            sent_attribute_keys=keys,
            relationships=relationships,
            exists=prev.exists,
            merged_into=prev.merged_into,
            merged_email=prev.merged_email,
        )

    def _learn_email(self) -> str | None:
        """A valid ``$set.email``, else the person's email, else the stored one, else the
        distinct_id when it is an address (as the app, Segment and RudderStack take it)."""
        event = self.event
        if not self.personless:
            if "email" in event.set:
                address = valid_email(event.set["email"])
                if address is not None:
                    return address
                count(self.counts, "invalid_email")
                self.notes.append("$set.email is not a valid address: not sent")
            address = valid_email(event.person_properties.get("email"))
            if address is not None:
                return address
        if self.prev.email is None and "@" in self.did:
            return valid_email(self.did)
        return self.prev.email

    # -- step 2: filter --------------------------------------------------------------------

    def gate(self) -> str | None:
        """The drop reason, or ``None`` when the event passes."""
        rules = self.rules
        if rules.event_allowlist and self.event.event not in rules.event_allowlist:
            return "not_in_allowlist"
        if self.event.event == GROUP_IDENTIFY:
            # An object is not a person: the anonymous_users gate does not apply to it.
            group_type = self.event.properties.get("$group_type")
            mapped = isinstance(group_type, str) and group_type in rules.object_types
            return None if mapped else "groups_not_mapped"
        mode = rules.anonymous_users
        if mode is AnonymousUsers.IDENTIFIED_ONLY and not self.identified:
            return "anonymous_user"
        if mode is AnonymousUsers.WITH_EMAIL_ONLY:
            if self.email is None:
                return "no_email"
            if self.personless and not self.identified:
                return "anonymous_user"  # personless never creates a profile
        return None

    # -- step 3: build ---------------------------------------------------------------------

    def run(self) -> MappingOutcome:
        self.learn()
        reason = self.gate()
        ops: list[Operation] = []
        if reason is None:
            reason = self._build(ops)
        self._compress()
        if not self.state.exists and any(
            op.action in _CREATING_ACTIONS and op.endpoint is Endpoint.BATCH for op in ops
        ):
            self.state = dataclasses.replace(self.state, exists=True)
        changed = self.state is not self.prev and self.state != self.prev
        states = {self.did: self.state} if changed else {}
        states.update(self.extra_states)
        if ops:
            if reason is not None:
                self.notes.append(f"not sent: {reason}")
            reason = None
        elif reason is None:
            reason = "operation_too_large" if self.too_large else "nothing_to_send"
        return MappingOutcome(
            states=states,
            operations=ops,
            dropped=reason,
            truncations=self.counts,
            notes=tuple(self.notes),
        )

    def _build(self, ops: list[Operation]) -> str | None:
        """Append the operations; return a reason when part of the event cannot be sent."""
        name = self.event.event
        if name == GROUP_IDENTIFY:
            return self._object(ops)
        if not self.identified:
            if not self.personless and (self.event.set or self.event.set_once or self.event.unset):
                self.notes.append("person properties of an anonymous user are not sent")
            if name in ALIAS_EVENTS:
                return "alias_not_identified"
            if name == "$set":
                return None
            self._event(ops, anonymous=True)
            return None
        self._identify(ops)
        if name in ALIAS_EVENTS:
            return self._merge(ops)
        if name not in ("$identify", "$set"):  # those are pure person updates
            self._event(ops, anonymous=False)
        self._relationships(ops)
        return None

    def _object(self, ops: list[Operation]) -> str | None:
        """``$groupidentify`` of a mapped group type → object ``identify`` with ``$group_set``."""
        props = self.event.properties
        type_id = self.rules.object_types[str(props.get("$group_type"))]
        key = _group_key(props.get("$group_key"))
        if key is None:
            return "missing_group_key"
        if not fits_id(key):
            count(self.counts, "id_too_long")
            self.notes.append("$group_key is over 150 bytes, so it cannot be an object id")
            return "group_key_too_long"
        group_set = props.get("$group_set")
        if group_set is not None and not isinstance(group_set, dict):
            self.notes.append("$group_set is not an object: no attributes sent")
        attributes = limit_attributes(group_set if isinstance(group_set, dict) else {}, self.counts)
        self._created_at_seconds(attributes)
        body: dict[str, Any] = {
            "type": "object",
            "action": "identify",
            "identifiers": {"object_type_id": type_id, "object_id": key},
        }
        if attributes:
            body["attributes"] = attributes
        fitted = fit_item(body, "attributes", self.counts)
        if fitted is None:
            self.notes.append("object identify over the 32 KB item limit: not sent")
            self.too_large = True
            return None
        ops.append(
            Operation(
                partition=object_partition(type_id, key),
                endpoint=Endpoint.BATCH,
                action=OBJECT_IDENTIFY,
                body=fitted,
                event_uuid=self.event.uuid,
            )
        )
        return None

    def _relationships(self, ops: list[Operation]) -> None:
        """Relate the person to the mapped objects of ``$groups`` not related before.

        A person ``add_relationships`` (not ``cio_relationships`` on an identify): an event
        whose person attributes are all known sends no identify, and the relationship must
        not force one. Remembered in the state, so it is sent once per person and object.
        """
        groups = self.event.properties.get("$groups")
        object_types = self.rules.object_types
        if not object_types or not isinstance(groups, dict) or self.personless:
            return
        related = self.state.relationships
        new: dict[str, dict[str, str]] = {}
        for group_type, value in groups.items():
            type_id = object_types.get(group_type)
            key = _group_key(value)
            if type_id is None or key is None:
                continue
            if not fits_id(key):
                count(self.counts, "id_too_long")
                self.notes.append(f"$groups.{group_type} is over 150 bytes: not related")
                continue
            pair = f"{type_id}:{key}"
            if pair not in related:
                new[pair] = {"object_type_id": type_id, "object_id": key}
        if not new:
            return
        body: dict[str, Any] = {
            "type": "person",
            "action": "add_relationships",
            "identifiers": self._address(),
            "cio_relationships": [{"identifiers": ids} for ids in new.values()],
        }
        if json_size(body) > MAX_ITEM_BYTES:  # unreachable: a handful of 150-byte ids
            self.notes.append("add_relationships over the 32 KB item limit: not sent")
            return
        ops.append(self._op(Endpoint.BATCH, "add_relationships", body))
        self.state = dataclasses.replace(
            self.state, seen=True, relationships=related | frozenset(new)
        )

    def _compress(self) -> None:
        """Point this id straight at the end of its merge chain (A → B → C becomes A → C), so
        its next event needs one read and the chain never grows past one hop per merge."""
        into = self.state.merged_into
        if into is None:
            return
        end, _, _ = self._end(self.did, self.state)
        if end not in (into, self.did):
            merged_email = self._address().get("email")
            self.state = dataclasses.replace(self.state, merged_into=end, merged_email=merged_email)

    def _end(
        self, distinct_id: str, state: IdentityState
    ) -> tuple[str, IdentityState | None, str | None]:
        """The id at the end of ``distinct_id``'s merge chain, its state (``None`` when it was
        not loaded: the chain is followed as far as the states given reach), and the email to
        address it by: the one the chain's last merge addressed it by (``merged_email``), the
        identifier known to name that profile, as the primary's own link may still be on its
        way in another partition.

        A merged into B, later B into C: C, the profile that holds them all. A cycle (which
        no merge this mapper makes can create) ends at its least id, whichever id it starts
        from, so every id of it still addresses one profile.
        """
        path = [distinct_id]
        current: IdentityState | None = state
        merged_email: str | None = None
        while current is not None and (target := current.merged_into) is not None:
            if target in path:
                end = min(path[path.index(target) :])
                end_state = self._state_of(end)
                return end, end_state, None if end_state is None else end_state.email
            path.append(target)
            merged_email = current.merged_email
            current = self._state_of(target)
        return path[-1], current, merged_email

    def _state_of(self, distinct_id: str) -> IdentityState | None:
        return self.state if distinct_id == self.did else self.states.get(distinct_id)

    def _identifiers(self, distinct_id: str, email: str | None) -> dict[str, str]:
        if self.rules.identify_by_email and email is not None:
            return {"email": email}
        return {"id": distinct_id}

    def _address(
        self, distinct_id: str | None = None, state: IdentityState | None = None
    ) -> dict[str, str]:
        """Whom the operations of ``distinct_id`` (this event's by default) address: the person
        at the end of its merge chain, by that person's email (``identify_by_email``) or id.
        Every operation of a person (identify, events, relationships, merges) uses this, so all
        reach one profile.
        """
        if distinct_id is None or state is None:
            distinct_id, state = self.did, self.state
        if state.merged_into is None:
            return self._identifiers(distinct_id, state.email)
        end, _, email = self._end(distinct_id, state)
        return self._identifiers(end, email)

    def _links(self) -> bool:
        """Whether this event's email must first be given to the profile Customer.io knows by
        ``{"id"}``, before the person is addressed by ``{"email"}`` (``identify_by_email``).

        Customer.io documents that an identify addressed to an existing person that names a
        new identifier in its attributes adds it to that person, and that changing an
        identifier already set needs ``cio_id`` (an "Attribute Update Failure" otherwise). So
        the link is sent once, when a person that exists by id gets its first email: not when
        an email was sent before (that would be a change), nor for a merged-away id.
        """
        prev = self.prev
        return (
            self.rules.identify_by_email
            and self.email is not None
            and prev.exists
            and "email" not in prev.sent_attribute_keys
            and self.state.merged_into is None
        )

    def _identify(self, ops: list[Operation]) -> None:
        event, state = self.event, self.state
        keys = state.sent_attribute_keys
        person_updates = not self.personless and bool(event.set or event.set_once or event.unset)
        send_email = self.email is not None and (
            "email" not in keys or ("email" in event.set and not self.personless)
        )
        if not (event.event == "$identify" or person_updates or send_email):
            return
        linking = self._links()
        if linking:
            link = {
                "type": "person",
                "action": "identify",
                "identifiers": {"id": self.did},
                "attributes": {"email": self.email},
            }
            ops.append(self._op(Endpoint.BATCH, LINK_IDENTIFY, link))
            self.notes.append(
                f"{self.did!r} exists in Customer.io by id: its email is added to that profile"
                " before it is addressed by email"
            )
        attributes: dict[str, Any] = {}
        if send_email:
            attributes["email"] = self.email
        merge_from: str | None = None  # the anonymous visitor this identify merges
        if event.event == "$identify":
            anon = event.properties.get("$anon_distinct_id")
            if isinstance(anon, str) and anon and anon != self.did:
                if is_illegal_id(anon):
                    count(self.counts, "illegal_id")
                    self.notes.append(
                        f"$anon_distinct_id {anon!r} is an id PostHog refuses to merge on:"
                        " not merged"
                    )
                elif fits_id(anon):
                    merge_from = anon
                else:
                    count(self.counts, "id_too_long")
                    self.notes.append("$anon_distinct_id is over 150 bytes: not merged")
        unset_keys: set[str] = set()
        if person_updates:
            for key, value in event.set.items():
                if key != "email":
                    attributes[key] = value
            for key, value in event.set_once.items():
                if key == "email":
                    self.notes.append("$set_once.email ignored: the email comes from $set")
                elif key not in keys and key not in event.set and key not in attributes:
                    attributes[key] = value
            for key in event.unset:
                if key == "email":
                    self.notes.append("$unset of email ignored: it is an identity")
                else:
                    attributes[key] = ""
                    unset_keys.add(key)
        identifiers = self._address()
        self._clean_person_attributes(attributes, identifiers)
        # The visitor's merge is in another partition, not ordered after the link: address it
        # by the id, which names the same profile before and after the link.
        merge_to = {"id": self.did} if linking else identifiers
        attributes = limit_attributes(attributes, self.counts)
        if not attributes and (event.event != "$identify" or merge_from is not None):
            # Nothing new for the person: every update was known or dropped (the merge below,
            # if any, creates the person).
            self._merge_anonymous(ops, merge_to, merge_from)
            return
        body: dict[str, Any] = {"type": "person", "action": "identify", "identifiers": identifiers}
        if attributes:
            body["attributes"] = attributes
        fitted = fit_item(body, "attributes", self.counts, protected=("email",))
        if fitted is None:
            self.notes.append("identify over the 32 KB item limit: not sent")
            self.too_large = True
            self._merge_anonymous(ops, merge_to, merge_from)
            return
        sent = fitted.get("attributes", {})
        new_keys = (keys | {k for k in sent if k not in unset_keys}) - unset_keys
        new_keys = new_keys - {"anonymous_id"}
        if new_keys != keys:
            self.state = dataclasses.replace(state, seen=True, sent_attribute_keys=new_keys)
        ops.append(self._op(Endpoint.BATCH, "identify", fitted))
        self._merge_anonymous(ops, merge_to, merge_from)

    def _merge_anonymous(
        self, ops: list[Operation], identifiers: dict[str, str], anonymous_id: str | None
    ) -> None:
        """The identify whose ``attributes.anonymous_id`` merges the visitor's anonymous
        events into the person, queued in the visitor's partition (not the person's).

        Customer.io attaches only the anonymous events it has when the identify arrives (and
        those arriving up to about five minutes later); in the visitor's partition the identify
        is delivered after every event of the visitor queued before it, in the same batch or a
        later one, whatever retries or an outage backlog did to the two partitions. It carries
        nothing else, so the person's own attribute updates keep their order in the person's
        partition.
        """
        if anonymous_id is None:
            return
        body = {
            "type": "person",
            "action": "identify",
            "identifiers": identifiers,
            "attributes": {"anonymous_id": anonymous_id},
        }
        ops.append(
            Operation(
                partition=anonymous_id,
                endpoint=Endpoint.BATCH,
                action="identify",
                body=body,
                event_uuid=self.event.uuid,
            )
        )

    def _clean_person_attributes(
        self, attributes: dict[str, Any], identifiers: Mapping[str, str]
    ) -> None:
        """``created_at`` to integer seconds; drop reserved keys of the wrong type, and an
        ``id``/``cio_id`` other than the identifier: Customer.io takes it as a change of
        identifier, which fails unless the person is addressed by ``cio_id`` (and would move
        the profile to another id if it did not)."""
        self._created_at_seconds(attributes)
        for key in _IDENTIFIER_ATTRIBUTES:
            if key in attributes and attributes[key] != identifiers.get(key):
                del attributes[key]
                count(self.counts, "identifier_attribute")
                self.notes.append(
                    f"attribute {key} differs from the identifier: not sent (it would change"
                    " whom Customer.io addresses)"
                )
        for key, types in _RESERVED_PERSON_KEYS.items():
            if key in attributes and not isinstance(attributes[key], types):
                del attributes[key]
                count(self.counts, "reserved_attribute")
                self.notes.append(f"attribute {key} has the wrong type for Customer.io: dropped")

    def _created_at_seconds(self, attributes: dict[str, Any]) -> None:
        """A person's or object's ``created_at`` (ISO 8601, ms or s) as integer Unix seconds."""
        if "created_at" in attributes and attributes["created_at"] != "":
            ms = parse_timestamp_ms(attributes["created_at"])
            if ms is None:
                self.notes.append("created_at is not a date or Unix time: sent as is")
            else:
                attributes["created_at"] = ms // 1000

    def _merge(self, ops: list[Operation]) -> str | None:
        alias = _alias(self.event)
        if alias is None:
            return "missing_alias"
        if alias == self.did:
            return "nothing_to_send"
        if not fits_id(alias):
            count(self.counts, "id_too_long")
            return "distinct_id_too_long"
        if is_illegal_id(alias):
            count(self.counts, "illegal_id")
            self.notes.append(f"alias {alias!r} is an id PostHog refuses to merge on: no merge")
            return "illegal_distinct_id"
        other = self.states.get(alias, _NEVER_SEEN)
        into, _, _ = self._end(self.did, self.state)  # the person this one's ops reach
        if alias == into:
            return "nothing_to_send"  # this id was merged into the alias already
        primary = self._address()
        if not other.seen:
            # A new id of this person (PostHog links it): nothing to merge, but its later
            # events are this person's, so they must not make a profile of their own.
            self.extra_states[alias] = IdentityState(
                identified=True,
                seen=True,
                merged_into=into,
                merged_email=primary.get("email"),
            )
            self.notes.append(f"alias {alias!r} not seen before: its events go to this person")
            self._addressed_by_id(primary)
            return "alias_not_identified"
        if not other.identified:
            self.notes.append(f"alias {alias!r} is not an identified person here")
            return "alias_not_identified"
        if other.merged_into is None and other.email is None and valid_email(alias):
            other = dataclasses.replace(other, email=valid_email(alias))
        secondary = self._address(alias, other)
        # The profile merged away is the end of the alias's own merge chain: it, and the alias,
        # now point at this person, so neither is created again.
        gone, gone_state, _ = self._end(alias, other)
        if primary == secondary or gone == into:
            return "nothing_to_send"
        merged = {alias: other}
        if gone_state is not None and gone != alias:
            merged[gone] = gone_state
            other = gone_state
        for distinct_id, state in merged.items():
            self.extra_states[distinct_id] = IdentityState(
                identified=state.identified,
                email=state.email,
                seen=True,
                sent_attribute_keys=state.sent_attribute_keys,
                relationships=state.relationships,
                exists=state.exists,
                merged_into=into,
                merged_email=primary.get("email"),
            )
        if not other.exists:
            self.notes.append(
                f"alias {alias!r} never reached Customer.io: nothing to merge; its later"
                " operations go to this person"
            )
            self._addressed_by_id(primary)
            return None
        self._merge_operations(ops, alias, primary, secondary)
        return None

    def _addressed_by_id(self, primary: Mapping[str, str]) -> None:
        """The alias's operations will address this person by ``{"id"}``: count the profile as
        existing by id, so an email learnt later is linked to it before the switch."""
        if "id" in primary and self.state.merged_into is None and not self.state.exists:
            self.state = dataclasses.replace(self.state, exists=True)

    def _merge_operations(
        self,
        ops: list[Operation],
        alias: str,
        primary: dict[str, str],
        secondary: dict[str, str],
    ) -> None:
        """An identify of the primary, then the merge, both in the alias's partition.

        Customer.io ignores a merge whose primary does not exist yet ("If the primary profile
        doesn't exist, your request won't do anything", Track API, "Merge duplicate people").
        The primary's own operations are in its own partition, not ordered with this one, so
        the identify (no attributes but the email of an ``identify_by_email`` primary: it
        creates the person or changes nothing) goes here, and
        in the alias's partition the merge also comes after every operation queued for the
        alias before it, so nothing of the alias arrives after the merge to re-create it. A
        merge is sent in a request of its own (``SOLO_ACTIONS``): Customer.io may process a
        request's items in parallel.
        """
        self.notes.append(
            f"the primary's identify and the merge are queued behind {alias!r}'s operations;"
            " the merge goes in a request of its own"
        )
        create: dict[str, Any] = {"type": "person", "action": "identify", "identifiers": primary}
        if "email" in primary and self.state.merged_into is None:
            # By the id, naming the email: Customer.io then updates the profile that has
            # either (the id's, its email not yet linked; or the email's, given the id) or
            # creates one with both, and never a second profile for the email while the
            # person's link (in its own partition) is still on its way.
            create["identifiers"] = {"id": self.did}
            create["attributes"] = {"email": primary["email"]}
        merge = {"type": "person", "action": "merge", "primary": primary, "secondary": secondary}
        for action, body in (("identify", create), (MERGE, merge)):
            ops.append(
                Operation(
                    partition=alias,
                    endpoint=Endpoint.BATCH,
                    action=action,
                    body=body,
                    event_uuid=self.event.uuid,
                )
            )

    def _event(self, ops: list[Operation], *, anonymous: bool) -> None:
        event = self.event
        props = event.properties
        if event.event == "$pageview":
            kind = "page"
            name = _first_str(props.get("$current_url"), props.get("$pathname")) or "$pageview"
        elif event.event == "$screen":
            kind = "screen"
            name = _first_str(props.get("$screen_name")) or "$screen"
        else:
            kind, name = "event", event.event
        name = limit_event_name(name, self.counts)
        data = self._clean_event_data(props, kind)
        event_id = ulid_from_uuid(event.uuid, event.timestamp_ms)
        timestamp = event.timestamp_ms // 1000
        body: dict[str, Any] = {
            "type": "person",
            "action": kind,
            "identifiers": {"anonymous_id": self.did} if anonymous else self._address(),
            "name": name,
            "id": event_id,
            "timestamp": timestamp,
        }
        if data:
            body["attributes"] = data
        if anonymous:
            self.notes.append("anonymous user: sent as an anonymous event (anonymous_id)")
            if json_size(body) <= MAX_ITEM_BYTES:
                ops.append(self._op(Endpoint.ANONYMOUS_ITEM, kind, body))
                return
            # Too large for a batch item, but v1 anonymous events take 100,000 bytes of data.
            data = self._clean_event_data(props, f"anonymous_{kind}")
            body = {"anonymous_id": self.did, "name": name}
            if kind != "event":
                body["type"] = kind
            body["id"] = event_id
            body["timestamp"] = timestamp
            if data:
                shrunk = shrink_mapping(data, MAX_EVENT_DATA_BYTES, self.counts, "event_data")
                body["data"] = shrunk if shrunk is not None else {}
            ops.append(self._op(Endpoint.ANONYMOUS, kind, body))
            return
        # The 32 KB item limit is stricter than the 100,000-byte event data limit.
        fitted = fit_item(body, "attributes", self.counts)
        if fitted is None:
            self.notes.append(f"{kind} over the 32 KB item limit: not sent")
            self.too_large = True
            return
        ops.append(self._op(Endpoint.BATCH, kind, fitted))

    def _clean_event_data(self, props: dict[str, Any], kind: str) -> dict[str, Any]:
        reserved = _RESERVED_EVENT_KEYS[kind]
        if props.keys().isdisjoint(reserved):  # the usual case, checked in C
            return props
        bad = [k for k, types in reserved.items() if k in props and not isinstance(props[k], types)]
        if (
            kind == "page"
            and "keywords" in props
            and "keywords" not in bad
            and not all(isinstance(k, str) for k in props["keywords"])
        ):
            bad.append("keywords")
        if not bad:
            return props
        count(self.counts, "reserved_attribute", len(bad))
        self.notes.append(f"event data {', '.join(bad)} of the wrong type for Customer.io: dropped")
        return {k: v for k, v in props.items() if k not in bad}

    def _op(self, endpoint: Endpoint, action: str, body: dict[str, Any]) -> Operation:
        return Operation(
            partition=self.did,
            endpoint=endpoint,
            action=action,
            body=body,
            event_uuid=self.event.uuid,
        )


def _first_str(*values: object) -> str | None:
    for value in values:
        if isinstance(value, str) and value.strip():
            return value
    return None
