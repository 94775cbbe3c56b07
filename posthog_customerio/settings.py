"""Typed settings: one tree, validated at start-up, every problem reported at once.

Precedence: CLI flag > environment > config file (TOML) > ``--plugin-config`` (the PostHog
app's plugin.json) > default. Secrets are ``SecretStr`` so they never print. Each option also
declares (``Option``) what a reload does with it and whether it is a secret.

The layering is a few dict updates here rather than ``pydantic-settings``: tried, it needed a
subclass per call, a private hook to read a given environment, and aliases that would accept
variable names as config keys, while its TOML source ignores a missing file and raises on a bad
one instead of reporting it with every other problem.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import logging
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from posthog_customerio.errors import ConfigError
from posthog_customerio.mapping.rules import AnonymousUsers, MappingRules

_log = logging.getLogger("posthog_customerio.settings")

DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
REGION_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}


class Reload(enum.Enum):
    """What a reload (SIGHUP) does with a changed option (``runtime.Connector.reload``)."""

    LIVE = "live"  # read where it is used (per request, batch or loop): in effect at once
    MAPPING = "mapping"  # a mapping rule: a new mapper
    CREDENTIALS = "credentials"  # the Customer.io account: a new Track client (not the sandbox)
    CLIENT = "client"  # a Track client setting: a new client
    RATE_LIMIT = "rate_limit"  # the rate limiter's maximum
    RESTART = "restart"  # the old value is kept until the process restarts


@dataclass(frozen=True, slots=True)
class Option:
    """Declared on every setting (``Annotated[type, Option(...)]``), the one source of the
    restart-only, secret, credential and mapping lists: what a reload does with a new value,
    and whether the value is a secret (never printed, redacted from the logs)."""

    reload: Reload
    secret: bool = False


LIVE = Option(Reload.LIVE)
RESTART = Option(Reload.RESTART)
MAPPING = Option(Reload.MAPPING)
CREDENTIALS = Option(Reload.CREDENTIALS)


class DeliverySettings(BaseModel):
    """Delivery tuning; every name carries its unit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_max_bytes: Annotated[int, LIVE] = Field(default=450_000, ge=1_000, le=499_000)
    batch_max_ops: Annotated[int, LIVE] = Field(default=1_000, ge=1, le=10_000)
    batch_linger_secs: Annotated[float, LIVE] = Field(default=0.2, ge=0, le=60)
    rate_limit_rps: Annotated[float, Option(Reload.RATE_LIMIT)] = Field(
        default=100.0, gt=0, le=1_000
    )
    # The worker's in-flight slots are made once, at start.
    max_in_flight: Annotated[int, RESTART] = Field(default=8, ge=1, le=256)
    retry_initial_backoff_secs: Annotated[float, LIVE] = Field(default=0.5, gt=0, le=600)
    retry_max_backoff_secs: Annotated[float, LIVE] = Field(default=60.0, gt=0, le=3_600)
    retry_after_max_secs: Annotated[float, LIVE] = Field(default=300.0, gt=0, le=3_600)
    max_event_age_secs: Annotated[float, LIVE] = Field(default=3 * 24 * 3600.0, gt=0)
    request_timeout_secs: Annotated[float, Option(Reload.CLIENT)] = Field(
        default=30.0, gt=0, le=600
    )
    credentials_recheck_secs: Annotated[float, LIVE] = Field(default=30.0, gt=0, le=3_600)
    # uvicorn takes its own share of the grace (open requests) when it starts.
    shutdown_grace_secs: Annotated[float, RESTART] = Field(default=10.0, ge=0, le=600)
    # PostgreSQL scale-out: a process's claimed partitions stay leased to it until lease_secs
    # after its last heartbeat; it renews them (and its heartbeat) every heartbeat_secs. The
    # store takes both when it opens.
    lease_secs: Annotated[float, RESTART] = Field(default=30.0, gt=0, le=3_600)
    heartbeat_secs: Annotated[float, RESTART] = Field(default=5.0, gt=0, le=600)
    # Minimum fraction (0..1) of delivery requests given to backfill operations while live
    # ones wait too; live traffic gets the rest, and all of it when no backfill is pending.
    backfill_share: Annotated[float, LIVE] = Field(default=0.5, ge=0, le=1)
    # Anonymous visitors' events: as items of /api/v2/batch (identifiers {"anonymous_id"}), or
    # one POST /api/v1/events each. The worker switches to v1 by itself if Customer.io refuses
    # the batch items.
    anonymous_events_endpoint: Annotated[Literal["batch", "v1"], LIVE] = "batch"


