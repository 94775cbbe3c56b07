"""A Customer.io operation as mapping produces it and the queue stores it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# Customer.io's v2 ``identify`` of ``type: object`` (a person's is plain ``identify``). Until
# this name, the connector called it ``object_identify`` (a metric label value too).
OBJECT_IDENTIFY = "object.identify"


class Endpoint(StrEnum):
    """Where an operation is sent: one item of ``/api/v2/batch`` or one v1 anonymous event."""

    BATCH = "batch"  # body is one v2 envelope item
    ANONYMOUS = "anonymous"  # body is a POST /api/v1/events body with anonymous_id


@dataclass(frozen=True, slots=True)
class Operation:
    """One request item for Customer.io.

    ``partition`` is the ordering key: operations with the same key are delivered in ingest
    order (one person = one key; one object = ``object:<type_id>:<object_id>``). ``action`` is
    the v2 envelope action of a person (``identify``, ``event``, ``page``, ``screen``,
    ``merge``, ``add_relationships``, ``delete``, ``suppress``), or ``object.identify`` for
    ``type: object, action: identify``; it labels metrics and explain output. ``event_uuid``
    is the PostHog uuid the operation came from, kept for the dead-letter view.
    """

    partition: str
    endpoint: Endpoint
    action: str
    body: dict[str, Any]
    event_uuid: str = ""
