"""The webhooks worker: claim due rows, deliver them concurrently, record.

The runtime calls `run_once` from its run thread; the run is an asyncio
loop (`asyncio.run`) holding one Postgres connection and one httpx client.
Within a run:

- the auto pass runs whenever its interval has passed;
- rows are claimed while there is room (in flight below the global cap,
  payload bytes held below `claim_max_bytes`);
  a claim that comes back full is followed by another as soon as there is
  room, a short one by a pause;
- each row waits for a slot of its endpoint, then a global slot, then is
  attempted; rows waiting for their endpoint do not count against the
  global cap, so a dead endpoint holds only its own slots; once an endpoint
  is seen to be slow, rows beyond a few rounds of its slots are deferred,
  and a row that could not finish within its lease is released unattempted;
- outcomes are written in batches by one writer task while deliveries go on;
- the run ends once a claim came back short and every row it held is done.

On shutdown (the runtime sets `ctx.stopping`) nothing new is claimed, rows
not yet being sent are released at once, and attempts in flight get until
shortly before the shutdown deadline, after which they are cancelled and
released too: every held row is either recorded or due again. A run that
fails on a bug of ours releases the same way, except the row whose attempt
broke: it keeps its lease, so a row that breaks every run is counted toward
its attempt limit and finally failed.

The caps are per process: N processes may have N times the per-endpoint
cap in flight to one endpoint. Leases are not renewed while a row waits for
its endpoint; a row that waited too long is released unattempted instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping

import httpx

from ferry.config import CommonSettings
from ferry.logs import kv
from ferry.runtime import RunContext, RunOutcome, Schedule, Worker
from ferry.workers.webhooks import claims
from ferry.workers.webhooks.auto import auto_pass
from ferry.workers.webhooks.claims import Claim, Claimed, Limits, Outcome, Store
from ferry.workers.webhooks.delivery import (
    AttemptResult,
    attempt,
    failed_before_sending,
    request_headers,
)
from ferry.workers.webhooks.errors import SecretError
from ferry.workers.webhooks.schedule import RetryPolicy, Verdict
from ferry.workers.webhooks.settings import WebhooksSettings
from ferry.workers.webhooks.signing import Signer
from ferry.workers.webhooks.targets import TargetPolicy
from ferry.workers.webhooks.transport import CheckedTransport
from ferry.workers.webhooks.wakeup import WakeupListener

NAME = "webhooks"
# How often the run loop looks at the stop flag and the writer while it
# waits; a stop is acted on within this.
STOP_POLL_S = 0.1
# While rows are still in flight, a claim that found less than it asked for
# is followed by the next only this much later: rows become due by the clock,
# and the poll interval covers the idle case.
EMPTY_CLAIM_PAUSE_S = 1.0
# A slow endpoint may have this many rounds of its slots waiting in one
# process; more are deferred: released, and due again once that backlog
# could have cleared (this many attempt deadlines later).
ENDPOINT_BACKLOG_ROUNDS = 2
# An endpoint is slow once an attempt to it timed out, or has been in flight
# this long (or half the attempt deadline, if that is shorter); healthy
# receivers answer in well under a second.
SLOW_ATTEMPT_MAX_S = 1.0
# Rows held by one process: the global cap in flight plus this many claims
# waiting for their endpoints' slots. Bounds memory and what a process keeps
# from the others.
HOLD_CLAIMS = 2
# Time kept after an attempt for its outcome to be written before the lease
# runs out, at most; a row that cannot start with this much lease to spare
# is released instead of attempted.
WRITE_MARGIN_S = 5.0
# On shutdown, attempts in flight are cancelled this long before the
# deadline, leaving the time to write their releases.
SHUTDOWN_WRITE_MARGIN_S = 2.0
COUNTER_NAMES = (
    "claimed",
    "delivered",
    "retried",
    "failed",
    "refused",
    "in_flight",
    "promoted",
    "endpoints_disabled",
    "released",
    "superseded",
    "expired",
)

logger = logging.getLogger("ferry.webhooks")


class WebhooksWorker(Worker):
    """Delivers `upload_webhooks` rows; see the module docstring."""

    name = NAME

    def __init__(
        self,
        common: CommonSettings,
        settings: WebhooksSettings,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.common = common
        self.settings = settings
        self.schedule = Schedule(
            interval_s=settings.poll_interval_s,
            startup_delay_s=settings.startup_delay_s,
            jitter_s=settings.poll_jitter_s,
        )
        self.policy = TargetPolicy(settings.allow_networks)
        self.retry = RetryPolicy(
            schedule_s=settings.retry_schedule_s,
            jitter=settings.retry_jitter,
            retry_after_max_s=settings.retry_after_max_s,
            max_attempts=settings.max_attempts,
        )
        self.limits = Limits(
            max_window_s=settings.max_window_s,
            endpoint_disable_after_s=settings.endpoint_disable_after_s,
        )
        self.rng = rng or random.Random()
        self.totals: Counter[str] = Counter(dict.fromkeys(COUNTER_NAMES, 0))
        self.next_auto_at = 0.0
        self._wakeup: WakeupListener | None = None

    def run_once(self, ctx: RunContext) -> RunOutcome:
        """Deliver until nothing is due or a stop is asked; raises StoreError."""
        return asyncio.run(self._run(ctx))

    def counters(self) -> Mapping[str, int | float]:
        """Cumulative counters of this process, and deliveries now in flight."""
        return {name: self.totals[name] for name in COUNTER_NAMES}

    def attach(self, wake: Callable[[], None]) -> None:
        """Start the Redis wake-up listener, unless its key is empty."""
        if self.settings.wakeup_key:
            self._wakeup = WakeupListener(
                self.common.redis_url, self.settings.wakeup_key, wake
            )
            self._wakeup.start()

    def close(self) -> None:
        """Stop the wake-up listener."""
        if self._wakeup is not None:
            self._wakeup.stop()

    async def _run(self, ctx: RunContext) -> RunOutcome:
        conn = await claims.connect(self.common.database_url)
        try:
            store = Store(conn, self.limits)
            transport = CheckedTransport(
                self.policy, max_connections=self.settings.max_in_flight
            )
            async with httpx.AsyncClient(
                transport=transport,
                follow_redirects=False,
                trust_env=False,
                timeout=httpx.Timeout(self.settings.attempt_deadline_s),
            ) as client:
                run = DeliveryRun(self, ctx, store, client)
                return await run.main()
        finally:
            await conn.close()


class DeliveryRun:
    """The state of one run: rows held, tasks, slots, queued writes."""

    def __init__(
        self,
        worker: WebhooksWorker,
        ctx: RunContext,
        store: Store,
        client: httpx.AsyncClient,
    ) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.ctx = ctx
        self.store = store
        self.client = client
        self.figures: Counter[str] = Counter(dict.fromkeys(COUNTER_NAMES, 0))
        self.held: dict[int, Claimed] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.sending: set[asyncio.Task[None]] = set()
        self.global_slots = asyncio.Semaphore(self.settings.max_in_flight)
        self.endpoint_slots: dict[int, asyncio.Semaphore] = {}
        self.backlog: Counter[int] = Counter()
        self.waiting_for_endpoint = 0
        self.attempt_starts: dict[int, list[float]] = {}
        self.timed_out: set[int] = set()
        self.outcomes: list[Outcome] = []
        self.releases: list[tuple[Claimed, float]] = []
        self.changed = asyncio.Event()
        self.write_ready = asyncio.Event()
        self.closing = False
        self.crash: Exception | None = None
        self.signers: dict[tuple[str, tuple[str, ...]], Signer | SecretError] = {}

    async def main(self) -> RunOutcome:
        """Run to the end (nothing held or due, or a stop) and say what it did."""
        writer = asyncio.create_task(self._writer(), name="webhooks-writer")
        try:
            await self._loop(writer)
            await self._drain()
            if self.crash is not None:
                raise self.crash
            self.closing = True
            self.write_ready.set()
            await writer
        finally:
            await self._abort(writer)
        fields: dict[str, int | float | str] = {
            name: self.figures[name] for name in COUNTER_NAMES if name != "in_flight"
        }
        return RunOutcome(synced=self.figures["delivered"], fields=fields)

    # -- the claim loop -----------------------------------------------------

    async def _loop(self, writer: asyncio.Task[None]) -> None:
        settings = self.settings
        hold_max = settings.max_in_flight + HOLD_CLAIMS * settings.claim_batch
        next_claim_at = 0.0
        drained = False
        while not self.ctx.stopping.is_set():
            if self.crash is not None:
                raise self.crash
            if writer.done():
                writer.result()
                return
            await self._maybe_auto_pass()
            # The last claim found less than it asked for and everything it
            # took is done: what is due from now on is the next run's.
            if drained and not self.held:
                return
            now = time.monotonic()
            active = len(self.held) - self.waiting_for_endpoint
            room = hold_max - len(self.held)
            room_bytes = settings.claim_max_bytes - sum(
                len(row.body) for row in self.held.values()
            )
            if (
                active < settings.max_in_flight
                and min(room, room_bytes) > 0
                and now >= next_claim_at
            ):
                asked = min(settings.claim_batch, room)
                claim = await self.store.claim(asked, settings.lease_s, room_bytes)
                self._dispatch(claim)
                # Short of what was asked, and not because of the byte budget.
                drained = len(claim.rows) == claim.candidates < asked
                if not drained:
                    continue
                next_claim_at = time.monotonic() + EMPTY_CLAIM_PAUSE_S
                continue
            await self._wait_change()

    async def _wait_change(self) -> None:
        try:
            await asyncio.wait_for(self.changed.wait(), STOP_POLL_S)
        except TimeoutError:
            return
        self.changed.clear()

    async def _maybe_auto_pass(self) -> None:
        worker = self.worker
        if time.monotonic() < worker.next_auto_at:
            return
        worker.next_auto_at = time.monotonic() + self.settings.auto_interval_s
        result = await auto_pass(
            self.store, verify_limit_s=self.settings.verify_limit_s
        )
        self._count("promoted", result.promoted)
        self._count("expired", result.expired)
        if result.promoted or result.expired:
            logger.info(
                "auto_pass %s",
                kv(
                    {
                        "worker": NAME,
                        "promoted": result.promoted,
                        "expired": result.expired,
                    }
                ),
            )

    def _dispatch(self, claim: Claim) -> None:
        backlog_max = self.settings.max_in_flight_per_endpoint * ENDPOINT_BACKLOG_ROUNDS
        max_attempts = self.settings.max_attempts
        deferred = 0
        for row in claim.rows:
            self.held[row.webhook_id] = row
            self._count("claimed")
            if row.endpoint_disabled:
                self._queue_outcome(
                    Outcome(row, Verdict.DISABLED, None, last_error="endpoint disabled")
                )
            elif row.round_attempt > max_attempts:
                last_error = (
                    f"all {max_attempts} attempts made, the last ones lost with"
                    " processes that stopped while sending it"
                )
                self._queue_outcome(
                    Outcome(row, Verdict.EXHAUSTED, None, last_error=last_error)
                )
            elif self.backlog[row.endpoint_id] >= backlog_max and self._slow(
                row.endpoint_id
            ):
                delay_s = ENDPOINT_BACKLOG_ROUNDS * self.settings.attempt_deadline_s
                self._queue_release(row, delay_s)
                deferred += 1
            else:
                self.backlog[row.endpoint_id] += 1
                self.waiting_for_endpoint += 1
                task = asyncio.create_task(self._deliver(row, claim.lease_ends))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        if claim.rows:
            logger.debug(
                "claimed %s",
                kv({"worker": NAME, "rows": len(claim.rows), "deferred": deferred}),
            )
        self.ctx.progress()

    # -- one delivery -------------------------------------------------------

    def _slow(self, endpoint_id: int) -> bool:
        if endpoint_id in self.timed_out:
            return True
        threshold = min(SLOW_ATTEMPT_MAX_S, self.settings.attempt_deadline_s / 2)
        now = time.monotonic()
        starts = self.attempt_starts.get(endpoint_id, ())
        return any(now - started > threshold for started in starts)

    async def _deliver(self, row: Claimed, lease_ends: float) -> None:
        deadline_s = self.settings.attempt_deadline_s
        latest_start = lease_ends - deadline_s - min(WRITE_MARGIN_S, deadline_s)
        waiting = True
        try:
            async with self._endpoint_slot(row.endpoint_id):
                waiting = False
                self.waiting_for_endpoint -= 1
                async with self.global_slots:
                    if time.monotonic() > latest_start:
                        self._queue_release(row, 0.0)
                        return
                    result = await self._attempt(row)
        except asyncio.CancelledError:
            self._queue_release(row, 0.0)
            raise
        except Exception as exc:
            # A bug of ours, not the receiver's doing: the run fails, and the
            # row keeps its lease and comes back when it runs out.
            self.crash = exc
            self.changed.set()
            return
        finally:
            if waiting:
                self.waiting_for_endpoint -= 1
            self.backlog[row.endpoint_id] -= 1
        if result.error in ("timeout", "body_timeout"):
            self.timed_out.add(row.endpoint_id)
        self._queue_outcome(self._judge(row, result))

    def _endpoint_slot(self, endpoint_id: int) -> asyncio.Semaphore:
        slot = self.endpoint_slots.get(endpoint_id)
        if slot is None:
            slot = asyncio.Semaphore(self.settings.max_in_flight_per_endpoint)
            self.endpoint_slots[endpoint_id] = slot
        return slot

    async def _attempt(self, row: Claimed) -> AttemptResult:
        signer = self._signer(row)
        if isinstance(signer, SecretError):
            return failed_before_sending(signer)
        task = asyncio.current_task()
        assert task is not None, "deliveries run as tasks"
        self.sending.add(task)
        self.worker.totals["in_flight"] += 1
        started = time.monotonic()
        starts = self.attempt_starts.setdefault(row.endpoint_id, [])
        starts.append(started)
        try:
            timestamp = int(time.time())
            headers = request_headers(
                signer.headers(row.message_id, timestamp, row.body)
            )
            return await attempt(
                self.client,
                url=row.url,
                body=row.body,
                headers=headers,
                deadline_s=self.settings.attempt_deadline_s,
                body_cap_bytes=self.settings.body_cap_bytes,
                pool=row.endpoint_id,
            )
        finally:
            starts.remove(started)
            self.worker.totals["in_flight"] -= 1
            self.sending.discard(task)

    def _signer(self, row: Claimed) -> Signer | SecretError:
        key = (row.secret, row.old_secrets)
        signer = self.signers.get(key)
        if signer is None:
            try:
                signer = Signer.from_secrets(row.secret, row.old_secrets)
            except SecretError as exc:
                signer = exc
            self.signers[key] = signer
        return signer

    def _judge(self, row: Claimed, result: AttemptResult) -> Outcome:
        verdict = self.worker.retry.judge(result.status_code, row.round_attempt)
        delay_s = 0.0
        if verdict is Verdict.RETRY:
            delay_s = self.worker.retry.delay_s(
                row.round_attempt, result.retry_after_s, self.worker.rng
            )
        if result.error == "refused_target":
            self._count("refused")
        logger.debug(
            "attempt %s",
            kv(
                {
                    "worker": NAME,
                    "webhook": row.webhook_id,
                    "endpoint": row.endpoint_id,
                    "attempt": row.attempt,
                    "status": result.status_code,
                    "error": result.error,
                    "duration_ms": result.duration_ms,
                    "verdict": verdict.value,
                }
            ),
        )
        last_error = None if verdict is Verdict.DELIVERED else result.describe()
        return Outcome(row, verdict, result, delay_s=delay_s, last_error=last_error)

    # -- writes -------------------------------------------------------------

    def _queue_outcome(self, outcome: Outcome) -> None:
        self.held.pop(outcome.row.webhook_id, None)
        self.outcomes.append(outcome)
        self.write_ready.set()
        self.changed.set()

    def _queue_release(self, row: Claimed, delay_s: float) -> None:
        self.held.pop(row.webhook_id, None)
        self.releases.append((row, delay_s))
        self.write_ready.set()
        self.changed.set()

    async def _writer(self) -> None:
        while True:
            await self.write_ready.wait()
            self.write_ready.clear()
            outcomes, self.outcomes = self.outcomes, []
            releases, self.releases = self.releases, []
            if outcomes:
                await self._record(outcomes)
            if releases:
                await self._release(releases)
            self.ctx.progress()
            if self.closing and not self.outcomes and not self.releases:
                return

    async def _record(self, outcomes: list[Outcome]) -> None:
        recorded = await self.store.record(outcomes)
        self._count("delivered", recorded.delivered)
        self._count("retried", recorded.retried)
        self._count("failed", recorded.failed)
        self._count("superseded", recorded.superseded)
        self._count("endpoints_disabled", len(recorded.endpoints_disabled))
        for endpoint_id in recorded.endpoints_disabled:
            logger.warning(
                "endpoint_disabled %s",
                kv(
                    {
                        "worker": NAME,
                        "endpoint": endpoint_id,
                        "action": "its webhooks fail until it is re-enabled",
                    }
                ),
            )
        if recorded.superseded:
            logger.warning(
                "claims_superseded %s",
                kv(
                    {
                        "worker": NAME,
                        "rows": recorded.superseded,
                        "action": "outcome not written; the new owner's stands",
                    }
                ),
            )

    async def _release(self, releases: list[tuple[Claimed, float]]) -> None:
        by_delay: dict[float, list[Claimed]] = {}
        for row, delay_s in releases:
            by_delay.setdefault(delay_s, []).append(row)
        for delay_s, rows in by_delay.items():
            self._count("released", await self.store.release(rows, delay_s))

    # -- the end of a run ---------------------------------------------------

    async def _drain(self) -> None:
        if not self.ctx.stopping.is_set():
            await asyncio.gather(*self.tasks, return_exceptions=True)
            return
        common = self.worker.common
        budget_s = max(
            common.shutdown_deadline_s - SHUTDOWN_WRITE_MARGIN_S,
            common.shutdown_deadline_s / 2,
        )
        deadline = time.monotonic() + budget_s
        waiting = [task for task in self.tasks if task not in self.sending]
        for task in waiting:
            task.cancel()
        in_flight = len(self.sending)
        while self.sending and time.monotonic() < deadline:
            await asyncio.wait(
                set(self.sending),
                timeout=min(STOP_POLL_S, max(deadline - time.monotonic(), 0)),
            )
        cancelled = len(self.sending)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        logger.info(
            "shutdown_drain %s",
            kv(
                {
                    "worker": NAME,
                    "released_waiting": len(waiting),
                    "in_flight": in_flight,
                    "cancelled_in_flight": cancelled,
                }
            ),
        )

    async def _abort(self, writer: asyncio.Task[None]) -> None:
        # Reached on every path; after a clean end there is nothing left. On
        # a failure, the rows whose tasks are cancelled here queue their
        # release, and they go back at once rather than waiting out their
        # lease (and then counting a lost attempt). The row whose attempt
        # failed on a bug of ours keeps its lease, so that a row which breaks
        # every run is counted toward its attempt limit and finally failed.
        for task in list(self.tasks):
            task.cancel()
        if not writer.done():
            writer.cancel()
        await asyncio.gather(*self.tasks, writer, return_exceptions=True)
        if not self.releases:
            return
        releases, self.releases = self.releases, []
        try:
            await self._release(releases)
        except Exception as exc:
            # The failure may be the database itself; the leases still end.
            logger.warning(
                "release_after_failure_failed %s",
                kv({"worker": NAME, "rows": len(releases), "error": exc}),
            )

    def _count(self, name: str, amount: int = 1) -> None:
        self.figures[name] += amount
        self.worker.totals[name] += amount
