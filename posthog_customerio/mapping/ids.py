"""Which distinct_ids can stand for a person: PostHog's refused ids and cookieless visitors.

PostHog's ingestion never merges persons on a handful of generic ids that stem from a bug in
the sender (``posthog.identify(undefined)``, ``String({})``, a template placeholder), because
every visitor with the bug shares it. The lists below are PostHog's own, copied from
``isDistinctIdIllegal`` in ``nodejs/src/common/persons/person-utils.ts`` of PostHog/posthog
(formerly ``plugin-server/src/worker/ingestion/persons/person-merge-service.ts``): some are
refused in any casing, others only as cased (``NaN`` but not ``nan``); both also wrapped in
single or double quotes, and a blank id is refused too. Addressing a Customer.io person by
such an id would merge every sender of the bug into one profile.

PostHog's cookieless mode replaces the browser's ids server-side: the
distinct_id becomes ``cookieless_<hash>`` and ``$device_id`` ``cookielessd_<hash>``
(``hashToDistinctId`` / ``baseHashToDeviceId`` in PostHog's cookieless manager), so the
usual "distinct_id equals ``$device_id``" test for an anonymous browser does not hold.
"""

from __future__ import annotations

_CASE_INSENSITIVE = (
    "anonymous",
    "guest",
    "distinctid",
    "distinct_id",
    "id",
    "not_authenticated",
    "email",
    "undefined",
    "true",
    "false",
)
_CASE_SENSITIVE = ("[object Object]", "NaN", "None", "none", "null", "0", "undefined")


def _quoted(ids: tuple[str, ...]) -> frozenset[str]:
    return frozenset(ids) | {f"'{i}'" for i in ids} | {f'"{i}"' for i in ids}


ILLEGAL_IDS_ANY_CASE = _quoted(_CASE_INSENSITIVE)
ILLEGAL_IDS_AS_CASED = _quoted(_CASE_SENSITIVE)
_LONGEST = max(len(i) for i in ILLEGAL_IDS_ANY_CASE | ILLEGAL_IDS_AS_CASED)

COOKIELESS_ID_PREFIX = "cookieless_"
COOKIELESS_DEVICE_PREFIX = "cookielessd_"


def is_illegal_id(distinct_id: str) -> bool:
    """Whether PostHog refuses to merge on ``distinct_id`` (blank, or a listed generic id).

    As PostHog compares: the lower-cased id (not trimmed) against the case-insensitive list,
    the id as is against the case-sensitive one.
    """
    if len(distinct_id) > _LONGEST:  # the usual id: no set look-ups, no lower-casing
        return not distinct_id.strip()
    return (
        not distinct_id.strip()
        or distinct_id.lower() in ILLEGAL_IDS_ANY_CASE
        or distinct_id in ILLEGAL_IDS_AS_CASED
    )


def is_cookieless(distinct_id: str, device_id: object) -> bool:
    """Whether the event comes from a visitor PostHog tracks in cookieless mode."""
    return (
        distinct_id.startswith(COOKIELESS_ID_PREFIX)
        and isinstance(device_id, str)
        and device_id.startswith(COOKIELESS_DEVICE_PREFIX)
    )
