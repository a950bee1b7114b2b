"""A load test from start to verdict: pollers up, posts paced into the stack by a sender
(``tgstack.loadtest.sender``: in process, or through the Telegram server), completions read
back from PostgreSQL, zero-loss accounting, deadlocks and lock waits
(``tgstack.loadtest.locks``), result files.

A run is *sustained* when it lost nothing, kept pace with the offered rate and its steady-state
end-to-end p99 was at most ``SUSTAINED_P99_MS`` (250 ms): a rate the stack only keeps up with
while posts wait seconds is not one it sustains. The verdict and the figures are
``tgstack.loadtest.result``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import psycopg

from tgstack.config import Settings
from tgstack.loadtest import accounting, cachestats, machine, report, stats
from tgstack.loadtest.fleet import PollerFleet, QueueProbe
from tgstack.loadtest.locks import LockFigures, LockWatch
from tgstack.loadtest.observer import Observer
from tgstack.loadtest.pacer import Pacer
from tgstack.loadtest.plan import LoadPlan
from tgstack.loadtest.posts import SentPost
from tgstack.loadtest.result import LoadResult
from tgstack.loadtest.sender import InProcessSender, Sender
from tgstack.models import MessageKey

log = logging.getLogger("tgstack.loadtest")


class LoadTestError(RuntimeError):
    """The run could not be set up (servers unreachable, pollers not starting)."""


class Progress:
    """One line a second on ``out``; reads completions from the observer meanwhile."""

    def __init__(
        self,
        observer: Observer,
        stored: Callable[[], int | None],
        pacer: Pacer,
        probe: QueueProbe | None,
        sampler: machine.ResourceSampler,
        out: TextIO | None,
    ) -> None:
        self.observer = observer
        self.stored = stored
        self.pacer = pacer
        self.probe = probe
        self.sampler = sampler
        self.out = out
        self.stopping = threading.Event()
        self.max_queue_ready: int | None = None
        self.max_sender_lag = 0.0
        self.errors = 0
        self.signals = 0
        self.lag = 0.0
        self.last_tick = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                self.tick()
            except Exception as exc:  # the observer's database hiccup must not end the run
                self.errors += 1
                log.warning("progress_round_failed", extra={"error": str(exc)})

    def current_lag(self) -> float:
        """The end-to-end lag as last measured, plus the time a measurement is overdue (a
        round stuck in a slow query on an overloaded machine must not hide a growing lag)."""
        overdue = max(0.0, time.monotonic() - self.last_tick - 2.0)
        return self.lag + overdue

    def tick(self) -> None:
        self.last_tick = time.monotonic()
        oldest = self.observer.oldest_outstanding()  # before the round: cheap, in memory
        self.lag = max(0.0, time.time() - oldest) if oldest is not None else 0.0
        finished = self.observer.poll()
        self.max_sender_lag = max(self.max_sender_lag, self.pacer.behind)
        queue = self.probe.read() if self.probe is not None else None
        if queue is not None:
            self.max_queue_ready = max(self.max_queue_ready or 0, queue[0])
        oldest = self.observer.oldest_outstanding()
        lag = max(0.0, time.time() - oldest) if oldest is not None else 0.0
        self.lag = lag
        if self.out is None:
            return
        p99 = stats.percentile([d.latency for d in finished], 99)
        self.signals += sum(1 for d in finished if d.is_signal and d.state == "processed")
        done = self.observer.done
        cpu = self.sampler.samples[-1].cpu_percent if self.sampler.samples else None
        stored = self.stored()
        parts = [
            f"[{self.pacer.elapsed():6.1f}s]",
            f"sent {self.pacer.sent:>8,}",
            "stored " + (f"{stored:>8,}" if stored is not None else "       -"),
            f"done {len(done):>8,}",
            f"signals {self.signals:>7,}",
            f"lag {lag:6.2f} s",
            "p99 " + ("    -   " if p99 != p99 else f"{p99 * 1000:7.1f} ms"),
        ]
        if queue is not None:
            parts.append(f"queue {queue[0]:>6,}")
        if cpu is not None:
            parts.append(f"cpu {cpu:3.0f}%")
        print("  ".join(parts), file=self.out, flush=True)


def _wait_for_consumers(
    probe: QueueProbe | None, fleet: PollerFleet, expected: int, timeout: float = 60.0
) -> None:
    """Until the started pollers consume (queue modes) or answer /health (poll mode)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fleet.kind == "process" and fleet.alive() < fleet.count:
            raise LoadTestError("a poller process exited at start (see its log)")
        if probe is not None:
            answer = probe.read()
            if answer is not None and answer[1] >= expected:
                return
        elif all(_answers(port) for port in fleet.ports):
            return
        time.sleep(0.2)
    raise LoadTestError(f"the pollers were not consuming within {timeout:g} s")


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
            return True
    except OSError:
        return False


