"""What both queues share to forget a person: which stored bodies name them.

An operation or dead letter belongs to a forgotten person when it is in their partition (the
distinct_id), or when its identifiers name them anywhere else: ``identifiers.id``,
``identifiers.email`` or ``identifiers.anonymous_id`` (a merge's ``primary``/``secondary``, a
relationship's people), or a v1 ``anonymous_id``. The store first narrows the rows with a
byte search for each name as JSON (``needles``), in SQL, and this module confirms each
candidate on the parsed body.

``Erasure`` holds what both stores need between their reads and writes: who is forgotten, how
to recognise their rows, and the operations that tell Customer.io.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.operation import Operation
from posthog_customerio.queue.base import ForgetResult, Forgetter


def names_of(
    distinct_ids: Iterable[str], states: Mapping[str, IdentityState]
) -> tuple[frozenset[str], frozenset[str]]:
    """(distinct_ids, lower-cased stored emails) of the people being forgotten."""
    emails = frozenset(s.email.lower() for s in states.values() if s.email)
    return frozenset(distinct_ids), emails


def needles(ids: Collection[str], states: Mapping[str, IdentityState]) -> list[bytes]:
    """Byte strings at least one of which occurs in the stored JSON of any body naming them.

    Bodies are orjson bytes, so a string value is stored exactly as ``orjson.dumps(value)``.
    Emails are searched as stored (the mapper sends the address it stored) and lower-cased;
    other spellings of the same address are not found.
    """
    emails = [e for s in states.values() if (e := s.email)]
    values = dict.fromkeys([*ids, *emails, *(e.lower() for e in emails)])
    return [orjson.dumps(v) for v in values if v]


def _names(identifiers: object, ids: frozenset[str], emails: frozenset[str]) -> bool:
    if not isinstance(identifiers, dict):
        return False
    for key in ("id", "anonymous_id"):
        person_id = identifiers.get(key)
        if isinstance(person_id, str) and person_id in ids:
            return True
    email = identifiers.get("email")
    return isinstance(email, str) and email.lower() in emails


def body_names(raw: bytes, ids: frozenset[str], emails: frozenset[str]) -> bool:
    """Whether the stored body ``raw`` addresses one of the forgotten people."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(body, dict):
        return False
    anonymous_id = body.get("anonymous_id")  # a v1 anonymous event
    if isinstance(anonymous_id, str) and anonymous_id in ids:
        return True
    for key in ("identifiers", "primary", "secondary"):
        if _names(body.get(key), ids, emails):
            return True
    relationships = body.get("cio_relationships")
    if isinstance(relationships, list):
        return any(
            isinstance(r, dict) and _names(r.get("identifiers"), ids, emails) for r in relationships
        )
    return False


@dataclass(frozen=True, slots=True)
class Erasure:
    """One ``Queue.forget``: the distinct_ids (in order, once each) and their stored states."""

    targets: tuple[str, ...]
    states: Mapping[str, IdentityState]
    ids: frozenset[str]
    emails: frozenset[str]
    needles: list[bytes]

    @classmethod
    def of(cls, targets: Sequence[str], states: Mapping[str, IdentityState]) -> Erasure:
        ids, emails = names_of(targets, states)
        return cls(tuple(targets), states, ids, emails, needles(targets, states))

    def names(self, partition: str, body: bytes) -> bool:
        """Whether a stored operation or dead letter belongs to the people forgotten."""
        return partition in self.ids or self.mentioned_in(body)

    def mentioned_in(self, body: bytes) -> bool:
        """Whether a stored body addresses one of them (whatever its partition)."""
        return body_names(body, self.ids, self.emails)

    def result(
        self, *, operations: int, dead_letters: int, in_flight: int, enqueued: int
    ) -> ForgetResult:
        """What was removed and enqueued; the identities removed are the states loaded."""
        return ForgetResult(
            distinct_ids=self.targets,
            identities=len(self.states),
            operations=operations,
            dead_letters=dead_letters,
            in_flight=in_flight,
            enqueued=enqueued,
        )

    def operations(self, forgetter: Forgetter, *, suppress: bool) -> list[Operation]:
        """The delete (or suppress) operations, person by person, to enqueue last."""
        return [
            op
            for distinct_id in self.targets
            for op in forgetter.forget_operations(
                distinct_id, self.states.get(distinct_id), suppress=suppress
            )
        ]
