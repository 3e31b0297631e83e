"""webhooks: delivers `upload_webhooks` rows to customers' endpoints.

Claimed from Postgres with leases and claim tokens (`claims`), released by
the auto pass once uploads are verified (`auto`), signed the Standard
Webhooks way (`signing`), sent only to checked public addresses (`targets`,
`transport`) under an overall deadline (`delivery`), and retried on a
schedule (`schedule`). `worker` ties them together for the shared runtime.
"""

from __future__ import annotations

import logging

from ferry.config import CommonSettings, load
from ferry.workers.webhooks.settings import WebhooksSettings
from ferry.workers.webhooks.worker import WebhooksWorker


def build(common: CommonSettings) -> WebhooksWorker:
    """The webhooks worker for these settings; raises ConfigError.

    Also quiets httpx's own INFO line per request: it carries the endpoint
    URL, whose query often holds the receiver's token, and the worker logs
    one line per run, not per request.
    """
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return WebhooksWorker(common, load(WebhooksSettings))


__all__ = ["WebhooksSettings", "WebhooksWorker", "build"]
