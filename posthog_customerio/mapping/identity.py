"""What the connector remembers about a distinct_id between events (DESIGN.md §4)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class IdentityState:
    """Sticky per-distinct_id facts; flags only ever turn on.

    ``sent_attribute_keys`` are the attribute keys Customer.io has been sent for this person
    (``email`` included), so ``$set_once`` is sent only for keys the person never had and an
    email learnt from a filtered event is still sent with the next allowed one. ``$unset``
    removes keys; a changed email removes ``email``.

    ``relationships`` are the person → object relationships already sent, as
    ``"<object_type_id>:<object_id>"``, so a relationship is sent once, not with every event.

    ``exists``: an identify or an event was queued under this person's identifier, so
    Customer.io has (or will have, since a partition is delivered in order) a profile for it.
    ``merged_into`` is the distinct_id this one was merged into (``$create_alias`` /
    ``$merge_dangerously``), and ``merged_email`` the email that merge addressed it by (with
    ``identify_by_email``): every later operation of this id goes to that person, so the
    merged-away profile is never created again. A chain of merges (A into B, later B into C)
    is followed to its end, C, and A's state is then pointed at C (path compression), so the
    next event of A needs one read.
    """

    identified: bool = False
    email: str | None = None
    seen: bool = False
    sent_attribute_keys: frozenset[str] = field(default_factory=frozenset)
    relationships: frozenset[str] = field(default_factory=frozenset)
    exists: bool = False
    merged_into: str | None = None
    merged_email: str | None = None


def with_merge_chains(
    states: dict[str, IdentityState], known: Mapping[str, IdentityState]
) -> dict[str, IdentityState]:
    """``states`` (changed in place and returned) plus the states in ``known`` along each one's
    ``merged_into`` chain, so the mapper can address the end of the chain (A merged into B, B
    later into C: A's events go to C). Stops at an id already present, so a cycle ends."""
    for state in list(states.values()):
        target = state.merged_into
        while target is not None and target not in states:
            found = known.get(target)
            if found is None:
                break
            states[target] = found
            target = found.merged_into
    return states
