"""Logging: one line per notable event, ``key=value`` text or JSON, never a secret.

Context goes in ``extra={"ctx": {...}}`` so both formats render it with stable keys. A filter
replaces every configured secret wherever it might appear (message, args, context), as the
last line of defence behind ``SecretStr``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson

_RESERVED = "ctx"


class RedactingFilter(logging.Filter):
    """Replace known secret values in the final message and context."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    def add(self, secrets: Iterable[str]) -> None:
        """Also redact these (a config reload brought new secrets); old ones stay redacted."""
        for secret in secrets:
            if secret and len(secret) >= 4 and secret not in self._secrets:
                self._secrets.append(secret)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    def _scrub_value(self, value: Any) -> Any:
        """Scrub strings wherever they are, keeping numbers, booleans and nesting as they are
        (so JSON logs keep their types); anything else is scrubbed as its text."""
        if isinstance(value, str):
            return self._scrub(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, dict):
            return {str(k): self._scrub_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub_value(v) for v in value]
        return self._scrub(str(value))

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            record.msg = self._scrub(record.getMessage())
            record.args = None
            ctx = getattr(record, _RESERVED, None)
            if isinstance(ctx, dict):
                setattr(record, _RESERVED, {k: self._scrub_value(v) for k, v in ctx.items()})
        return True


def _context(record: logging.LogRecord) -> dict[str, Any]:
    ctx = getattr(record, _RESERVED, None)
    return ctx if isinstance(ctx, dict) else {}


class TextFormatter(logging.Formatter):
    """``2026-11-28T12:00:00Z level=info logger=delivery msg="..." key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        parts = [
            ts,
            f"level={record.levelname.lower()}",
            f"logger={record.name.removeprefix('posthog_customerio.')}",
            f"msg={_quote(record.getMessage())}",
        ]
        parts.extend(f"{k}={_quote(_text(v))}" for k, v in _context(record).items())
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with stable keys: ts, level, logger, msg, then context."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name.removeprefix("posthog_customerio."),
            "msg": record.getMessage(),
        }
        out.update(_context(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def _text(value: Any) -> str:
    """A context value in a text line: dicts and lists as compact JSON."""
    if isinstance(value, dict | list | tuple):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def _quote(value: str) -> str:
    if value and all(c not in value for c in ' "=\n'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def configure(fmt: str = "text", level: int = logging.INFO, secrets: Iterable[str] = ()) -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_secrets(secrets: Iterable[str]) -> None:
    """Extend the redaction of the handlers ``configure`` installed (config reload)."""
    wanted = list(secrets)
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            if isinstance(f, RedactingFilter):
                f.add(wanted)
