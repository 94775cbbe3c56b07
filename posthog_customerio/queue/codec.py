"""How queue implementations store an IdentityState: one small JSON document.

Shared by SQLite and PostgreSQL so a state written by one reads the same in the other. Decoding
ignores unknown keys and defaults missing ones, so adding a field to ``IdentityState`` needs no
data migration.
"""

from __future__ import annotations

from typing import Any

import orjson

from posthog_customerio.mapping.identity import IdentityState


def encode_state(state: IdentityState) -> bytes:
    """JSON bytes with sorted sets, so equal states store identical bytes.

    ``related`` is written only when not empty: a state without relationships stores exactly
    the bytes it stored before the field existed.
    """
    data: dict[str, Any] = {
        "identified": state.identified,
        "email": state.email,
        "seen": state.seen,
        "set_once_keys": sorted(state.set_once_keys),
    }
    if state.related:
        data["related"] = sorted(state.related)
    return orjson.dumps(data)


def decode_state(raw: bytes | str) -> IdentityState:
    data: dict[str, Any] = orjson.loads(raw)
    email = data.get("email")
    return IdentityState(
        identified=bool(data.get("identified", False)),
        email=email if isinstance(email, str) else None,
        seen=bool(data.get("seen", False)),
        set_once_keys=frozenset(str(k) for k in data.get("set_once_keys", ())),
        related=frozenset(str(k) for k in data.get("related", ())),
    )
