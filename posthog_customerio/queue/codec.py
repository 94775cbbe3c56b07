"""How queue implementations store an IdentityState: one small JSON document.

Shared by SQLite and PostgreSQL so a state written by one reads the same in the other. Decoding
ignores unknown keys and defaults missing ones, so adding a field to ``IdentityState`` needs no
data migration.

The stored keys keep the names of earlier versions: ``set_once_keys`` holds
``IdentityState.sent_attribute_keys`` and ``related`` holds ``relationships``. Renaming them
would leave every existing database with states this code reads as empty (and an older
version, after a downgrade, with states it reads as empty): every attribute would be sent again
as if new, ``$set_once`` values overwritten.
"""

from __future__ import annotations

from typing import Any

import orjson

from posthog_customerio.mapping.identity import IdentityState


def encode_state(state: IdentityState) -> bytes:
    """JSON bytes with sorted sets, so equal states store identical bytes.

    ``related`` is written only when not empty: a state without relationships stores exactly
    the bytes it stored before relationships existed.
    """
    data: dict[str, Any] = {
        "identified": state.identified,
        "email": state.email,
        "seen": state.seen,
        "set_once_keys": sorted(state.sent_attribute_keys),
    }
    if state.relationships:
        data["related"] = sorted(state.relationships)
    return orjson.dumps(data)


def decode_state(raw: bytes | str) -> IdentityState:
    data: dict[str, Any] = orjson.loads(raw)
    email = data.get("email")
    return IdentityState(
        identified=bool(data.get("identified", False)),
        email=email if isinstance(email, str) else None,
        seen=bool(data.get("seen", False)),
        sent_attribute_keys=frozenset(str(k) for k in data.get("set_once_keys", ())),
        relationships=frozenset(str(k) for k in data.get("related", ())),
    )
