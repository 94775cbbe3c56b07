"""Request bodies from claimed operations, and halving a refused batch.

Stored operation bodies are already JSON, so a batch body is spliced from bytes rather than
re-serialised: the hot path never parses what it sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from posthog_customerio.queue.base import ClaimedOperation

T = TypeVar("T")

_PREFIX = b'{"batch":['
_SUFFIX = b"]}"
# Room left for the ``{"batch":[...]}`` wrapper. The ``n - 1`` commas between items are not
# covered; the worker checks the built body and halves it in the rare case it is still over.
BATCH_WRAPPER_BYTES = 64
ITEM_MAX_BYTES = 32_000  # Customer.io's limit per batch item


def claim_max_bytes(batch_max_bytes: int) -> int:
    """The ``max_bytes`` to claim with so that the wrapped request stays under the limit."""
    return batch_max_bytes - BATCH_WRAPPER_BYTES


def is_full(ops: Sequence[ClaimedOperation], max_ops: int, max_bytes: int) -> bool:
    """Whether a claim made with these limits is as big as a request gets: ``max_ops``
    operations, or less room left than the largest item could need. A claim that is not
    full took everything that was ready, so more can only come from waiting."""
    if len(ops) >= max_ops:
        return True
    return sum(len(op.body_json) for op in ops) > max_bytes - ITEM_MAX_BYTES


def build_batch_body(ops: Sequence[ClaimedOperation]) -> bytes:
    """``{"batch":[item,item,...]}`` from the stored item bodies, in claim order."""
    return _PREFIX + b",".join(op.body_json for op in ops) + _SUFFIX


def split_halves(items: Sequence[T]) -> tuple[list[T], list[T]]:
    """Two halves, order kept; the first is the smaller one when the length is odd."""
    middle = len(items) // 2
    return list(items[:middle]), list(items[middle:])
