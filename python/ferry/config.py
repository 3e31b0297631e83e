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

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    AliasChoices,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from redis import connection as redis_connection

from ferry.errors import ConfigError

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# redis-py's URL parser, the one its clients use; it carries no annotations.
parse_redis_url: Callable[[str], dict[str, Any]] = redis_connection.parse_url
INSTANCE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")

S = TypeVar("S", bound="FerrySettings")


class FerrySettings(BaseSettings):
    """Base of every settings class: environment first, then the TOML file."""

    # The TOML table holding this class's settings; None for the top level.
    toml_table: ClassVar[str | None] = None

    # inf and nan are refused: an infinite interval would pass gt=0 and leave
    # a worker that never runs again while its heartbeat looks healthy.
    model_config = SettingsConfigDict(
        env_prefix="FERRY_",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        allow_inf_nan=False,
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
        _refuse_unknown(cls, table)
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
        try:
            parse_redis_url(value)
        except ValueError as exc:
            raise ValueError(f"cannot be parsed ({exc})") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(POSTGRES_SCHEMES):
            raise ValueError("must start with postgresql:// or postgres://")
        try:
            params = conninfo_to_dict(value)
        except psycopg.Error as exc:
            raise ValueError(f"cannot be parsed ({exc})") from None
        ports = str(params.get("port", "5432")).split(",")
        if not all(port.isdigit() for port in ports):
            raise ValueError(f"has a port that is not a number ({params['port']})")
        return value

    @field_validator("instance")
    @classmethod
    def _check_instance(cls, value: str | None) -> str | None:
        # It names the stats files, so it must be a plain file name.
        if value is not None and not INSTANCE_NAME.fullmatch(value):
            raise ValueError(
                "must be letters, digits, '.', '_' or '-' and not start with '.'"
            )
        return value

    @model_validator(mode="after")
    def _check_together(self) -> Self:
        if self.error_budget_failures > self.error_window_runs:
            raise ValueError(
                f"FERRY_ERROR_BUDGET_FAILURES ({self.error_budget_failures}) must"
                f" not exceed FERRY_ERROR_WINDOW_RUNS ({self.error_window_runs})"
            )
        if self.heartbeat_s >= self.heartbeat_stale_s:
            raise ValueError(
                f"FERRY_HEARTBEAT_S ({self.heartbeat_s}) must be shorter than"
                f" FERRY_HEARTBEAT_STALE_S ({self.heartbeat_stale_s}), or every"
                " idle worker looks stale"
            )
        return self

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
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        # A check across settings; its message names them.
        return message
    field = str(error["loc"][0])
    name = cls.env_name(field) if field in cls.model_fields else field.upper()
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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"FERRY_CONFIG file {path!r} is not TOML: {exc}") from None
    if table is None:
        return {k: v for k, v in document.items() if not isinstance(v, dict)}
    section = document.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"FERRY_CONFIG file {path!r}: [{table}] must be a table")
    return section


def _refuse_unknown(cls: type[FerrySettings], table: dict[str, Any]) -> None:
    # A misspelt setting in the file would otherwise be ignored in silence.
    known = set(cls.model_fields)
    for info in cls.model_fields.values():
        if isinstance(info.validation_alias, AliasChoices):
            known.update(str(c) for c in info.validation_alias.choices)
    unknown = sorted(set(table) - known)
    if unknown:
        where = f"[{cls.toml_table}]" if cls.toml_table else "its top level"
        raise ConfigError(
            f"FERRY_CONFIG file {os.environ.get('FERRY_CONFIG')!r} has no setting"
            f" {unknown[0]!r} in {where}; known: {', '.join(sorted(cls.model_fields))}"
        )


# FERRY_ variables that belong to the deployment files (supervisord.conf and
# the dev scripts) rather than to a settings class.
DEPLOYMENT_VARIABLES = frozenset(
    {
        "FERRY_CONFIG",
        "FERRY_PYTHON",
        "FERRY_LOG_DIR",
        "FERRY_RUN_DIR",
        "FERRY_REPO",
        "FERRY_DEV_DIR",
        "FERRY_DEV_PG_DATA",
        "FERRY_DEV_PRIVATE",
        "FERRY_DEV_REDIS_PORT",
        "FERRY_DEV_POSTGRES_PORT",
    }
)


def unknown_variables(
    classes: Iterable[type[FerrySettings]],
) -> list[tuple[str, str | None]]:
    """FERRY_ environment variables no settings class reads.

    Returns (name, closest known name or None) for each, so that a misspelt
    variable is reported instead of being ignored in silence.
    """
    known = set(DEPLOYMENT_VARIABLES)
    for cls in classes:
        for field, info in cls.model_fields.items():
            known.add(cls.env_name(field))
            if isinstance(info.validation_alias, AliasChoices):
                known.update(
                    str(choice)
                    for choice in info.validation_alias.choices
                    if str(choice).isupper()
                )
    unknown = sorted(
        name for name in os.environ if name.startswith("FERRY_") and name not in known
    )
    return [
        (name, next(iter(difflib.get_close_matches(name, known, n=1)), None))
        for name in unknown
    ]


def all_settings_classes() -> list[type[FerrySettings]]:
    """Every settings class defined so far, subclasses of subclasses included."""
    found: list[type[FerrySettings]] = []
    pending: list[type[FerrySettings]] = [FerrySettings]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            found.append(sub)
            pending.append(sub)
    return found
