"""Typed settings: one tree, validated at start-up, every problem reported at once.

Precedence: CLI flag > environment > config file (TOML) > ``--plugin-config`` (the PostHog
app's plugin.json) > default. Secrets are ``SecretStr`` so they never print.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from posthog_customerio.errors import ConfigError
from posthog_customerio.mapping.rules import AnonymousUsers, MappingRules

_log = logging.getLogger("posthog_customerio.settings")

DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
REGION_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}


class DeliverySettings(BaseModel):
    """Delivery tuning; every name carries its unit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_max_bytes: int = Field(default=450_000, ge=1_000, le=499_000)
    batch_max_ops: int = Field(default=1_000, ge=1, le=10_000)
    batch_linger_secs: float = Field(default=0.2, ge=0, le=60)
    rate_limit_rps: float = Field(default=100.0, gt=0, le=1_000)
    max_in_flight: int = Field(default=8, ge=1, le=256)
    retry_initial_backoff_secs: float = Field(default=0.5, gt=0, le=600)
    retry_max_backoff_secs: float = Field(default=60.0, gt=0, le=3_600)
    retry_after_max_secs: float = Field(default=300.0, gt=0, le=3_600)
    max_event_age_secs: float = Field(default=3 * 24 * 3600.0, gt=0)
    request_timeout_secs: float = Field(default=30.0, gt=0, le=600)
    credentials_recheck_secs: float = Field(default=30.0, gt=0, le=3_600)
    shutdown_grace_secs: float = Field(default=10.0, ge=0, le=600)
    # PostgreSQL scale-out: a process's claimed partitions stay leased to it until lease_secs
    # after its last heartbeat; it renews them (and its heartbeat) every heartbeat_secs.
    lease_secs: float = Field(default=30.0, gt=0, le=3_600)
    heartbeat_secs: float = Field(default=5.0, gt=0, le=600)
    # Minimum fraction (0..1) of delivery requests given to backfill operations while live
    # ones wait too; live traffic gets the rest, and all of it when no backfill is pending.
    backfill_share: float = Field(default=0.5, ge=0, le=1)


