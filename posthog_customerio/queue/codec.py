"""How queue implementations store an IdentityState: one small JSON document.

Shared by SQLite and PostgreSQL so a state written by one reads the same in the other. Decoding
ignores unknown keys and defaults missing ones, so adding a field to ``IdentityState`` needs no
data migration.

The stored keys keep the names of earlier versions: ``set_once_keys`` holds
``IdentityState.sent_attribute_keys`` and ``related`` holds ``relationships``. Renaming them
would leave every existing database with states this code reads as empty (and an older
version, after a downgrade, with states it reads as empty): every attribute would be sent again
as if new, ``$set_once`` values overwritten.

``exists`` was added later: a state stored without it was written by a version that sent every
identified person's events, so its default is ``identified``, and it is written only when it
differs from that. ``merged_into``/``merged_email`` are written only when set. So a state
without them stores exactly the bytes it stored before they existed.
"""

from __future__ import annotations

from typing import Any

import orjson

from posthog_customerio.mapping.identity import IdentityState


def encode_state(state: IdentityState) -> bytes:
    """JSON bytes with sorted sets, so equal states store identical bytes.

    ``related``, ``exists`` and the merge keys are written only when they carry something
    (see the module docstring), so older states keep their bytes.
    """
    data: dict[str, Any] = {
        "identified": state.identified,
        "email": state.email,
        "seen": state.seen,
        "set_once_keys": sorted(state.sent_attribute_keys),
    }
    if state.relationships:
        data["related"] = sorted(state.relationships)
    if state.exists != state.identified:
        data["exists"] = state.exists
    if state.merged_into is not None:
        data["merged_into"] = state.merged_into
        if state.merged_email is not None:
            data["merged_email"] = state.merged_email
    return orjson.dumps(data)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def decode_state(raw: bytes | str) -> IdentityState:
    data: dict[str, Any] = orjson.loads(raw)
    identified = bool(data.get("identified", False))
    return IdentityState(
        identified=identified,
        email=_str_or_none(data.get("email")),
        seen=bool(data.get("seen", False)),
        sent_attribute_keys=frozenset(str(k) for k in data.get("set_once_keys", ())),
        relationships=frozenset(str(k) for k in data.get("related", ())),
        exists=bool(data.get("exists", identified)),
        merged_into=_str_or_none(data.get("merged_into")),
        merged_email=_str_or_none(data.get("merged_email")),
    )
