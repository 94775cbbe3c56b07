"""An in-memory Customer.io workspace: what the sandbox's Track API writes into.

It models the behaviour the connector depends on, so end-to-end tests can assert on the
result rather than on the requests (TRACK-API.md, "Semantics"):

- people are found by ``id``, ``email`` (case-insensitive), ``phone`` or ``cio_id``; an
  identify or an event for an unknown person creates it (``_update: true`` never creates);
- identifiers in an identify's attributes ("Add or update a customer", Track API,
  https://docs.customer.io/integrations/api/track/tag/track-customers/identify/): one the
  person lacks is added to it (so an identify by ``email`` with an ``id`` attribute attaches
  the id to that profile, and one by ``id`` with an ``email`` attribute the email); one that
  names a person unknown by the request's identifier updates the person it names and gives it
  that identifier; one that belongs to another person, or that changes an identifier the
  person already has while not addressed by ``cio_id`` ("If you want to update a person's
  identifiers after they are set, you must reference them using their cio_id"), is an
  "Attribute Update Failure": answered ``200``, recorded in ``failures`` (Customer.io's
  activity log), the identifier unchanged, the other attributes applied;
- a v1 path identifier is read by its shape: ``cio_…`` is a ``cio_id``, an email address an
  ``email``, anything else (a phone number too) an ``id`` ("Track a customer event", Track
  API: "You may identify a person by id, email address, or the cio_id ... a phone number in
  the path is treated as an id");
- an attribute sent as ``""`` or ``null`` is removed; an identify older than the profile's
  last timestamped update is ignored (observed Customer.io behaviour);
- an anonymous event (v1 ``POST /api/v1/events``, or a v2 person event/page/screen whose
  ``identifiers`` are ``{"anonymous_id"}``) is kept under its anonymous id;
  ``attributes.anonymous_id`` on identify attaches the anonymous events stored under that id,
  and later anonymous events with it go straight to the person;
- an event ``id`` seen before is ignored and counted;
- merge copies the secondary's attributes the primary lacks, moves its events, devices,
  relationships and anonymous ids, then deletes it. A merge whose primary does not exist does
  nothing ("If the primary profile doesn't exist, your request won't do anything", "Merge
  duplicate people", https://docs.customer.io/integrations/api/track/tag/track-customers/merge/),
  counted in ``merges_ignored``;
- suppress deletes the person and blocks its identifiers until unsuppressed;
- objects, and relationships between people and objects.

Input is assumed valid against the official schema (the app validates first); what the
spec cannot express (an unknown ``cio_id``, an unknown object) raises
``WorkspaceError``. Nothing here does I/O or awaits, so each call is atomic on the one
asyncio loop that serves the sandbox; there are no locks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CioObject",
    "Person",
    "StoredEvent",
    "Workspace",
    "WorkspaceError",
    "identifier_from_path",
]

# Reserved identify attributes that steer the update instead of being stored.
_CONTROL_ATTRIBUTES = frozenset({"_update", "_timestamp", "anonymous_id", "cio_relationships"})
_IDENTIFIER_KINDS = ("id", "email", "phone")
_MAX_FAILURES_KEPT = 1_000

ObjectKey = tuple[str, str]  # (object_type_id, object_id)


class WorkspaceError(Exception):
    """An operation that validated but cannot be applied; becomes a per-item error."""

    def __init__(self, field: str, message: str, reason: str = "invalid") -> None:
        self.field = field
        self.message = message
        self.reason = reason
        super().__init__(f"{field}: {message}")


@dataclass(slots=True)
class StoredEvent:
    """An event as Customer.io keeps it; ``data`` is v2 ``attributes`` / v1 ``data``."""

    name: str
    type: str
    id: str | None
    timestamp: int
    data: dict[str, Any]
    anonymous_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "id": self.id,
            "timestamp": self.timestamp,
            "data": self.data,
        }
        if self.anonymous_id is not None:
            out["anonymous_id"] = self.anonymous_id
        return out


@dataclass(slots=True)
class Person:
    """One profile. ``cio_id`` is the workspace's own immutable key."""

    cio_id: str
    id: str | None = None
    email: str | None = None
    phone: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[StoredEvent] = field(default_factory=list)
    anonymous_ids: list[str] = field(default_factory=list)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    updated_at: int | None = None  # last timestamped attribute update

    def summary(self) -> dict[str, Any]:
        return {
            "cio_id": self.cio_id,
            "id": self.id,
            "email": self.email,
            "attributes": self.attributes,
            "events": len(self.events),
        }


