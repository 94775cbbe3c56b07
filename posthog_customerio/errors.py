"""Exceptions, grouped by what the caller should do.

    ConnectorError
    ├── ConfigError        bad settings: report every problem, exit 2
    ├── InputError         bad webhook/export input: 400, names the field
    ├── PayloadTooLarge    over the size limit: 413
    ├── QueueUnavailable   the store cannot take writes now (locked, disk full): 503, retry
    └── StoreNotFound      a command found no queue where it looked: say where, exit 1

Lower-level errors (sqlite3, httpx, orjson) are translated once, at the boundary, with
``raise ... from exc``.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ConnectorError):
    """Invalid configuration; ``problems`` lists every one, each naming its option."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class InputError(ConnectorError):
    """A payload we cannot accept; ``field`` is a path like ``batch[2].event.distinct_id``."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class PayloadTooLarge(ConnectorError):
    """The request body is over the configured limit."""


class QueueUnavailable(ConnectorError):
    """The queue cannot durably take the write now; the sender should retry later."""


class StoreNotFound(ConnectorError):
    """No queue where a command looked (and it created none): says where it looked and how
    to point at another one."""

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(
            f"no queue found at {where} (nothing was created); point at yours with "
            "--data-dir DIR, or --database-url URL / POSTHOG_CUSTOMERIO_DATABASE_URL"
        )
