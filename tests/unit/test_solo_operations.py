"""A merge or a link is sent in a request holding no other operation of its partition.

Customer.io ignores a merge whose primary does not exist yet, and may process the items of
one request in parallel, so ordering inside one batch is not enough: the identify that creates
the primary (and the secondary's own history) must be in an earlier request than the merge,
and after a link (``identify.link``) the operations addressed by the new email in a later one.
Driven through the real worker on the in-memory queue, as ``test_delivery_worker`` does.
"""

from __future__ import annotations

from typing import Any

import pytest

from posthog_customerio.mapping.operation import LINK_IDENTIFY, MERGE
from tests.unit.test_delivery_worker import (
    FAST,
    RecordingQueue,
    Request,
    batch_requests,
    drive,
    item,
    ok,
    region_ok,
)

# Ready-made bodies: what the worker sees is the action label and the partition; each also
# carries the ``identifiers.id`` and ``attributes.seq`` the recording Customer.io reads.
CREATE = {"type": "person", "action": "identify", "identifiers": {"id": "acct"}}
CREATE["attributes"] = {"seq": 10}
MERGE_BODY = {"type": "person", "action": "merge", "identifiers": {"id": "legacy"}}
MERGE_BODY["attributes"] = {"seq": 11}
LINK = {"type": "person", "action": "identify", "identifiers": {"id": "user_77"}}
LINK["attributes"] = {"seq": 12, "email": "li@example.org"}
BY_EMAIL = item("user_77", 2)


def request_of(requests: list[Request], wanted: dict[str, Any]) -> int:
    """The index of the one request that carried ``wanted``."""
    found = [n for n, r in enumerate(requests) if wanted in r.items]
    assert len(found) == 1, (wanted, found)
    return found[0]


@pytest.mark.parametrize("batch_max_ops", [2, 100], ids=["small-batches", "one-claim"])
def test_a_merge_is_in_a_later_request_than_what_it_depends_on(batch_max_ops: int) -> None:
    q = RecordingQueue()
    q.add("legacy", item("legacy", 1))
    q.add("legacy", CREATE, action="identify")
    q.add("legacy", MERGE_BODY, action=MERGE)
    q.add("legacy", item("legacy", 2))  # after the merge (the mapper addresses the primary)
    q.add("other", item("other", 1))
    settings = FAST.model_copy(update={"batch_max_ops": batch_max_ops, "max_in_flight": 4})
    run = drive(q, region_ok(ok), settings=settings)
    assert q.dead == [] and q.empty
    requests = batch_requests(run)
    merge = request_of(requests, MERGE_BODY)
    assert request_of(requests, item("legacy", 1)) < merge
    assert request_of(requests, CREATE) < merge
    assert request_of(requests, item("legacy", 2)) > merge
    others = [i for i in requests[merge].items if i != MERGE_BODY]
    assert all(i.get("identifiers") == {"id": "other"} for i in others), others


def test_operations_after_a_link_are_in_a_later_request() -> None:
    q = RecordingQueue()
    q.add("user_77", item("user_77", 1))
    q.add("user_77", LINK, action=LINK_IDENTIFY)
    q.add("user_77", BY_EMAIL)
    run = drive(q, region_ok(ok))
    assert q.dead == [] and q.empty
    requests = batch_requests(run)
    link = request_of(requests, LINK)
    assert request_of(requests, item("user_77", 1)) < link < request_of(requests, BY_EMAIL)
    assert requests[link].items == [LINK]
