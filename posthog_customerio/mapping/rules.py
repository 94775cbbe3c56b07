"""The user's choices that steer mapping: the options of the original PostHog app."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AnonymousUsers(StrEnum):
    """The app's "Filtering of Anonymous Users" option."""

    SEND_ALL = "send_all"
    IDENTIFIED_ONLY = "identified_only"
    WITH_EMAIL_ONLY = "with_email_only"


@dataclass(frozen=True, slots=True)
class MappingRules:
    """``event_allowlist`` empty means every event passes."""

    identify_by_email: bool = False
    anonymous_users: AnonymousUsers = AnonymousUsers.SEND_ALL
    event_allowlist: frozenset[str] = frozenset()
