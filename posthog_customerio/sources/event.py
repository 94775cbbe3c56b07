"""The canonical PostHog event every source produces and mapping consumes.

Nothing outside ``sources`` knows PostHog's payload shapes; everything downstream sees only
this type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PostHogEvent:
    """One PostHog event, normalised.

    ``timestamp_ms`` is the event time in Unix milliseconds. ``set``/``set_once``/``unset`` are
    lifted out of ``properties`` (and the legacy top-level ``$set``) so mapping never has to look
    in two places; ``properties`` keeps everything else, including other ``$`` keys.
    ``person_properties`` are the person's properties as the payload carried them (webhook
    ``person.properties`` or an export's ``person_properties``). ``notes`` records what the
    source had to derive (for example a missing uuid), so ``explain`` can say so; each starts
    with the field it is about (``note_field``). ``properties_dropped`` says ``properties`` was
    unusable and replaced by ``{}``: whether the sender was an anonymous browser is unknown.
    """

    uuid: str
    event: str
    distinct_id: str
    timestamp_ms: int
    properties: JSON = field(default_factory=dict)
    set: JSON = field(default_factory=dict)
    set_once: JSON = field(default_factory=dict)
    unset: tuple[str, ...] = ()
    person_properties: JSON = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    properties_dropped: bool = False


def note_field(note: str) -> str:
    """The field a source note is about (its first word): a bounded metric label."""
    return note.split(" ", 1)[0].rstrip(":")
