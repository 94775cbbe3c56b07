"""A Customer.io operation as mapping produces it and the queue stores it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# Customer.io's v2 ``identify`` of ``type: object`` (a person's is plain ``identify``). Until
# this name, the connector called it ``object_identify`` (a metric label value too).
OBJECT_IDENTIFY = "object.identify"


class Endpoint(StrEnum):
    """How an operation's body is shaped, and so where it can be sent.

    ``ANONYMOUS_ITEM`` is an anonymous visitor's ``event``/``page``/``screen`` as a v2 person
    item with ``identifiers: {"anonymous_id": ...}``: it rides in ``/api/v2/batch`` like any
    item, or is turned into a v1 anonymous event (``v1_anonymous_body``) when
    ``anonymous_events_endpoint = "v1"`` or after Customer.io refused such items. The published
    spec lists no ``anonymous_id`` person identifier; Customer.io's own Segment destination
    sends exactly this shape in v2 batches (segmentio/action-destinations,
    ``packages/destination-actions/src/destinations/customerio/utils.ts``: ``resolveIdentifiers``
    falls back to ``{anonymous_id}``, ``sendBatch`` posts the items to ``/api/v2/batch``).
    ``ANONYMOUS`` is a ready ``POST /api/v1/events`` body: rows queued by earlier versions, and
    an anonymous event too large for a 32 KB batch item but within v1's data limit.
    """

    BATCH = "batch"  # body is one v2 envelope item naming a person or an object
    ANONYMOUS_ITEM = "anonymous_item"  # body is a v2 item with an anonymous_id identifier
    ANONYMOUS = "anonymous"  # body is a POST /api/v1/events body with anonymous_id
    # The reverse path (mapping/reporting.py): not Customer.io's, PostHog's capture API.
    POSTHOG_CAPTURE = "posthog_capture"  # body is one event of PostHog's /batch/ "batch" list
    REPORTING_UNREADABLE = "reporting_unreadable"  # a signed body that did not parse: kept

    @property
    def is_posthog(self) -> bool:
        """Whether delivery sends this to PostHog (or dead-letters it) rather than Customer.io."""
        return self in (Endpoint.POSTHOG_CAPTURE, Endpoint.REPORTING_UNREADABLE)


@dataclass(frozen=True, slots=True)
class Operation:
    """One request item for Customer.io.

    ``partition`` is the ordering key: operations with the same key are delivered in ingest
    order (one person = one key; one object = ``object:<type_id>:<object_id>``; an anonymous
    visitor's events and the identify that merges them = the visitor's distinct_id). ``action``
    is the envelope action (``identify``, ``event``, ``page``, ``screen``, ``merge``,
    ``add_relationships``, ``delete``, ``suppress``; ``object.identify`` for an object's
    ``identify``), used for metrics and explain output. ``event_uuid`` is the PostHog uuid the
    operation came from, kept for the dead-letter view.
    """

    partition: str
    endpoint: Endpoint
    action: str
    body: dict[str, Any]
    event_uuid: str = ""


def v1_anonymous_body(item: Mapping[str, Any]) -> dict[str, Any]:
    """The ``POST /api/v1/events`` body carrying the same anonymous event as ``item`` (an
    ``ANONYMOUS_ITEM`` body): v2 ``attributes`` are v1 ``data``, the action is the ``type``."""
    identifiers = item.get("identifiers")
    anonymous_id = identifiers.get("anonymous_id") if isinstance(identifiers, Mapping) else None
    body: dict[str, Any] = {"anonymous_id": anonymous_id, "name": item.get("name")}
    action = item.get("action")
    if action != "event":
        body["type"] = action
    for key in ("id", "timestamp"):
        if key in item:
            body[key] = item[key]
    if "attributes" in item:
        body["data"] = item["attributes"]
    return body
