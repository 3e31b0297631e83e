"""Ferry: background workers that move a file-upload service's state.

Counters and audit events go from Redis into Postgres; webhooks go from
Postgres out to customers. Each worker is a process run by supervisord on the
shared runtime in `ferry.runtime`.
"""

from __future__ import annotations

__version__ = "0.1.0"
