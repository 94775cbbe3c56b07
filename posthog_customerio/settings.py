"""Typed settings: one tree, validated at start-up, every problem reported at once.

Precedence: CLI flag > environment > config file (TOML) > ``--plugin-config`` (the PostHog
app's plugin.json) > default. Secrets are ``SecretStr`` so they never print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from posthog_customerio.mapping.rules import AnonymousUsers, MappingRules

REGION_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}


class DeliverySettings(BaseModel):
    """Delivery tuning; every name carries its unit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_max_bytes: int = Field(450_000, ge=1_000, le=499_000)
    batch_max_ops: int = Field(1_000, ge=1, le=10_000)
    batch_linger_secs: float = Field(0.2, ge=0, le=60)
    rate_limit_rps: float = Field(100.0, gt=0, le=1_000)
    max_in_flight: int = Field(8, ge=1, le=256)
    retry_initial_backoff_secs: float = Field(0.5, gt=0, le=600)
    retry_max_backoff_secs: float = Field(60.0, gt=0, le=3_600)
    retry_after_max_secs: float = Field(300.0, gt=0, le=3_600)
    max_event_age_secs: float = Field(3 * 24 * 3600.0, gt=0)
    request_timeout_secs: float = Field(30.0, gt=0, le=600)
    credentials_recheck_secs: float = Field(30.0, gt=0, le=3_600)
    shutdown_grace_secs: float = Field(10.0, ge=0, le=600)


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

    data_dir: Path = Path("./data")
    database_url: str | None = None
    webhook_secret: SecretStr | None = None
    admin_token: SecretStr | None = None

    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65_535)
    sandbox: bool = False
    insecure_no_auth: bool = False
    max_body_bytes: int = Field(1_048_576, ge=1_024)
    max_json_depth: int = Field(64, ge=4, le=1_000)
    dedup_window_secs: float = Field(7 * 24 * 3600.0, gt=0)
    log_format: Literal["text", "json"] = "text"

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
        )
