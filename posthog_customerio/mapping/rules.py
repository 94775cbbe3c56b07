"""The user's choices that steer mapping: the options of the original PostHog app."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class AnonymousUsers(StrEnum):
    """The app's "Filtering of Anonymous Users" option."""

    SEND_ALL = "send_all"
    IDENTIFIED_ONLY = "identified_only"
    WITH_EMAIL_ONLY = "with_email_only"


@dataclass(frozen=True, slots=True)
class MappingRules:
    """``event_allowlist`` empty means every event passes.

    ``object_types`` maps a PostHog group type (``company``) to a Customer.io object type id
    (``"1"``); groups of other types are not sent.
    """

    identify_by_email: bool = False
    anonymous_users: AnonymousUsers = AnonymousUsers.SEND_ALL
    event_allowlist: frozenset[str] = frozenset()
    object_types: Mapping[str, str] = field(default_factory=dict)