class Settings(BaseModel):
    """Everything ``serve`` and the other commands need."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: Annotated[str | None, CREDENTIALS] = None
    api_key: Annotated[SecretStr | None, Option(Reload.CREDENTIALS, secret=True)] = None
    region: Annotated[Literal["us", "eu"], CREDENTIALS] = "us"
    track_url: Annotated[str | None, CREDENTIALS] = None

    anonymous_users: Annotated[AnonymousUsers, MAPPING] = AnonymousUsers.SEND_ALL
    event_allowlist: Annotated[tuple[str, ...], MAPPING] = ()
    identify_by_email: Annotated[bool, MAPPING] = False
    # PostHog group type -> Customer.io object type id ("company" -> "1"): groups → objects.
    object_types: Annotated[dict[str, str], MAPPING] = Field(default_factory=dict)

    data_dir: Annotated[Path, RESTART] = Path("./data")
    database_url: Annotated[str | None, RESTART] = None
    webhook_secret: Annotated[SecretStr | None, Option(Reload.LIVE, secret=True)] = None
    admin_token: Annotated[SecretStr | None, Option(Reload.LIVE, secret=True)] = None

    host: Annotated[str, RESTART] = "127.0.0.1"
    port: Annotated[int, RESTART] = Field(default=8787, ge=0, le=65_535)
    sandbox: Annotated[bool, RESTART] = False
    insecure_no_auth: Annotated[bool, RESTART] = False
    max_body_bytes: Annotated[int, LIVE] = Field(default=1_048_576, ge=1_024)
    max_json_depth: Annotated[int, LIVE] = Field(default=64, ge=4, le=1_000)
    dedup_window_secs: Annotated[float, LIVE] = Field(default=7 * 24 * 3600.0, gt=0)
    log_format: Annotated[Literal["text", "json"], RESTART] = "text"
    # The status page's charts: a ring of evenly spaced samples, made at start.
    status_history_interval_secs: Annotated[float, RESTART] = Field(default=10.0, ge=0.1, le=600)

    # PostHog's query API, for `backfill --posthog-url` and `serve --follow-posthog`. The
    # follow loop takes them (and its PostHog client) when it starts.
    posthog_url: Annotated[str | None, RESTART] = None
    posthog_project_id: Annotated[int | None, RESTART] = Field(default=None, ge=1)
    posthog_personal_api_key: Annotated[SecretStr | None, Option(Reload.RESTART, secret=True)] = (
        None
    )
    follow_posthog: Annotated[bool, RESTART] = False
    follow_poll_secs: Annotated[float, RESTART] = Field(default=30.0, gt=0, le=3_600)
    follow_lag_secs: Annotated[float, RESTART] = Field(default=300.0, ge=0, le=7 * 24 * 3600)

    # Customer.io's reporting webhooks into PostHog (docs/reporting.md). The signing keys are
    # comma separated, any one may match (rotation); the capture client is made at start.
    reporting_signing_keys: Annotated[SecretStr | None, Option(Reload.LIVE, secret=True)] = None
    posthog_capture_url: Annotated[str | None, RESTART] = None
    posthog_project_api_key: Annotated[SecretStr | None, Option(Reload.RESTART, secret=True)] = None
    # "object_type:metric" -> PostHog event name, e.g. {"email:opened": "Opened Email"}.
    reporting_event_names: Annotated[dict[str, str], LIVE] = Field(default_factory=dict)
    # Which "object_type:metric" are captured: fnmatch patterns, "!" denies; a metric is
    # captured when an allow pattern matches and no deny pattern does.
    reporting_metrics: Annotated[tuple[str, ...], LIVE] = ("*", "!*:drafted", "!*:attempted")
    reporting_include_recipient: Annotated[bool, LIVE] = False

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

    @property
    def reporting_keys(self) -> tuple[str, ...]:
        """The reporting webhook signing keys, trimmed, empty ones left out."""
        if self.reporting_signing_keys is None:
            return ()
        raw = self.reporting_signing_keys.get_secret_value().split(",")
        return tuple(k for k in (part.strip() for part in raw) if k)

    def mapping_rules(self) -> MappingRules:
        return MappingRules(
            identify_by_email=self.identify_by_email,
            anonymous_users=self.anonymous_users,
            event_allowlist=frozenset(self.event_allowlist),
            object_types=dict(self.object_types),
        )


# --- what each option is, from its declaration ----------------------------------------------


def _declared(model: type[BaseModel]) -> dict[str, Option]:
    options: dict[str, Option] = {}
    for name, info in model.model_fields.items():
        if name == "delivery":
            continue
        found = [m for m in info.metadata if isinstance(m, Option)]
        if len(found) != 1:
            raise TypeError(f"{model.__name__}.{name}: declare one Option(...) in Annotated")
        options[name] = found[0]
    return options


# Every option by its flat name (the name of its flag, variable and config key), in
# declaration order: the top level, then delivery tuning.
OPTIONS: Mapping[str, Option] = MappingProxyType(
    {**_declared(Settings), **_declared(DeliverySettings)}
)
SECRET_FIELDS = frozenset(name for name, option in OPTIONS.items() if option.secret)


def options_reloaded(how: Reload) -> frozenset[str]:
    """The options a reload treats ``how``."""
    return frozenset(name for name, option in OPTIONS.items() if option.reload is how)


def option_value(settings: Settings, name: str) -> object:
    """An option's value by its flat name (delivery tuning included)."""
    if name in DeliverySettings.model_fields:
        return getattr(settings.delivery, name)
    return getattr(settings, name)


