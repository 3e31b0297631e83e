"""Configuration from the environment and an optional TOML file.

Every setting has an environment name: `REDIS_URL`, `DATABASE_URL` and
`FERRY_STATE_DIR` for the shared ones, `FERRY_<SETTING>` for the rest of the
shared runtime, and `FERRY_<WORKER>_<SETTING>` for a worker's own (the unit
is part of the name: `FERRY_QUOTA_SYNC_INTERVAL_S`). The file named by
`FERRY_CONFIG` holds the same settings in lower case: shared ones at the top
level, a worker's in its table (`[quota_sync]`). The environment wins over
the file, the file over the defaults.

A bad setting raises `ConfigError` whose message is one line naming the
environment variable, the value and what is expected.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ferry.errors import ConfigError

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

S = TypeVar("S", bound="FerrySettings")


class FerrySettings(BaseSettings):
    """Base of every settings class: environment first, then the TOML file."""

    # The TOML table holding this class's settings; None for the top level.
    toml_table: ClassVar[str | None] = None

    model_config = SettingsConfigDict(
        env_prefix="FERRY_", extra="ignore", frozen=True, populate_by_name=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        table = _toml_table(cls.toml_table)
        return (
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, init_kwargs=table),
        )

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets `field`."""
        info = cls.model_fields[field]
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            first = alias.choices[0]
            if isinstance(first, str):
                return first
        if isinstance(alias, str):
            return alias
        prefix = cls.model_config.get("env_prefix", "")
        return f"{prefix}{field}".upper()


class CommonSettings(FerrySettings):
    """Settings every worker shares."""

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
    )
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
    )
    state_dir: Path = Field(
        Path("var/state"),
        validation_alias=AliasChoices("FERRY_STATE_DIR", "state_dir"),
    )
    # supervisord gives stopwaitsecs = 30 for every program; it must exceed
    # this deadline so that an overrun is reported by Ferry, not SIGKILLed.
    shutdown_deadline_s: float = Field(25.0, gt=0)
    # A run fails the budget when this many of the last `error_window_runs`
    # runs failed; one success does not reset it.
    error_budget_failures: int = Field(5, ge=1)
    error_window_runs: int = Field(10, ge=1)
    # Idle processes rewrite their stats file this often; the health check
    # calls a heartbeat stale after `heartbeat_stale_s`.
    heartbeat_s: float = Field(5.0, gt=0)
    heartbeat_stale_s: float = Field(60.0, gt=0)
    log_level: str = "INFO"
    # Name of this process for stats files: supervisord's process name when
    # it runs us, else the worker's name.
    instance: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "FERRY_INSTANCE", "SUPERVISOR_PROCESS_NAME", "instance"
        ),
    )
    process_num: int = Field(0, ge=0)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(REDIS_SCHEMES):
            schemes = ", ".join(REDIS_SCHEMES)
            raise ValueError(f"must start with one of {schemes}")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(POSTGRES_SCHEMES):
            raise ValueError("must start with postgresql:// or postgres://")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level


def load(cls: type[S]) -> S:
    """Read settings of class `cls`.

    Raises `ConfigError` with one line naming the first bad setting.
    """
    try:
        return cls()
    except ValidationError as exc:
        raise ConfigError(_describe(cls, exc)) from None


def _describe(cls: type[FerrySettings], exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else "?"
    name = cls.env_name(field) if field in cls.model_fields else field.upper()
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if error["type"] == "missing":
        return f"{name} is required"
    return f"{name} {message}, got {value!r}"


def _toml_table(table: str | None) -> dict[str, Any]:
    path = os.environ.get("FERRY_CONFIG")
    if not path:
        return {}
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(
            f"FERRY_CONFIG names {path!r}, which cannot be read: {exc.strerror}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"FERRY_CONFIG file {path!r} is not TOML: {exc}") from None
    if table is None:
        return {k: v for k, v in document.items() if not isinstance(v, dict)}
    section = document.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"FERRY_CONFIG file {path!r}: [{table}] must be a table")
    return section
