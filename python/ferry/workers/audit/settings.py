"""The audit worker's settings: `FERRY_AUDIT_*` or the `[audit]` table."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from ferry.config import FerrySettings
from ferry.stores.redis import SOCKET_TIMEOUT_S


class AuditSettings(FerrySettings):
    """`FERRY_AUDIT_*`, or the `[audit]` table of the config file."""

    toml_table = "audit"
    model_config = SettingsConfigDict(env_prefix="FERRY_AUDIT_")

    stream_key: str = Field("audit:events", min_length=1)
    group: str = Field("ferry-audit", min_length=1)
    # Several hosts running audit processes need distinct names: set this per
    # host. Left unset, it is "ferry-audit-<FERRY_PROCESS_NUM>".
    consumer: str | None = Field(None, min_length=1)
    startup_delay_s: float = Field(0.0, ge=0)
    batch_size: int = Field(1000, ge=1, le=10_000)
    # How long one blocking read waits for entries. It must stay under the
    # Redis socket timeout, or an idle stream would look like a dead server.
    block_ms: int = Field(2000, ge=1, le=int(SOCKET_TIMEOUT_S * 1000) - 5000)
    # A run reads for this long, then reports one log line and starts again.
    session_s: float = Field(60.0, gt=0)
    # An entry pending this long belongs to a consumer that died: a live one
    # acknowledges its batch within seconds, or within the 25 s shutdown
    # deadline when it is stopping.
    claim_idle_ms: int = Field(60_000, ge=1)
    # How often a session looks for such entries.
    claim_interval_s: float = Field(10.0, gt=0)
    # Deliveries an entry may have before it is dead-lettered unread. Each
    # failed attempt and each crash adds one, so ten outlasts a few restarts
    # of a crashing process or a flapping database.
    max_deliveries: int = Field(10, ge=1)
    # Acknowledged entries older than this are trimmed; 0 keeps them.
    trim_max_age_s: float = Field(86_400.0, ge=0)
    # The stream is trimmed to about this many entries; 0 sets no limit.
    trim_max_len: int = Field(0, ge=0)
    trim_interval_s: float = Field(60.0, gt=0)
    # Other consumers idle this long with nothing pending are deleted (a
    # process number no longer in use); 0 never deletes one.
    consumer_idle_delete_s: float = Field(7 * 86_400.0, ge=0)

    @field_validator("claim_idle_ms")
    @classmethod
    def _check_claim_idle(cls, value: int, info: ValidationInfo) -> int:
        block_ms = info.data.get("block_ms")
        if block_ms is not None and value <= block_ms:
            raise ValueError(
                f"must exceed FERRY_AUDIT_BLOCK_MS ({block_ms} ms), or a consumer"
                " waiting on an idle stream would have its entries claimed"
            )
        return value