def secret_values(settings: Settings) -> list[str]:
    """The values of the secrets that are set: what the logs redact."""
    values = (option_value(settings, n) for n, option in OPTIONS.items() if option.secret)
    found = [v.get_secret_value() for v in values if isinstance(v, SecretStr)]
    return found + list(settings.reporting_keys)  # each signing key alone, too


def is_loopback_host(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8``, ``::1`` (brackets and zone ids tolerated)."""
    host = host.strip().strip("[]").split("%", 1)[0].lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def missing_webhook_secret(settings: Settings) -> bool:
    """The one bind rule, at start and on reload: listening beyond loopback needs
    ``webhook_secret``, unless ``insecure_no_auth`` says otherwise."""
    return (
        not is_loopback_host(settings.host)
        and settings.webhook_secret is None
        and not settings.insecure_no_auth
    )


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload does: the settings then in effect, the options whose new value is applied
    (each is in ``effective``), and one message per change, as logged and returned."""

    effective: Settings
    applied: tuple[str, ...]
    messages: tuple[str, ...]


def plan_reload(old: Settings, new: Settings, *, sandbox: bool) -> ReloadPlan:
    """Diff ``old`` and ``new`` by the options' declarations.

    Restart-only options keep their old value and say so; so do the credentials when the
    process sends to its embedded sandbox (``sandbox``) or the new config has none, since the
    sandbox is mounted at start. Secrets are named, never shown.
    """
    changed = [n for n in OPTIONS if option_value(old, n) != option_value(new, n)]
    kept = {n for n in changed if OPTIONS[n].reload is Reload.RESTART}
    credentials = [n for n in changed if OPTIONS[n].reload is Reload.CREDENTIALS]
    switch = bool(credentials) and (sandbox or not new.has_credentials)
    if switch:
        kept.update(credentials)
    messages: list[str] = []
    applied: list[str] = []
    for name in changed:
        if OPTIONS[name].reload is Reload.RESTART:
            messages.append(f"{name}: changed in the config, takes effect after a restart")
        elif name in kept:
            continue
        elif OPTIONS[name].secret:
            applied.append(name)
            messages.append(f"{name}: changed")
        else:
            applied.append(name)
            messages.append(f"{name}: {option_value(old, name)!r} -> {option_value(new, name)!r}")
    if switch:
        messages.append("credentials: switching to or from the sandbox needs a restart")
    keep = {n: option_value(old, n) for n in kept}
    delivery = new.delivery.model_copy(
        update={n: v for n, v in keep.items() if n in DeliverySettings.model_fields}
    )
    top = {n: v for n, v in keep.items() if n not in DeliverySettings.model_fields}
    effective = new.model_copy(update={**top, "delivery": delivery})
    return ReloadPlan(effective, tuple(applied), tuple(messages))


# --- loading --------------------------------------------------------------------------------

# The exact environment variable names of DESIGN.md §3.1; every other option is also
# settable as POSTHOG_CUSTOMERIO_<OPTION> (delivery tuning included).
ENV_NAMES = {
    "CUSTOMERIO_SITE_ID": "site_id",
    "CUSTOMERIO_API_KEY": "api_key",
    "CUSTOMERIO_REGION": "region",
    "CUSTOMERIO_TRACK_URL": "track_url",
    "CUSTOMERIO_REPORTING_SIGNING_KEYS": "reporting_signing_keys",
}
ENV_PREFIX = "POSTHOG_CUSTOMERIO_"

# plugin.json keys of PostHog's archived "Customer.io Connector" app.
PLUGIN_ANONYMOUS = {
    "Send all events": AnonymousUsers.SEND_ALL,
    "Only send events from users that have been identified": AnonymousUsers.IDENTIFIED_ONLY,
    "Only send events from users with emails": AnonymousUsers.WITH_EMAIL_ONLY,
}
PLUGIN_HOSTS = {"track.customer.io": "us", "track-eu.customer.io": "eu"}


# An empty value from any source leaves an optional text option unset, as in the environment.
_EMPTY_IS_UNSET = tuple(
    name
    for name, info in Settings.model_fields.items()
    if info.default is None and info.annotation in (str | None, SecretStr | None)
)


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name, option in ENV_NAMES.items():
        if env.get(name, "") != "":
            layer[option] = env[name]
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or value == "":
            continue
        option = name[len(ENV_PREFIX) :].lower()
        if option in OPTIONS:
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
    if any(k in layer for k in SECRET_FIELDS) and _world_readable(path):
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


def parse_event_names(value: object) -> dict[str, str]:
    """``{"email:opened": "Opened Email"}`` (TOML table or JSON object), or
    ``email:opened=Opened Email,push:opened=Opened Push``."""
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
                key, sep, name = item.partition("=")
                if not sep:
                    raise ValueError(f"{item!r} is not object_type:metric=Event Name")
                pairs[key.strip()] = name.strip()
            value = pairs
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of object_type:metric = event name")
    out: dict[str, str] = {}
    for key, name in value.items():
        if not isinstance(key, str) or ":" not in key:
            raise ValueError(f"{key!r} is not object_type:metric")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{key}: the event name is empty")
        out[key.strip()] = name.strip()
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

    problems.extend(f"{k}: unknown option" for k in sorted(k for k in merged if k not in OPTIONS))
    top = {
        k: v for k, v in merged.items() if k in OPTIONS and k not in DeliverySettings.model_fields
    }
    delivery = {k: v for k, v in merged.items() if k in DeliverySettings.model_fields}
    if "event_allowlist" in top:
        top["event_allowlist"] = parse_allowlist(top["event_allowlist"])
    if "reporting_metrics" in top:
        top["reporting_metrics"] = parse_allowlist(top["reporting_metrics"])
    if "reporting_event_names" in top:
        try:
            top["reporting_event_names"] = parse_event_names(top["reporting_event_names"])
        except ValueError as exc:
            problems.append(f"reporting_event_names: {exc}")
            top.pop("reporting_event_names")
    if "object_types" in top:
        try:
            top["object_types"] = parse_object_types(top["object_types"])
        except ValueError as exc:
            problems.append(f"object_types: {exc}")
            top.pop("object_types")
    for key in _EMPTY_IS_UNSET:
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
            shown = "" if loc in SECRET_FIELDS else f" (got {err.get('input')!r})"
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
    url = s.posthog_capture_url
    if url is not None and not url.startswith(("http://", "https://")):
        problems.append(f"posthog_capture_url: {url!r} must start with https:// or http://")
    if s.reporting_keys and (url is None or s.posthog_project_api_key is None):
        problems.append(
            "reporting_signing_keys: needs posthog_capture_url and posthog_project_api_key "
            "(where the reporting events go)"
        )
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
