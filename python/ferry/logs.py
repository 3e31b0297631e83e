"""Logging set-up for the command line, and the key=value line format.

Library modules only create loggers (`logging.getLogger(__name__)`); the
handlers are configured here, once, by the command that runs. Lines carry no
colour or glyphs: supervisord writes them to files that people grep.
"""

from __future__ import annotations

import logging
import sys

LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure(level: str = "INFO") -> None:
    """Send records at `level` and above to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LINE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def kv(fields: dict[str, object]) -> str:
    """Render fields as `key=value` pairs; values with spaces are quoted."""
    parts = []
    for key, value in fields.items():
        text = "" if value is None else str(value)
        if not text or any(c.isspace() or c in '"=' for c in text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
            text = text.replace("\n", "\\n")
        parts.append(f"{key}={text}")
    return " ".join(parts)
