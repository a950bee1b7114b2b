"""The gateway's commands: the long-running ``tgstack gateway`` service, replay and outbox flush.

``run_gateway`` is the long-running ``tgstack gateway`` service (the spool source runs as
``tgstack.gateway.spool``); ``run_replay`` feeds a JSONL file through the same pipeline and
returns a summary. What they are built from (store, cache, publisher → pipeline, relay) is
``tgstack.gateway.wiring``.

The service's catch-up loop backfills every channel each ``gateway_backfill_interval_seconds``,
and at once when the client's ``LinkWatch`` asks for it (a reconnect, the end of a FloodWait on
Telethon's own getDifference, the live queue drained after an overflow): then it also asks
Telethon for the difference first. Channels whose new posts the full queue refused
(tgstack.gateway.backpressure) are backfilled first: their refused posts are holes above the
watermark; while the queue overflows no round runs (the database is down: it could store
nothing). After the first round at start, after each catch-up and every
``gateway_reconcile_interval_seconds`` it reconciles every channel's recent window, always
right after a backfill round, so the holes are filled first and the two never ask Telegram at
the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tgstack import metrics
from tgstack.config import Settings
from tgstack.gateway.backpressure import Overflow
from tgstack.gateway.catchup import LinkWatch
from tgstack.gateway.client import build_client, session_path
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.flood import FloodPolicy, HistoryGate
from tgstack.gateway.outbox import OutboxRelay
from tgstack.gateway.pipeline import BatchingWorker, BatchStats
from tgstack.gateway.replay import RejectedLine, read_events
from tgstack.gateway.telethon_source import (
    BackfillPolicy,
    GatewayFatal,
    TelethonSource,
    explain_fatal,
)
from tgstack.gateway.wiring import Components, build_pipeline, build_relay, components
from tgstack.health_server import HealthServer

log = logging.getLogger("tgstack.gateway")


# Replay ------------------------------------------------------------------------------------


@dataclass
class ReplaySummary(BatchStats):
    """The pipeline's totals plus what only a replay knows: lines read, time, rejections."""

    read: int = 0
    seconds: float = 0.0
    rejections: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "edits": self.edits,
            "deletes": self.deletes,
            "rejected": self.rejected,
            "published": self.published,
            "unpublished": self.unpublished,
            "seconds": round(self.seconds, 3),
            "messages_per_second": round(self.rate, 1),
        }


class RateLimiter:
    """Spaces calls to at most ``rate`` per second (no limit when rate is None)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next_at > now:
            time.sleep(self.next_at - now)
        self.next_at = max(self.next_at, now) + self.interval


def run_replay(
    settings: Settings,
    path: Path,
    *,
    rate: float | None = None,
    progress: Any = None,
    max_rejections_listed: int = 50,
) -> ReplaySummary:
    summary = ReplaySummary()
    limiter = RateLimiter(rate)
    started = time.monotonic()
    with components(settings, source="replay") as parts:
        worker = BatchingWorker(
            build_pipeline(parts),
            batch_size=settings.gateway_batch_size,
            max_delay=settings.gateway_batch_delay_ms / 1000,
        )
        worker.start()
        try:
            for item in read_events(path):
                if isinstance(item, RejectedLine):
                    summary.rejected += 1
                    metrics.GATEWAY_REJECTED.labels("replay").inc()
                    log.warning(
                        "replay_line_rejected",
                        extra={"line": item.line_number, "reason": item.reason},
                    )
                    if len(summary.rejections) < max_rejections_listed:
                        summary.rejections.append(str(item))
                    continue
                limiter.wait()
                worker.submit(
                    MessageEvent(item.kind, item.channel_id, item.message_ids, item.record)
                )
                summary.read += 1
                if progress is not None and summary.read % 10_000 == 0:
                    progress(summary.read, worker.pending)
        finally:
            finished = worker.stop(timeout=300)
        totals = worker.totals
        if not finished:
            log.error("replay_incomplete")
    summary.read += summary.rejected
    summary.add(totals)  # DB rejections join the rejected lines
    summary.seconds = time.monotonic() - started
    return summary


def flush_outbox(settings: Settings) -> dict[str, int]:
    with components(settings, source="outbox") as parts:
        if parts.publisher is None:
            from tgstack.config import ConfigError

            raise ConfigError("TGSTACK_AMQP_URL: is required to flush the outbox but not set")
        stats = OutboxRelay(parts.database, parts.publisher, min_age_seconds=0).run_once()
    return {"published": stats.published, "failed": stats.failed, "remaining": stats.remaining}


# The long-running gateway ------------------------------------------------------------------


def make_client(settings: Settings, watch: LinkWatch, flood: FloodPolicy | None = None) -> Any:
    if not session_path(settings).exists():
        raise GatewayFatal(
            f"no Telegram session at {session_path(settings)}; "
            "run `tgstack login` once as the service user"
        )
    return build_client(settings, gateway=True, watch=watch, flood=flood)


def count_flood_wait(seconds: float, during: str) -> None:
    metrics.GATEWAY_FLOOD_WAIT_SECONDS.inc(seconds)


def build_flood_policy(settings: Settings) -> FloodPolicy:
    """The account's FloodWait policy, shared by the client and the source."""
    gate = HistoryGate(settings.gateway_history_rate, settings.gateway_history_burst)
    return FloodPolicy(
        max_waits=settings.gateway_flood_max_waits, gate=gate, observer=count_flood_wait
    )