class Settings(BaseModel):
    """Everything ``serve`` and the other commands need."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: str | None = None
    api_key: SecretStr | None = None
    region: Literal["us", "eu"] = "us"
    track_url: str | None = None

    anonymous_users: AnonymousUsers = AnonymousUsers.SEND_ALL
    event_allowlist: tuple[str, ...] = ()
    identify_by_email: bool = False
    # PostHog group type -> Customer.io object type id ("company" -> "1"): groups → objects.
    object_types: dict[str, str] = Field(default_factory=dict)

    data_dir: Path = Path("./data")
    database_url: str | None = None
    webhook_secret: SecretStr | None = None
    admin_token: SecretStr | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65_535)
    sandbox: bool = False
    insecure_no_auth: bool = False
    max_body_bytes: int = Field(default=1_048_576, ge=1_024)
    max_json_depth: int = Field(default=64, ge=4, le=1_000)
    dedup_window_secs: float = Field(default=7 * 24 * 3600.0, gt=0)
    log_format: Literal["text", "json"] = "text"
    status_history_interval_secs: float = Field(default=10.0, ge=0.1, le=600)  # status page charts

    # PostHog's query API, for `backfill --posthog-url` and `serve --follow-posthog`.
    posthog_url: str | None = None
    posthog_project_id: int | None = Field(default=None, ge=1)
    posthog_personal_api_key: SecretStr | None = None
    follow_posthog: bool = False
    follow_poll_secs: float = Field(default=30.0, gt=0, le=3_600)
    follow_lag_secs: float = Field(default=300.0, ge=0, le=7 * 24 * 3600)

    delivery: DeliverySettings = DeliverySettings()

    @property
    def effective_track_url(self) -> str:
        return (self.track_url or REGION_URLS[self.region]).rstrip("/")

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'connector.db'}"

    @property
    def has_credentials(self) -> bool:
        return bool(self.site_id) and self.api_key is not None

    def mapping_rules(self) -> MappingRules:
        return MappingRules(
            identify_by_email=self.identify_by_email,
            anonymous_users=self.anonymous_users,
            event_allowlist=frozenset(self.event_allowlist),
            object_types=dict(self.object_types),
        )


# --- loading --------------------------------------------------------------------------------

# The exact environment variable names of DESIGN.md §3.1; every other option is also
# settable as POSTHOG_CUSTOMERIO_<OPTION> (delivery tuning included).
ENV_NAMES = {
    "CUSTOMERIO_SITE_ID": "site_id",
    "CUSTOMERIO_API_KEY": "api_key",
    "CUSTOMERIO_REGION": "region",
    "CUSTOMERIO_TRACK_URL": "track_url",
}
ENV_PREFIX = "POSTHOG_CUSTOMERIO_"

# plugin.json keys of PostHog's archived "Customer.io Connector" app.
PLUGIN_ANONYMOUS = {
    "Send all events": AnonymousUsers.SEND_ALL,
    "Only send events from users that have been identified": AnonymousUsers.IDENTIFIED_ONLY,
    "Only send events from users with emails": AnonymousUsers.WITH_EMAIL_ONLY,
}
PLUGIN_HOSTS = {"track.customer.io": "us", "track-eu.customer.io": "eu"}

_TOP_FIELDS = set(Settings.model_fields) - {"delivery"}
_DELIVERY_FIELDS = set(DeliverySettings.model_fields)
_SECRET_FIELDS = {"api_key", "webhook_secret", "admin_token", "posthog_personal_api_key"}


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name, option in ENV_NAMES.items():
        if env.get(name, "") != "":
            layer[option] = env[name]
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or value == "":
            continue
        option = name[len(ENV_PREFIX) :].lower()
        if option in _TOP_FIELDS or option in _DELIVERY_FIELDS:
            layer[option] = value
    return layer


def _toml_layer(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        problems.append(f"--config {path}: cannot read ({exc.strerror})")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"--config {path}: not valid TOML ({exc})")
        return {}
    layer = dict(data)
    nested = layer.pop("delivery", None)
    if isinstance(nested, dict):
        layer.update(nested)
    elif nested is not None:
        problems.append(f"--config {path}: [delivery] must be a table")
    if any(k in layer for k in _SECRET_FIELDS) and _world_readable(path):
        _log.warning(
            "config file holds a secret and is readable by other users; chmod 600 it: %s", path
        )
    return layer


def _world_readable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def _plugin_layer(path: Path, problems: list[str]) -> dict[str, Any]:
    """Read the PostHog app's own config (plugin.json keys), as exported from PostHog."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"--plugin-config {path}: cannot read ({exc.strerror})")
        return {}
    except ValueError as exc:
        problems.append(f"--plugin-config {path}: not valid JSON ({exc})")
        return {}
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict):
        raw = raw["config"]
    if not isinstance(raw, dict):
        problems.append(f"--plugin-config {path}: expected a JSON object of plugin.json keys")
        return {}
    layer: dict[str, Any] = {}
    if raw.get("customerioSiteId"):
        layer["site_id"] = str(raw["customerioSiteId"])
    if raw.get("customerioToken"):
        layer["api_key"] = str(raw["customerioToken"])
    host = raw.get("host")
    if host:
        if host in PLUGIN_HOSTS:
            layer["region"] = PLUGIN_HOSTS[host]
        else:
            problems.append(
                f"--plugin-config host: {host!r} is not one of {', '.join(PLUGIN_HOSTS)}"
            )
    if "identifyByEmail" in raw:
        layer["identify_by_email"] = str(raw["identifyByEmail"]).strip().lower() in {"yes", "true"}
    anon = raw.get("sendEventsFromAnonymousUsers")
    if anon:
        if anon in PLUGIN_ANONYMOUS:
            layer["anonymous_users"] = PLUGIN_ANONYMOUS[anon]
        else:
            problems.append(f"--plugin-config sendEventsFromAnonymousUsers: unknown value {anon!r}")
    if raw.get("eventsToSend"):
        layer["event_allowlist"] = raw["eventsToSend"]
    return layer


def parse_allowlist(value: object) -> tuple[str, ...]:
    """Comma separated (or a list), trimmed, exact and case-sensitive; empty means all."""
    items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return tuple(dict.fromkeys(s for s in (str(i).strip() for i in items) if s))


_OBJECT_TYPE_ID = re.compile(r"[1-9][0-9]*")