def _scrape_cache(fleet: PollerFleet, settings: Settings) -> cachestats.CacheCounters | None:
    if fleet.count:
        page = fleet.scrape()
    else:  # a deployed stack: its own poller's endpoint
        page = ""
        with contextlib.suppress(OSError):
            url = f"http://{settings.poller_bind}:{settings.poller_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as response:
                page = response.read().decode()
    return cachestats.parse(page) if page else None


def _start_lock_watch(conninfo: str) -> LockWatch | None:
    """Deadlocks and lock waits from now on; None (and a warning) if they cannot be read."""
    watch = LockWatch(conninfo)
    try:
        watch.start()
    except psycopg.Error as exc:
        log.warning("lock_watch_unavailable", extra={"error": str(exc)})
        return None
    return watch


def _finish_lock_watch(watch: LockWatch | None) -> LockFigures | None:
    if watch is None:
        return None
    try:
        return watch.finish()
    except psycopg.Error as exc:
        log.warning("deadlock_count_unavailable", extra={"error": str(exc)})
        return None


def run_loadtest(
    settings: Settings,
    plan: LoadPlan,
    *,
    out: TextIO | None = sys.stderr,
    server_versions: dict[str, str | None] | None = None,
    write: bool = True,
    on_settings: Callable[[Settings], Settings] | None = None,
    sender: Sender | None = None,
) -> LoadResult:
    """Run ``plan`` against the stack ``settings`` describe; write the result files.

    ``sender`` is how posts enter the stack: in process by default, or a
    ``tgstack.loadtest.wire.WireSender`` for the path through the Telegram server.
    """
    sender = sender if sender is not None else InProcessSender()
    channels = sender.channels(plan)
    settings = _plan_settings(settings, plan, channels)
    if on_settings is not None:
        settings = on_settings(settings)
    run = _LoadRun(settings, plan, sender, channels, out)
    run.fleet.start()
    try:
        progress = run.start_sending()
        run.send_all(progress)
        run.drain(progress)
    finally:
        codes = run.stop()
    run.say("counting rows and signals")
    result = run.result(progress, codes, server_versions)
    if write and plan.out_dir is not None:
        result.files = report.write(result, plan.out_dir, plot=plan.plot, say=run.say)
    return result


def _plan_settings(settings: Settings, plan: LoadPlan, channels: list[int]) -> Settings:
    """The stack's settings with the plan's channels and tuning (poll interval, batches)."""
    updates: dict[str, Any] = {"channels": channels}
    if plan.poll_interval is not None:
        updates["poller_poll_interval_seconds"] = plan.poll_interval
        updates["poller_safety_poll_seconds"] = plan.poll_interval
    if plan.batch_size is not None:
        updates["gateway_batch_size"] = plan.batch_size
    if plan.prefetch is not None:
        updates["poller_prefetch"] = plan.prefetch
    if plan.batch_delay_ms is not None:
        updates["gateway_batch_delay_ms"] = plan.batch_delay_ms
    return settings.model_copy(update=updates)


