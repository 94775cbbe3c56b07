"""Deterministic ULIDs for Customer.io event ids, derived from PostHog event uuids.

Customer.io ignores an event whose ``id`` it has seen before, so deriving the id from the
PostHog uuid (never from a clock or a random source) makes retries and replays harmless.
A UUIDv7 already is a millisecond timestamp plus randomness, so its 128 bits are re-encoded
as they are; any other uuid (or a non-uuid string) becomes the event time in milliseconds plus
80 bits of its SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import uuid as _uuid

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID_CHARS = frozenset(CROCKFORD + CROCKFORD.lower())
_MAX_MS = (1 << 48) - 1
# Every 10-bit value as its two Crockford characters: 13 lookups encode 130 bits.
_PAIRS = [a + b for a in CROCKFORD for b in CROCKFORD]
# The form ``str(uuid.UUID(...))`` produces; any other spelling goes through ``uuid.UUID``.
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _encode128(value: int) -> str:
    """Encode a 128-bit integer as 26 Crockford base32 characters (first char 0-7)."""
    p = _PAIRS
    return "".join(
        (
            p[value >> 120],
            p[(value >> 110) & 1023],
            p[(value >> 100) & 1023],
            p[(value >> 90) & 1023],
            p[(value >> 80) & 1023],
            p[(value >> 70) & 1023],
            p[(value >> 60) & 1023],
            p[(value >> 50) & 1023],
            p[(value >> 40) & 1023],
            p[(value >> 30) & 1023],
            p[(value >> 20) & 1023],
            p[(value >> 10) & 1023],
            p[value & 1023],
        )
    )


def ulid_from_uuid(uuid: str, timestamp_ms: int) -> str:
    """The ULID for a PostHog event: the same ``uuid`` always gives the same ULID.

    ``timestamp_ms`` (the event time) is used only when ``uuid`` is not a UUIDv7; it is
    clamped to the 48 bits a ULID holds.
    """
    if _CANONICAL.fullmatch(uuid):
        # Fast path for the usual spelling, which is its own ``str(UUID(...))``: the version is
        # the 13th hex digit and the RFC 4122 variant is a 17th digit of 8-b.
        if uuid[14] == "7" and uuid[19] in "89ab":
            return _encode128(int(uuid.replace("-", ""), 16))
        key = uuid
    else:
        try:
            parsed = _uuid.UUID(uuid)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.version == 7 and parsed.variant == _uuid.RFC_4122:
            return _encode128(parsed.int)
        key = str(parsed) if parsed is not None else uuid
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    ms = timestamp_ms if 0 <= timestamp_ms <= _MAX_MS else min(max(timestamp_ms, 0), _MAX_MS)
    return _encode128((ms << 80) | int.from_bytes(digest[:10], "big"))


def is_ulid(s: object) -> bool:
    """True for a 26-character Crockford base32 string whose value fits in 128 bits."""
    return (
        isinstance(s, str)
        and len(s) == 26
        and "0" <= s[0] <= "7"
        and all(c in _ULID_CHARS for c in s)
    )
