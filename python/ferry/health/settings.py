"""Settings of the health commands, the listener and the HTTP endpoint.

`FERRY_HEALTH_*` in the environment, or the `[health]` table of the
`FERRY_CONFIG` file. The control socket's place is shared with
`supervisord.conf`, which puts it at `$FERRY_RUN_DIR/supervisor.sock`;
`FERRY_SUPERVISOR_SOCKET` overrides it for a supervisord set up otherwise.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from ferry.config import FerrySettings

# The file name supervisord.conf gives the socket inside FERRY_RUN_DIR.
SOCKET_NAME = "supervisor.sock"


class HealthSettings(FerrySettings):
    """`FERRY_HEALTH_*`, `FERRY_RUN_DIR` and `FERRY_SUPERVISOR_SOCKET`."""

    toml_table = "health"
    model_config = SettingsConfigDict(env_prefix="FERRY_HEALTH_")

    run_dir: Path = Field(
        Path("var/run"),
        validation_alias=AliasChoices("FERRY_RUN_DIR", "run_dir"),
    )
    supervisor_socket: Path | None = Field(
        None,
        validation_alias=AliasChoices("FERRY_SUPERVISOR_SOCKET", "supervisor_socket"),
    )
    # `ferry status` and `ferry health` give up on a supervisord that does not
    # answer within this long and report it unreachable.
    rpc_timeout_s: float = Field(10.0, gt=0)
    # The budget counts as nearly spent when this many failures or fewer are
    # left before the worker exits with EXIT_BUDGET.
    budget_margin_failures: int = Field(1, ge=0)
    # The listener restarts one program at most once in this long, so that a
    # worker whose heartbeat is stale for a reason a restart cannot cure is
    # not restarted in a loop.
    restart_cooldown_s: float = Field(300.0, gt=0)
    # Off unless a port is given; the endpoint always binds to loopback.
    http_port: int | None = Field(None, ge=1, le=65535)
    http_token: SecretStr | None = Field(None, validate_default=True)

    @field_validator("http_token")
    @classmethod
    def _token_when_enabled(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if info.data.get("http_port") is not None and (
            value is None or not value.get_secret_value()
        ):
            raise ValueError("is required when FERRY_HEALTH_HTTP_PORT is set")
        return value

    @property
    def socket_path(self) -> Path:
        """Where supervisord's control socket is."""
        if self.supervisor_socket is not None:
            return self.supervisor_socket
        return self.run_dir / SOCKET_NAME