class _LoadRun:
    """One run's pieces (observer, queue probe, pollers, sampler) and what it measured, from
    the pollers' start to the result."""

    def __init__(
        self,
        settings: Settings,
        plan: LoadPlan,
        sender: Sender,
        channels: list[int],
        out: TextIO | None,
    ) -> None:
        self.settings, self.plan, self.sender, self.out = settings, plan, sender, out
        self.conninfo = settings.require_database_url()
        self.observer = Observer(self.conninfo, channels, date_resolution=sender.date_resolution)
        self.observer.open()
        self.probe = (
            QueueProbe(settings.require_amqp_url(), settings.poller_consumer)
            if settings.amqp_url is not None
            else None
        )
        self.fleet = PollerFleet(
            settings,
            plan.pollers,
            kind=plan.poller_kind,
            mode=plan.mode,
            log_dir=plan.out_dir / "logs" if plan.out_dir is not None else None,
        )
        self.consumers_before = 0
        if self.probe is not None and plan.mode != "poll":
            answer = self.probe.read()
            self.consumers_before = answer[1] if answer is not None else 0
        self.sampler = machine.ResourceSampler()
        self.loadavg_before = machine.loadavg()
        self.say(_headline(plan, sender, channels, self.loadavg_before))
        self.signal_keys: list[MessageKey] = []
        self.sent_times: list[float] = []
        self.watch: LockWatch | None = None
        self.cache_start: cachestats.CacheCounters | None = None
        self.cache_end: cachestats.CacheCounters | None = None
        self.pacer = Pacer(plan.rate, plan.total_posts)
        self.started_at, self.start = "", 0.0
        self.send_seconds, self.aborted = 0.0, False
        self.drained, self.drain_seconds = False, 0.0

    def say(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def start_sending(self) -> Progress:
        """Wait for the pollers, start the sender, the sampler and the lock watch."""
        plan = self.plan
        queue_probe = self.probe if plan.mode != "poll" else None
        if plan.pollers:
            _wait_for_consumers(queue_probe, self.fleet, self.consumers_before + plan.pollers)
        self.sender.start(self.settings, plan)
        progress = Progress(
            self.observer,
            self.sender.stored,
            self.pacer,
            queue_probe,
            self.sampler,
            self.out if plan.progress else None,
        )
        self.sampler.start()
        self.watch = _start_lock_watch(self.conninfo)
        return progress

    def send_all(self, progress: Progress) -> None:
        """Pace every post into the stack, or stop early when posts wait too long."""
        plan, pacer = self.plan, self.pacer
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.start = time.time()
        pacer.start()
        progress.start()
        warm_until = time.monotonic() + plan.warmup
        while not pacer.done:
            lag = max(progress.current_lag(), pacer.behind)
            if plan.abort_lag is not None and lag > plan.abort_lag:
                self.aborted = True
                self.say(f"stopping early: posts wait more than {plan.abort_lag:g} s")
                break
            due = pacer.due()
            batch: list[SentPost] = self.sender.send(due) if due else []
            if batch:
                self.observer.add(batch)
                pacer.record(len(batch))
                for post in batch:
                    self.sent_times.append(post.sent_at)
                    if post.is_signal:
                        self.signal_keys.append(post.key)
            if self.cache_start is None and time.monotonic() >= warm_until:
                self.cache_start = _scrape_cache(self.fleet, self.settings)
            pacer.wait()
        self.send_seconds = time.time() - self.start

    def drain(self, progress: Progress) -> None:
        """Until every post sent is done or the drain timeout passes."""
        self.cache_end = _scrape_cache(self.fleet, self.settings)
        self.say(f"sent {self.pacer.sent:,} posts in {self.send_seconds:.1f} s; draining")
        drain_started = time.monotonic()  # from the last post sent, gateway flush included
        self.sender.finish(self.plan.drain_timeout)
        deadline = drain_started + self.plan.drain_timeout
        while time.monotonic() < deadline:
            if self.observer.oldest_outstanding() is None:
                break
            time.sleep(0.2)
        progress.stop()
        self.observer.collect_all()
        self.drained = not self.observer.outstanding
        self.drain_seconds = time.monotonic() - drain_started

    def stop(self) -> list[int | None]:
        """Stop everything the run started; the pollers' exit codes."""
        if self.watch is not None:
            self.watch.stop_sampling()
        self.sender.stop()
        codes = self.fleet.stop()
        self.sampler.stop()
        if self.probe is not None:
            self.probe.close()
        self.observer.close()
        return codes

    def result(
        self,
        progress: Progress,
        codes: list[int | None],
        server_versions: dict[str, str | None] | None,
    ) -> LoadResult:
        """Account for every post sent and gather the figures."""
        conninfo, sender = self.conninfo, self.sender
        ranges = sender.id_ranges()
        verdict = accounting.account(conninfo, ranges, sender.sent, self.signal_keys)
        path, path_problems = sender.report(conninfo)
        if self.plan.cleanup:
            accounting.cleanup(conninfo, ranges)
        locks = _finish_lock_watch(self.watch)
        cache = None
        if self.cache_end is not None:
            start = self.cache_start
            cache = self.cache_end.minus(start) if start is not None else self.cache_end
        return LoadResult(
            plan=self.plan,
            started_at=self.started_at,
            send_seconds=self.send_seconds,
            sent=sender.sent,
            done=self.observer.done,
            sent_times=self.sent_times,
            start=self.start,
            accounting=verdict,
            drained=self.drained,
            drain_seconds=self.drain_seconds,
            aborted=self.aborted,
            max_sender_lag_s=progress.max_sender_lag,
            max_queue_ready=progress.max_queue_ready,
            cache=cache,
            loadavg_before=self.loadavg_before,
            loadavg_after=machine.loadavg(),
            machine=machine.describe(server_versions),
            resources=self.sampler.summary(),
            samples=list(self.sampler.samples),
            poller_exit_codes=codes,
            gateway_batches_failed=path.pop("gateway_batches_failed", None),
            path=path,
            path_problems=path_problems,
            locks=locks,
        )


def _headline(plan: LoadPlan, sender: Sender, channels: list[int], loadavg: list[float]) -> str:
    return (
        f"loadtest {plan.label}: {plan.total_posts:,} posts "
        + (f"at {plan.rate:g}/s" if plan.rate else "as fast as possible")
        + f" ({sender.through}) over {len(channels)} channel(s), {plan.pollers}"
        f" {plan.poller_kind} poller(s) in {plan.mode} mode;"
        f" loadavg {' '.join(f'{x:.2f}' for x in loadavg)}"
    )


def default_out_dir(label: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("loadtest-results") / f"{label}-{stamp}"