@dataclass(slots=True)
class CioObject:
    """A non-person entity (company, account...), keyed by type and id."""

    object_type_id: str
    object_id: str
    cio_object_id: str
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> ObjectKey:
        return (self.object_type_id, self.object_id)


def identifier_from_path(identifier: str) -> dict[str, str]:
    """The identifier kind of a v1 path segment, inferred from its shape as Customer.io does."""
    if identifier.startswith("cio_"):
        return {"cio_id": identifier[4:]}
    if "@" in identifier:
        return {"email": identifier}
    return {"id": identifier}


def _apply_attributes(target: dict[str, Any], attributes: Mapping[str, Any]) -> None:
    for key, value in attributes.items():
        if value is None or value == "":
            target.pop(key, None)
        else:
            target[key] = value


def _as_dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


class Workspace:
    """People, anonymous events, objects and relationships of one Customer.io workspace."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget everything, as a fresh workspace."""
        self.people: dict[str, Person] = {}
        self._by_id: dict[str, str] = {}
        self._by_email: dict[str, str] = {}
        self._by_phone: dict[str, str] = {}
        self.anonymous_events: dict[str, list[StoredEvent]] = {}
        self._anonymous_owner: dict[str, str] = {}  # anonymous_id -> cio_id
        self.objects: dict[ObjectKey, CioObject] = {}
        self._objects_by_cio: dict[str, ObjectKey] = {}
        self.relationships: dict[tuple[str, ObjectKey], dict[str, Any]] = {}
        self._anonymous_relationships: dict[str, dict[ObjectKey, dict[str, Any]]] = {}
        self.suppressed: set[tuple[str, str]] = set()
        self.deleted: list[dict[str, str]] = []
        self.failures: deque[dict[str, Any]] = deque(maxlen=_MAX_FAILURES_KEPT)
        self._event_ids: set[str] = set()
        self._next_cio = 0xA3000000
        self._next_object = 0xB0000000
        self.events_stored = 0
        self.duplicate_events_ignored = 0
        self.stale_updates_ignored = 0
        self.suppressed_ignored = 0
        self.merges = 0
        self.merges_ignored = 0

    # -- lookup ----------------------------------------------------------------------

    def find(self, identifiers: Mapping[str, Any]) -> Person | None:
        """The person named by one identifier (``id``, ``email``, ``phone``, ``cio_id``)."""
        if "cio_id" in identifiers:
            return self.people.get(str(identifiers["cio_id"]))
        cio_id: str | None = None
        if "id" in identifiers:
            cio_id = self._by_id.get(str(identifiers["id"]))
        elif "email" in identifiers:
            cio_id = self._by_email.get(str(identifiers["email"]).lower())
        elif "phone" in identifiers:
            cio_id = self._by_phone.get(str(identifiers["phone"]))
        return self.people.get(cio_id) if cio_id is not None else None

    def person_by_id_or_email(self, key: str) -> Person | None:
        """Inspection lookup: an id, an email, or a ``cio_id``."""
        return (
            self.find({"id": key})
            or self.find({"email": key})
            or self.find({"cio_id": key.removeprefix("cio_")})
        )

    def _is_suppressed(self, identifiers: Mapping[str, Any]) -> bool:
        if not self.suppressed:
            return False
        return any(
            (kind, self._norm(kind, value)) in self.suppressed
            for kind, value in identifiers.items()
            if kind in _IDENTIFIER_KINDS and isinstance(value, str)
        )

    @staticmethod
    def _norm(kind: str, value: str) -> str:
        return value.lower() if kind == "email" else value

    def _index(self, kind: str) -> dict[str, str]:
        return {"id": self._by_id, "email": self._by_email, "phone": self._by_phone}[kind]

    def _create(self, identifiers: Mapping[str, Any]) -> Person:
        if "cio_id" in identifiers:
            raise WorkspaceError(
                "identifiers.cio_id", "no person has this cio_id", reason="not_found"
            )
        self._next_cio += 1
        person = Person(cio_id=f"{self._next_cio:x}")
        self.people[person.cio_id] = person
        for kind in _IDENTIFIER_KINDS:
            value = identifiers.get(kind)
            if isinstance(value, str) and value:
                self._set_identifier(person, kind, value)
        return person

    def _set_identifier(self, person: Person, kind: str, value: str | None) -> bool:
        """Give ``person`` a new id/email/phone; False (and a failure) if another owns it."""
        index = self._index(kind)
        old = getattr(person, kind)
        if value is not None:
            owner = index.get(self._norm(kind, value))
            if owner is not None and owner != person.cio_id:
                self._fail(
                    "attribute_update_failure",
                    f"{kind} {value!r} belongs to another person",
                    cio_id=person.cio_id,
                )
                return False
        if old is not None:
            index.pop(self._norm(kind, old), None)
        setattr(person, kind, value)
        if value is not None:
            index[self._norm(kind, value)] = person.cio_id
        if kind in ("email", "phone"):
            if value is None:
                person.attributes.pop(kind, None)
            else:
                person.attributes[kind] = value
        return True

    def _fail(self, reason: str, message: str, **details: Any) -> None:
        """Record what Customer.io would show in the activity log after answering 200."""
        self.failures.append({"reason": reason, "message": message, **details})

    def _resolve(self, identifiers: Mapping[str, Any]) -> Person:
        """The person named, created if unknown (an unknown ``cio_id`` raises)."""
        return self.find(identifiers) or self._create(identifiers)

    # -- people ----------------------------------------------------------------------

    def identify(
        self,
        identifiers: Mapping[str, Any],
        attributes: Mapping[str, Any] | None = None,
        *,
        relationships: Iterable[Mapping[str, Any]] = (),
        timestamp: int | None = None,
    ) -> Person | None:
        """Create or update a person; returns None when nothing was applied."""
        attributes = attributes or {}
        if self._is_suppressed(identifiers):
            self.suppressed_ignored += 1
            return None
        person = self.find(identifiers)
        if person is None:
            person = self._adopt(identifiers, attributes)
        if person is None:
            if attributes.get("_update") is True:
                return None
            person = self._create(identifiers)
        if timestamp is not None:
            if person.updated_at is not None and timestamp < person.updated_at:
                self.stale_updates_ignored += 1
                return person
            person.updated_at = timestamp
        plain: dict[str, Any] = {}
        for key, value in attributes.items():
            if key in _CONTROL_ATTRIBUTES:
                continue
            if key in _IDENTIFIER_KINDS:
                new = None if value in ("", None) else str(value)
                if self._changes_identifier(person, key, new, identifiers):
                    continue
                self._set_identifier(person, key, new)
            else:
                plain[key] = value
        _apply_attributes(person.attributes, plain)
        anonymous_id = attributes.get("anonymous_id")
        if isinstance(anonymous_id, str) and anonymous_id:
            self._attach_anonymous(person, anonymous_id)
        for relationship in relationships:
            target = self._object_key(_as_dict(relationship.get("identifiers")), create=True)
            self._relate(
                person.cio_id, target, _as_dict(relationship.get("relationship_attributes"))
            )
        return person

    def _changes_identifier(
        self, person: Person, kind: str, value: str | None, identifiers: Mapping[str, Any]
    ) -> bool:
        """Whether ``value`` would change an identifier ``person`` already has while not
        addressed by ``cio_id``: an "Attribute Update Failure", recorded."""
        current = getattr(person, kind)
        if current is None or "cio_id" in identifiers:
            return False
        if value is not None and self._norm(kind, value) == self._norm(kind, current):
            return False
        self._fail(
            "attribute_update_failure",
            f"{kind} {current!r} cannot become {value!r}: changing an identifier needs cio_id",
            cio_id=person.cio_id,
        )
        return True

    def _adopt(
        self, identifiers: Mapping[str, Any], attributes: Mapping[str, Any]
    ) -> Person | None:
        """An identify by id whose email (or by email whose id) names a person lacking the
        other identifier updates that person, as in a workspace with email identifiers."""
        for kind in _IDENTIFIER_KINDS:
            value = attributes.get(kind)
            if kind in identifiers or not isinstance(value, str) or not value:
                continue
            other = self.find({kind: value})
            if other is not None and all(
                getattr(other, k) is None for k in identifiers if k in _IDENTIFIER_KINDS
            ):
                for k in _IDENTIFIER_KINDS:
                    if isinstance(identifiers.get(k), str):
                        self._set_identifier(other, k, identifiers[k])
                return other
        return None

    def _attach_anonymous(self, person: Person, anonymous_id: str) -> None:
        owner = self._anonymous_owner.get(anonymous_id)
        if owner is not None and owner != person.cio_id and owner in self.people:
            self._fail(
                "anonymous_id_in_use",
                f"anonymous_id {anonymous_id!r} already belongs to another person",
                cio_id=person.cio_id,
            )
            return
        self._anonymous_owner[anonymous_id] = person.cio_id
        if anonymous_id not in person.anonymous_ids:
            person.anonymous_ids.append(anonymous_id)
        person.events.extend(self.anonymous_events.pop(anonymous_id, []))
        for key, attrs in self._anonymous_relationships.pop(anonymous_id, {}).items():
            self._relate(person.cio_id, key, attrs)

    def _is_duplicate(self, event_id: str | None) -> bool:
        if event_id is None:
            return False
        if event_id in self._event_ids:
            self.duplicate_events_ignored += 1
            return True
        self._event_ids.add(event_id)
        return False

    def track(
        self,
        identifiers: Mapping[str, Any],
        name: str,
        *,
        kind: str = "event",
        event_id: str | None = None,
        timestamp: int | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """An event, page or screen for a person, created if unknown."""
        if self._is_suppressed(identifiers):
            self.suppressed_ignored += 1
            return
        person = self._resolve(identifiers)
        if self._is_duplicate(event_id):
            return
        person.events.append(self._event(name, kind, event_id, timestamp, data))
        self.events_stored += 1

    def track_anonymous(
        self,
        anonymous_id: str,
        name: str,
        *,
        kind: str = "event",
        event_id: str | None = None,
        timestamp: int | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """An anonymous event: kept under its anonymous_id, or given to its known owner."""
        if not anonymous_id:
            raise WorkspaceError("anonymous_id", "anonymous events need an anonymous_id")
        if self._is_duplicate(event_id):
            return
        event = self._event(name, kind, event_id, timestamp, data, anonymous_id)
        owner = self.people.get(self._anonymous_owner.get(anonymous_id, ""))
        if owner is not None:
            owner.events.append(event)
        else:
            self.anonymous_events.setdefault(anonymous_id, []).append(event)
        self.events_stored += 1

    def _event(
        self,
        name: str,
        kind: str,
        event_id: str | None,
        timestamp: int | None,
        data: Mapping[str, Any] | None,
        anonymous_id: str | None = None,
    ) -> StoredEvent:
        return StoredEvent(
            name=name,
            type=kind,
            id=event_id,
            timestamp=int(timestamp) if timestamp is not None else int(self._clock()),
            data=dict(data or {}),
            anonymous_id=anonymous_id,
        )

    def merge(self, primary: Mapping[str, Any], secondary: Mapping[str, Any]) -> None:
        """Fold ``secondary`` into ``primary``, then delete it; nothing if there is no primary."""
        keep = self.find(primary)
        if keep is None:
            self.merges_ignored += 1
            return
        gone = self.find(secondary)
        if gone is None or gone is keep:
            return
        for key, value in gone.attributes.items():
            if key not in _IDENTIFIER_KINDS:
                keep.attributes.setdefault(key, value)
        keep.events.extend(gone.events)
        for token, device in gone.devices.items():
            keep.devices.setdefault(token, device)
        for (cio_id, target), attrs in list(self.relationships.items()):
            if cio_id == gone.cio_id:
                del self.relationships[(cio_id, target)]
                self.relationships.setdefault((keep.cio_id, target), attrs)
        for anonymous_id in gone.anonymous_ids:
            self._anonymous_owner[anonymous_id] = keep.cio_id
            if anonymous_id not in keep.anonymous_ids:
                keep.anonymous_ids.append(anonymous_id)
        moved = {k: getattr(gone, k) for k in _IDENTIFIER_KINDS if getattr(keep, k) is None}
        self._remove(gone)
        for kind, value in moved.items():
            if value is not None:
                self._set_identifier(keep, kind, value)
        self.merges += 1

    def _remove(self, person: Person) -> None:
        for kind in _IDENTIFIER_KINDS:
            value = getattr(person, kind)
            if value is not None:
                self._index(kind).pop(self._norm(kind, value), None)
        for anonymous_id in person.anonymous_ids:
            if self._anonymous_owner.get(anonymous_id) == person.cio_id:
                del self._anonymous_owner[anonymous_id]
        for rel in [r for r in self.relationships if r[0] == person.cio_id]:
            del self.relationships[rel]
        del self.people[person.cio_id]

    def delete(self, identifiers: Mapping[str, Any]) -> None:
        """Delete a person; unknown people are a no-op, as in Customer.io."""
        person = self.find(identifiers)
        if person is None:
            return
        self.deleted.append(
            {k: v for k in ("cio_id", *_IDENTIFIER_KINDS) if (v := getattr(person, k))}
        )
        self._remove(person)

    def suppress(self, identifiers: Mapping[str, Any]) -> None:
        """Delete the person and refuse its identifiers until ``unsuppress``."""
        person = self.find(identifiers)
        names = {k: v for k, v in identifiers.items() if k in _IDENTIFIER_KINDS}
        if person is not None:
            names.update({k: v for k in _IDENTIFIER_KINDS if (v := getattr(person, k))})
            self.delete(identifiers)
        for kind, value in names.items():
            self.suppressed.add((kind, self._norm(kind, str(value))))

    def unsuppress(self, identifiers: Mapping[str, Any]) -> None:
        """Allow the identifiers again; the deleted profile does not come back."""
        for kind, value in identifiers.items():
            if kind in _IDENTIFIER_KINDS:
                self.suppressed.discard((kind, self._norm(kind, str(value))))

    def add_device(self, identifiers: Mapping[str, Any], device: Mapping[str, Any]) -> None:
        person = self._resolve(identifiers)
        token = str(device.get("token") or device.get("id") or "")
        person.devices[token] = dict(device)

    def delete_device(self, identifiers: Mapping[str, Any], token: str) -> None:
        person = self.find(identifiers)
        if person is not None:
            person.devices.pop(token, None)

    # -- objects and relationships ---------------------------------------------------

    def _object_key(self, identifiers: Mapping[str, Any], *, create: bool) -> ObjectKey:
        if "cio_object_id" in identifiers:
            key = self._objects_by_cio.get(str(identifiers["cio_object_id"]))
            if key is None:
                raise WorkspaceError(
                    "identifiers.cio_object_id", "no object has this cio_object_id", "not_found"
                )
            return key
        key = (str(identifiers.get("object_type_id")), str(identifiers.get("object_id")))
        if create and key not in self.objects:
            self._next_object += 1
            cio_object_id = f"ob{self._next_object:x}"
            self.objects[key] = CioObject(key[0], key[1], cio_object_id)
            self._objects_by_cio[cio_object_id] = key
        return key

    def _relate(self, cio_id: str, key: ObjectKey, attributes: Mapping[str, Any]) -> None:
        current = self.relationships.setdefault((cio_id, key), {})
        _apply_attributes(current, attributes)

    def identify_object(
        self,
        identifiers: Mapping[str, Any],
        attributes: Mapping[str, Any] | None = None,
        relationships: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        """Create or update an object, and relate it to the given people."""
        key = self._object_key(identifiers, create=True)
        _apply_attributes(self.objects[key].attributes, attributes or {})
        self.relate_object(identifiers, relationships)

    def identify_object_anonymous(
        self,
        identifiers: Mapping[str, Any],
        attributes: Mapping[str, Any] | None,
        relationships: Iterable[Mapping[str, Any]],
    ) -> None:
        """An object related to anonymous people; the relation moves to them on identify."""
        key = self._object_key(identifiers, create=True)
        _apply_attributes(self.objects[key].attributes, attributes or {})
        for relationship in relationships:
            anonymous_id = _as_dict(relationship.get("identifiers")).get("anonymous_id")
            if not isinstance(anonymous_id, str) or not anonymous_id:
                continue
            attrs = _as_dict(relationship.get("relationship_attributes"))
            owner = self._anonymous_owner.get(anonymous_id)
            if owner is not None and owner in self.people:
                self._relate(owner, key, attrs)
            else:
                self._anonymous_relationships.setdefault(anonymous_id, {})[key] = attrs

    def relate_object(
        self, identifiers: Mapping[str, Any], relationships: Iterable[Mapping[str, Any]]
    ) -> None:
        """Add relationships between an object and people (created if unknown)."""
        key = self._object_key(identifiers, create=True)
        for relationship in relationships:
            person = self._resolve(_as_dict(relationship.get("identifiers")))
            self._relate(person.cio_id, key, _as_dict(relationship.get("relationship_attributes")))

    def unrelate_object(
        self, identifiers: Mapping[str, Any], relationships: Iterable[Mapping[str, Any]]
    ) -> None:
        key = self._object_key(identifiers, create=False)
        for relationship in relationships:
            person = self.find(_as_dict(relationship.get("identifiers")))
            if person is not None:
                self.relationships.pop((person.cio_id, key), None)

    def delete_object(self, identifiers: Mapping[str, Any]) -> None:
        """Delete an object and every relationship to it."""
        try:
            key = self._object_key(identifiers, create=False)
        except WorkspaceError:
            return
        obj = self.objects.pop(key, None)
        if obj is not None:
            self._objects_by_cio.pop(obj.cio_object_id, None)
        for rel in [r for r in self.relationships if r[1] == key]:
            del self.relationships[rel]

    def relate_person(
        self, identifiers: Mapping[str, Any], relationships: Iterable[Mapping[str, Any]]
    ) -> None:
        """Add relationships between a person (created if unknown) and objects."""
        person = self._resolve(identifiers)
        for relationship in relationships:
            key = self._object_key(_as_dict(relationship.get("identifiers")), create=True)
            self._relate(person.cio_id, key, _as_dict(relationship.get("relationship_attributes")))

    def unrelate_person(
        self, identifiers: Mapping[str, Any], relationships: Iterable[Mapping[str, Any]]
    ) -> None:
        person = self.find(identifiers)
        if person is None:
            return
        for relationship in relationships:
            try:
                key = self._object_key(_as_dict(relationship.get("identifiers")), create=False)
            except WorkspaceError:
                continue
            self.relationships.pop((person.cio_id, key), None)

    # -- v2 envelope -----------------------------------------------------------------

    def apply_item(self, item: Mapping[str, Any]) -> None:
        """Apply one ``/api/v2/batch`` item or ``/api/v2/entity`` body."""
        kind, action = item.get("type"), item.get("action")
        ids = _as_dict(item.get("identifiers"))
        attributes = _as_dict(item.get("attributes"))
        relationships = item.get("cio_relationships") or []
        if kind == "person":
            if action == "identify":
                timestamp = item.get("timestamp")
                self.identify(
                    ids,
                    attributes,
                    relationships=relationships,
                    timestamp=timestamp if isinstance(timestamp, int) else None,
                )
            elif action in ("event", "page", "screen") and "anonymous_id" in ids:
                self.track_anonymous(  # the same as a v1 anonymous event
                    str(ids["anonymous_id"]),
                    str(item.get("name")),
                    kind=str(action),
                    event_id=item.get("id"),
                    timestamp=item.get("timestamp"),
                    data=attributes,
                )
            elif action in ("event", "page", "screen"):
                self.track(
                    ids,
                    str(item.get("name")),
                    kind=str(action),
                    event_id=item.get("id"),
                    timestamp=item.get("timestamp"),
                    data=attributes,
                )
            elif action == "merge":
                self.merge(_as_dict(item.get("primary")), _as_dict(item.get("secondary")))
            elif action == "delete":
                self.delete(ids)
            elif action == "suppress":
                self.suppress(ids)
            elif action == "unsuppress":
                self.unsuppress(ids)
            elif action == "add_relationships":
                self.relate_person(ids, relationships)
            elif action == "delete_relationships":
                self.unrelate_person(ids, relationships)
            elif action == "add_device":
                self.add_device(ids, _as_dict(item.get("device")))
            elif action == "delete_device":
                self.delete_device(ids, str(_as_dict(item.get("device")).get("token")))
            else:
                raise WorkspaceError("action", f"unsupported person action {action!r}")
        elif kind == "object":
            if action == "identify":
                self.identify_object(ids, attributes, relationships)
            elif action == "identify_anonymous":
                self.identify_object_anonymous(ids, attributes, relationships)
            elif action == "delete":
                self.delete_object(ids)
            elif action == "add_relationships":
                self.relate_object(ids, relationships)
            elif action == "delete_relationships":
                self.unrelate_object(ids, relationships)
            else:
                raise WorkspaceError("action", f"unsupported object action {action!r}")
        elif kind == "delivery":
            return  # delivery metrics have no effect on people
        else:
            raise WorkspaceError("type", f"unsupported type {kind!r}")

    # -- v1 calls --------------------------------------------------------------------

    def v1_identify(self, identifier: str, body: Mapping[str, Any]) -> None:
        """``PUT /api/v1/customers/{identifier}``: the body is the attributes."""
        v1_relationships = _as_dict(body.get("cio_relationships"))
        timestamp = body.get("_timestamp")
        person = self.identify(
            identifier_from_path(identifier),
            body,
            timestamp=timestamp if isinstance(timestamp, int) else None,
        )
        relationships = v1_relationships.get("relationships") or []
        if person is not None and relationships:
            ids = {"cio_id": person.cio_id}
            if v1_relationships.get("action") == "delete_relationships":
                self.unrelate_person(ids, relationships)
            else:
                self.relate_person(ids, relationships)

    def v1_track(self, identifier: str, body: Mapping[str, Any]) -> None:
        """``POST /api/v1/customers/{identifier}/events``."""
        self.track(
            identifier_from_path(identifier),
            str(body.get("name")),
            kind=str(body.get("type") or "event"),
            event_id=body.get("id"),
            timestamp=body.get("timestamp"),
            data=_as_dict(body.get("data")),
        )

    def v1_anonymous_event(self, body: Mapping[str, Any]) -> None:
        """``POST /api/v1/events`` with an ``anonymous_id``."""
        self.track_anonymous(
            str(body.get("anonymous_id") or ""),
            str(body.get("name")),
            kind=str(body.get("type") or "event"),
            event_id=body.get("id"),
            timestamp=body.get("timestamp"),
            data=_as_dict(body.get("data")),
        )

    def v1_delete(self, identifier: str) -> None:
        self.delete(identifier_from_path(identifier))

    def v1_suppress(self, identifier: str) -> None:
        self.suppress(identifier_from_path(identifier))

    def v1_unsuppress(self, identifier: str) -> None:
        self.unsuppress(identifier_from_path(identifier))

    def v1_merge(self, body: Mapping[str, Any]) -> None:
        """``POST /api/v1/merge_customers``."""
        self.merge(_as_dict(body.get("primary")), _as_dict(body.get("secondary")))

    # -- inspection ------------------------------------------------------------------

    def person_detail(self, person: Person) -> dict[str, Any]:
        """Everything known about a person, as the inspection API shows it."""
        return {
            **person.summary(),
            "phone": person.phone,
            "events": [e.to_json() for e in person.events],
            "anonymous_ids": list(person.anonymous_ids),
            "devices": list(person.devices.values()),
            "relationships": [
                {"object_type_id": k[0], "object_id": k[1], "relationship_attributes": a}
                for (cio_id, k), a in self.relationships.items()
                if cio_id == person.cio_id
            ],
        }

    def objects_json(self) -> list[dict[str, Any]]:
        """Every object with its attributes and the people related to it."""
        related: dict[ObjectKey, list[dict[str, Any]]] = {}
        for (cio_id, key), attrs in self.relationships.items():
            person = self.people.get(cio_id)
            related.setdefault(key, []).append(
                {
                    "cio_id": cio_id,
                    "id": person.id if person else None,
                    "email": person.email if person else None,
                    "relationship_attributes": attrs,
                }
            )
        return [
            {
                "object_type_id": o.object_type_id,
                "object_id": o.object_id,
                "cio_object_id": o.cio_object_id,
                "attributes": o.attributes,
                "relationships": related.get(o.key, []),
            }
            for o in self.objects.values()
        ]

    def anonymous_events_json(self) -> dict[str, list[dict[str, Any]]]:
        return {k: [e.to_json() for e in v] for k, v in self.anonymous_events.items()}

    def stats(self) -> dict[str, Any]:
        return {
            "people": len(self.people),
            "events_stored": self.events_stored,
            "duplicate_events_ignored": self.duplicate_events_ignored,
            "anonymous_events_pending": sum(len(v) for v in self.anonymous_events.values()),
            "objects": len(self.objects),
            "relationships": len(self.relationships),
            "suppressed_identifiers": len(self.suppressed),
            "deleted_people": len(self.deleted),
            "merges": self.merges,
            "merges_ignored": self.merges_ignored,
            "stale_updates_ignored": self.stale_updates_ignored,
            "suppressed_ignored": self.suppressed_ignored,
            "failures": len(self.failures),
        }
