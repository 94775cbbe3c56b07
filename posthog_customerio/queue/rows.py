"""Stored rows as the queue's values: both stores select the same columns in the same order.

A claimed operation is ``(id, partition_key, endpoint, action, body, size, attempts,
enqueued_at, event_uuid)``; a dead letter is ``(id, op_id, partition_key, endpoint, action,
body, reason, detail, request, response, status, created_at, event_uuid)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posthog_customerio.mapping.operation import Endpoint
from posthog_customerio.queue.base import ClaimedOperation, DeadLetter

_ENDPOINTS = {endpoint.value: endpoint for endpoint in Endpoint}  # Endpoint(x) is slow


def claimed_from_row(row: Sequence[Any]) -> ClaimedOperation:
    op_id, partition, endpoint, action, body, _size, attempts, enqueued_at, event_uuid = row[:9]
    return ClaimedOperation(
        id=op_id,
        partition=partition,
        endpoint=_ENDPOINTS[endpoint],
        action=action,
        body_json=bytes(body),
        attempts=attempts,
        enqueued_at=enqueued_at,
        event_uuid=event_uuid,
    )


def dead_letter_from_row(row: Sequence[Any]) -> DeadLetter:
    (dl_id, op_id, partition, endpoint, action, body, reason, detail, request, response) = row[:10]
    status, created_at, event_uuid = row[10:13]
    return DeadLetter(
        id=dl_id,
        op_id=op_id,
        partition=partition,
        endpoint=_ENDPOINTS[endpoint],
        action=action,
        body_json=bytes(body),
        reason=reason,
        detail=detail,
        request=request,
        response=response,
        status=status,
        created_at=created_at,
        event_uuid=event_uuid,
    )