def show_link(up: bool) -> None:
    """The connected gauge follows the link as it drops and comes back, not only /health."""
    metrics.GATEWAY_CONNECTED.set(1 if up else 0)


class GatewayService:
    def __init__(
        self,
        settings: Settings,
        parts: Components,
        client: Any,
        watch: LinkWatch | None = None,
        flood: FloodPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.parts = parts
        self.client = client
        # A client built without a watch (a stand-in) never asks for a catch-up.
        self.watch = watch or LinkWatch(on_flood_wait=count_flood_wait)
        state_dir = settings.gateway_state_path()
        try:
            self.overflow = Overflow(state_dir).load()
        except OSError as exc:
            raise GatewayFatal(
                f"TGSTACK_GATEWAY_STATE_DIR: cannot read the gateway's state in {state_dir} "
                f"({exc}); it holds edits and deletions not applied yet: fix, do not delete"
            ) from exc
        self.worker = BatchingWorker(
            build_pipeline(parts),
            batch_size=settings.gateway_batch_size,
            max_delay=settings.gateway_batch_delay_ms / 1000,
            limit=settings.gateway_queue_limit,
            overflow=self.overflow,
            on_drained=self._queue_drained,
        )
        self.flood = flood or build_flood_policy(settings)
        if self.flood.gate is not None:
            self.flood.gate.room = self.worker.has_room  # history reads wait for room
        self.source = TelethonSource(
            client,
            settings.require_channels(),
            self._submit,
            store=parts.database,
            policy=BackfillPolicy(
                depth=settings.gateway_backfill_depth,
                reconcile_window=settings.gateway_reconcile_window,
            ),
            flood=self.flood,  # its observer counts the waits
        )
        self.relay = build_relay(parts, settings)
        self.health = HealthServer(settings.gateway_bind, settings.gateway_port, self.check)
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Healthy only once the session is verified and every channel resolved: a connected
        # socket alone says nothing about a revoked session or a channel the account left.
        self._source_started = False

    def _submit(self, event: MessageEvent) -> None:
        if event.record is not None and event.record.source == "backfill":
            metrics.GATEWAY_BACKFILL.labels(str(event.channel_id)).inc()
        self.worker.submit(event)

    def _queue_drained(self) -> None:
        """Called by the ingest thread once an overflow is over: backfill what was refused."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.watch.request_catch_up, "ingest queue drained")

    def request_stop(self) -> None:
        """Stop as SIGTERM does; safe to call from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    def check(self) -> tuple[bool, dict[str, Any]]:
        # is_connected() stays true while Telethon reconnects; the watch knows the link is down.
        telegram = (
            self._source_started and bool(self.client.is_connected()) and not self.watch.down
        )
        database = self.parts.database.ping()
        metrics.GATEWAY_CONNECTED.set(1 if telegram else 0)
        return telegram and database, {
            "account": self.settings.gateway_account,
            "telegram_connected": telegram,
            "source_started": self._source_started,
            "database": database,
            "pending_events": self.worker.pending,
            "queue_overflowing": self.worker.overflowing,
            "spilled_events": len(self.overflow.spill),
            "channels_to_backfill": sorted(self.overflow.marks.pending()),
        }

    async def run(self) -> None:
        metrics.GATEWAY_ACCOUNT.labels(self.settings.gateway_account).set(1)
        self.health.start()
        self.worker.start()
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stopping.set)
        try:
            await self.source.start()
            self._source_started = True
            metrics.GATEWAY_CONNECTED.set(1)
            if self.relay is not None:
                self.relay.start()
            backfill = asyncio.create_task(self._backfill_forever())
            # Public API: it raises what ended Telethon's update loop (a revoked session).
            disconnected = asyncio.ensure_future(self.client.run_until_disconnected())
            stopping = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait(
                {disconnected, stopping, backfill}, return_when=asyncio.FIRST_COMPLETED
            )
            backfill.cancel()
            if backfill in done:
                backfill.result()  # the backfill loop ends only by raising GatewayFatal
            if disconnected in done and not self._stopping.is_set():
                error = disconnected.exception()
                explanation = explain_fatal(error) if error is not None else None
                raise GatewayFatal(explanation or f"Telegram connection ended: {error}")
            disconnected.cancel()
        finally:
            metrics.GATEWAY_CONNECTED.set(0)
            await self._shutdown()

    async def _backfill_forever(self) -> None:
        reasons: set[str] = set()
        reconcile = self.settings.gateway_reconcile_window > 0
        backfill_every = self.settings.gateway_backfill_interval_seconds
        reconcile_at = time.monotonic()  # due after the first round
        while True:
            try:
                if self.worker.overflowing:
                    log.info("backfill_postponed", extra={"reason": "ingest_queue_overflowing"})
                else:
                    await self._backfill_marked()
                    if reasons:
                        log.info("catching_up", extra={"reasons": sorted(reasons)})
                        fetched = await self.source.catch_up()
                        reconcile_at = time.monotonic()  # what the link missed may be edits
                    else:
                        fetched = await self.source.backfill()
                    log.info("gap_backfill_round", extra={"fetched": fetched})
                    if reconcile and time.monotonic() >= reconcile_at:
                        repaired = await self.source.reconcile()
                        log.info("reconciliation_round", extra=repaired)
                        reconcile_at = (
                            time.monotonic() + self.settings.gateway_reconcile_interval_seconds
                        )
            except asyncio.CancelledError:
                raise
            except GatewayFatal:
                raise
            except Exception as exc:
                explanation = explain_fatal(exc)
                if explanation is not None:
                    raise GatewayFatal(explanation) from exc
                log.warning("gap_backfill_failed", extra={"error": str(exc)})
                # Try again at the next round, not in a loop.
                reconcile_at = max(reconcile_at, time.monotonic() + backfill_every)
            wait: float = backfill_every
            if reconcile:
                wait = max(0.0, min(wait, reconcile_at - time.monotonic()))
            reasons = await self.watch.wait(wait)

    async def _backfill_marked(self) -> None:
        """Backfill each channel whose posts the full queue refused, from its mark."""
        followed = set(self.settings.channels)
        for channel_id, (from_id, version) in sorted(self.overflow.marks.pending().items()):
            if channel_id in followed:
                log.info(
                    "refused_backfill_started",
                    extra={"channel_id": channel_id, "from_id": from_id},
                )
                await self.source.backfill_channel(channel_id)  # its holes, from the watermark
            self.overflow.marks.done(channel_id, version)

    async def _shutdown(self) -> None:
        log.info("gateway_stopping")
        self.watch.close()
        with contextlib.suppress(Exception):
            await self.client.disconnect()
        flushed = await asyncio.to_thread(self.worker.stop, 25.0)
        if self.relay is not None:
            self.relay.stop()
        self.health.stop()
        log.info("gateway_stopped", extra={"flushed": flushed, **asdict(self.worker.totals)})


def run_gateway(settings: Settings) -> None:
    if settings.gateway_source == "spool":
        from tgstack.gateway.spool import run_spool_gateway

        run_spool_gateway(settings)
        return
    watch = LinkWatch(on_flood_wait=count_flood_wait, on_link_change=show_link)
    flood = build_flood_policy(settings)
    client = make_client(settings, watch, flood)
    with components(settings, source="gateway") as parts:
        service = GatewayService(settings, parts, client, watch, flood)
        asyncio.run(service.run())