def parse_object_types(value: object) -> dict[str, str]:
    """``{"company": "1"}`` (TOML table or JSON object), or ``company=1,team=2``.

    Raises ``ValueError`` naming the bad entry: a group type must be non-empty and an object
    type id a positive integer (Customer.io numbers object types from 1).
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"not valid JSON ({exc})") from None
        else:
            pairs: dict[str, object] = {}
            for item in filter(None, (part.strip() for part in text.split(","))):
                group_type, sep, type_id = item.partition("=")
                if not sep:
                    raise ValueError(f"{item!r} is not group_type=object_type_id")
                pairs[group_type.strip()] = type_id.strip()
            value = pairs
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of group type = object type id")
    out: dict[str, str] = {}
    for group_type, type_id in value.items():
        if isinstance(type_id, int) and not isinstance(type_id, bool):
            type_id = str(type_id)
        if not isinstance(group_type, str) or not group_type.strip():
            raise ValueError("a group type is empty")
        if not isinstance(type_id, str) or not _OBJECT_TYPE_ID.fullmatch(type_id):
            raise ValueError(
                f'{group_type}: object type id {type_id!r} is not a positive integer like "1"'
            )
        out[group_type.strip()] = type_id
    return out


def load_settings(
    *,
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    plugin_config: Path | None = None,
) -> Settings:
    """Merge the layers (CLI > env > TOML > plugin config > defaults) and validate once.

    Raises ``ConfigError`` listing every problem, each naming its option.
    """
    problems: list[str] = []
    merged: dict[str, Any] = {}
    if plugin_config is not None:
        merged.update(_plugin_layer(plugin_config, problems))
    if config_file is not None:
        merged.update(_toml_layer(config_file, problems))
    merged.update(_env_layer(os.environ if env is None else env))
    merged.update({k: v for k, v in (cli or {}).items() if v is not None})

    unknown = sorted(k for k in merged if k not in _TOP_FIELDS and k not in _DELIVERY_FIELDS)
    problems.extend(f"{k}: unknown option" for k in unknown)
    top = {k: v for k, v in merged.items() if k in _TOP_FIELDS}
    delivery = {k: v for k, v in merged.items() if k in _DELIVERY_FIELDS}
    if "event_allowlist" in top:
        top["event_allowlist"] = parse_allowlist(top["event_allowlist"])
    if "object_types" in top:
        try:
            top["object_types"] = parse_object_types(top["object_types"])
        except ValueError as exc:
            problems.append(f"object_types: {exc}")
            top.pop("object_types")
    for key in (
        "webhook_secret",
        "admin_token",
        "api_key",
        "site_id",
        "track_url",
        "posthog_url",
        "posthog_personal_api_key",
    ):
        if top.get(key) == "":
            top.pop(key)
    if bool(top.get("site_id")) != bool(top.get("api_key")):
        problems.append(
            "site_id and api_key: set both (CUSTOMERIO_SITE_ID, CUSTOMERIO_API_KEY) or neither"
        )
    try:
        settings = Settings.model_validate({**top, "delivery": delivery})
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"] if p != "delivery") or "config"
            shown = "" if loc in _SECRET_FIELDS else f" (got {err.get('input')!r})"
            problems.append(f"{loc}: {err['msg']}{shown}")
        raise ConfigError(problems) from None
    problems.extend(_cross_checks(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def _cross_checks(s: Settings) -> list[str]:
    problems = []
    if s.track_url is not None and not s.track_url.startswith(("http://", "https://")):
        problems.append(f"track_url: {s.track_url!r} must start with https:// or http://")
    if s.posthog_url is not None and not s.posthog_url.startswith(("http://", "https://")):
        problems.append(f"posthog_url: {s.posthog_url!r} must start with https:// or http://")
    if s.follow_posthog:
        missing = [
            name
            for name in ("posthog_url", "posthog_project_id", "posthog_personal_api_key")
            if getattr(s, name) is None
        ]
        problems.extend(f"{name}: required by follow_posthog" for name in missing)
    d = s.delivery
    if d.retry_initial_backoff_secs > d.retry_max_backoff_secs:
        problems.append("retry_initial_backoff_secs: must not exceed retry_max_backoff_secs")
    if d.heartbeat_secs * 2 > d.lease_secs:
        problems.append("heartbeat_secs: must be at most half of lease_secs")
    db = s.effective_database_url
    if not db.startswith(DATABASE_SCHEMES):
        scheme = db.split(":", 1)[0]
        problems.append(
            f"database_url: scheme {scheme!r} is not supported "
            "(use sqlite:///PATH or postgresql://USER@HOST/DB)"
        )
    return problems
