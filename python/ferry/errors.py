"""Ferry's exceptions.

    FerryError
     +-- ConfigError        bad configuration; start-up stops with its message
     +-- StoreError         Redis or Postgres failed; the run fails, the cause kept
     +-- SupervisorError    supervisord's control socket refused or failed a call

Dependencies' errors are translated where Ferry calls them, keeping the cause
(`raise StoreError(...) from exc`).
"""

from __future__ import annotations


class FerryError(Exception):
    """Base class of every error Ferry raises on purpose."""


class ConfigError(FerryError):
    """A setting is missing or malformed; the message names it and the fix."""


class StoreError(FerryError):
    """Redis or Postgres refused or lost a request."""


class SupervisorError(FerryError):
    """supervisord could not be reached, or refused an XML-RPC call."""
