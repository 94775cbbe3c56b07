"""JSON answers of the HTTP app, in one shape: ``{"error": ..., "field": ...}`` for errors.

Shared by the webhook fast path (which sends bytes through raw ASGI), the Starlette routes
and the admin API, so every error a client sees is built the same way.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )


def error_body(message: str, field: str | None = None) -> bytes:
    """The JSON of an error; ``field`` names the offending input when there is one."""
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return orjson.dumps(body)


def error_response(status: int, message: str, field: str | None = None) -> Response:
    return Response(error_body(message, field), status_code=status, media_type="application/json")
