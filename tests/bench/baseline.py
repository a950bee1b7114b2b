"""The architecture tgstack replaces, run on the same PostgreSQL for side-by-side figures.

What the seed migrated away from, implemented as it worked (and as favourably to it as that
allows, so every ratio we report is a conservative one):

* **Ingest**: one autocommitted ``INSERT`` per message (a commit, so a WAL flush, each), after
  a ``SELECT`` for dedup on ``(channel_id, message_id)``. The legacy table had a uuid primary
  key and no unique index on the message key (it was partitioned on ``created_at``, which is
  how duplicates got in), so that dedup ``SELECT`` scans the table. One connection, straight
  to PostgreSQL (no PgBouncer: the old gateway did not use one).
* **Polling**: every 5 s the TP Capital worker selects unprocessed posts whose text matches the
  signal regex (``metadata ->> 'processed_by' IS NULL AND text ~* …``, no index helps either
  predicate), oldest first, 100 at a time until none is left (draining the backlog each round,
  more generous than a single page per interval); for each it parses the post with the same
  parser as tgstack, inserts the signal and marks the message, each statement autocommitted.
  No claims: several workers polling at once process the same posts (counted as duplicates).
* **No cache**: no Redis, no RabbitMQ.

Schema ``baseline`` in the run's database (``channel_id text`` as in the legacy schema).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tgstack.loadtest import machine, stats
from tgstack.loadtest.locks import LockFigures, LockWatch
from tgstack.loadtest.pacer import Pacer
from tgstack.loadtest.plan import loadtest_channels
from tgstack.loadtest.posts import PostFactory
from tgstack.loadtest.result import SUSTAINED_P99_MS
from tgstack.signals import parse_signal

POLL_INTERVAL = 5.0
POLL_LIMIT = 100
SIGNAL_REGEX = r"(ativo|papel|ticker)\s*:"

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS baseline;
CREATE TABLE IF NOT EXISTS baseline.messages (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    channel_id    text        NOT NULL,
    message_id    bigint      NOT NULL,
    source        text        NOT NULL DEFAULT 'user_client',
    message_type  text        NOT NULL DEFAULT 'text',
    text          text,
    status        text        NOT NULL DEFAULT 'received',
    telegram_date timestamptz,
    received_at   timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    metadata      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE TABLE IF NOT EXISTS baseline.signals (
    id           bigserial   PRIMARY KEY,
    channel_id   text        NOT NULL,
    message_id   bigint      NOT NULL,
    asset        text,
    signal_type  text,
    buy_min      numeric,
    buy_max      numeric,
    target_1     numeric,
    target_2     numeric,
    target_final numeric,
    stop         numeric,
    raw_text     text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
"""

DEDUP_SQL = "SELECT 1 FROM baseline.messages WHERE channel_id = %s AND message_id = %s LIMIT 1"
INSERT_SQL = (
    "INSERT INTO baseline.messages (channel_id, message_id, text, telegram_date, source)"
    " VALUES (%s, %s, %s, %s, 'user_client')"
)
POLL_SQL = (
    "SELECT id, channel_id, message_id, text FROM baseline.messages"
    " WHERE (metadata ->> 'processed_by') IS NULL AND text ~* %s"
    " ORDER BY telegram_date LIMIT %s"
)
SIGNAL_SQL = (
    "INSERT INTO baseline.signals (channel_id, message_id, asset, signal_type, buy_min, buy_max,"
    " target_1, target_2, target_final, stop, raw_text)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
MARK_SQL = (
    "UPDATE baseline.messages SET status = 'processed', updated_at = now(),"
    " metadata = metadata || jsonb_build_object('processed_by', %s::text) WHERE id = %s"
)


def connect(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(dsn, autocommit=True, prepare_threshold=None)


def reset(dsn: str) -> None:
    """Create the baseline schema (first time) and empty it."""
    with connect(dsn) as conn:
        conn.execute(SCHEMA)
        conn.execute("TRUNCATE baseline.messages, baseline.signals")


class BaselinePoller:
    """The legacy polling worker on a thread: a regex poll every ``interval`` seconds."""

    def __init__(self, dsn: str, name: str, interval: float = POLL_INTERVAL) -> None:
        self.dsn = dsn
        self.name = name
        self.interval = interval
        self.stopping = threading.Event()
        self.poll_seconds: list[float] = []
        self.signals = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(60)

    def _run(self) -> None:
        with connect(self.dsn) as conn:
            while not self.stopping.is_set():
                try:
                    self.poll_once(conn)
                except psycopg.Error:
                    self.errors += 1
                self.stopping.wait(self.interval)

    def poll_once(self, conn: psycopg.Connection[tuple[Any, ...]]) -> int:
        done = 0
        while True:
            started = time.perf_counter()
            rows = conn.execute(POLL_SQL, (SIGNAL_REGEX, POLL_LIMIT)).fetchall()
            self.poll_seconds.append(time.perf_counter() - started)
            for row_id, channel_id, message_id, text in rows:
                signal = parse_signal(text)
                if signal is not None:
                    conn.execute(
                        SIGNAL_SQL,
                        (
                            channel_id,
                            message_id,
                            signal.asset,
                            signal.signal_type,
                            signal.buy_min,
                            signal.buy_max,
                            signal.target_1,
                            signal.target_2,
                            signal.target_final,
                            signal.stop,
                            text,
                        ),
                    )
                    self.signals += 1
                conn.execute(MARK_SQL, (self.name, row_id))
                done += 1
            if len(rows) < POLL_LIMIT:
                return done


@dataclass
class BaselineResult:
    label: str
    rate: float | None
    duration: float
    pollers: int
    sent: int = 0
    send_seconds: float = 0.0
    max_sender_lag_s: float = 0.0
    stored: int = 0
    duplicate_rows: int = 0
    expected_signals: int = 0
    signals: int = 0
    unique_signals: int = 0
    drained: bool = False
    drain_seconds: float = 0.0
    aborted: bool = False
    end_to_end_ms: dict[str, Any] = field(default_factory=dict)
    ingest_ms: dict[str, Any] = field(default_factory=dict)
    end_to_end_rate: float = 0.0
    poll_query_ms: dict[str, Any] = field(default_factory=dict)
    loadavg_before: list[float] = field(default_factory=list)
    loadavg_after: list[float] = field(default_factory=list)
    locks: LockFigures | None = None

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.send_seconds if self.send_seconds else 0.0

    @property
    def lost(self) -> int:
        return self.sent - (self.stored - self.duplicate_rows)

    @property
    def duplicate_signals(self) -> int:
        return self.signals - self.unique_signals

    @property
    def missing_signals(self) -> int:
        return self.expected_signals - self.unique_signals

    def kept_pace(self) -> bool:
        """Kept pace: clean, the sender never far behind, every signal in within two polls."""
        rate = self.rate or 0.0
        return (
            self.ok
            and self.achieved_rate >= 0.97 * rate
            and self.max_sender_lag_s <= 1.0
            and self.drain_seconds <= 2 * POLL_INTERVAL + 2
        )

    def sustained(self) -> bool:
        """tgstack's definition (``tgstack.loadtest.runner``): kept pace with zero loss and an
        end-to-end p99 of at most ``SUSTAINED_P99_MS`` (a poll every 5 s rarely makes it)."""
        p99 = self.end_to_end_ms.get("p99")
        return self.kept_pace() and p99 is not None and p99 <= SUSTAINED_P99_MS

    @property
    def ok(self) -> bool:
        return (
            self.drained
            and not self.aborted
            and self.lost == 0
            and self.duplicate_rows == 0
            and self.duplicate_signals == 0
            and self.missing_signals == 0
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "rate": self.rate,
            "duration": self.duration,
            "pollers": self.pollers,
            "ok": self.ok,
            "sent": self.sent,
            "send_seconds": round(self.send_seconds, 3),
            "achieved_send_rate": round(self.achieved_rate, 1),
            "end_to_end_rate": round(self.end_to_end_rate, 1),
            "max_sender_lag_s": round(self.max_sender_lag_s, 3),
            "stored": self.stored,
            "lost": self.lost,
            "duplicate_rows": self.duplicate_rows,
            "expected_signals": self.expected_signals,
            "signals": self.signals,
            "duplicate_signals": self.duplicate_signals,
            "missing_signals": self.missing_signals,
            "drained": self.drained,
            "drain_seconds": round(self.drain_seconds, 3),
            "aborted": self.aborted,
            "sustained": self.sustained(),
            "kept_pace": self.kept_pace(),
            "locks": None if self.locks is None else self.locks.as_dict(),
            "end_to_end_signals_ms": self.end_to_end_ms,
            "ingest_ms": self.ingest_ms,
            "poll_query_ms": self.poll_query_ms,
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
        }


def run(
    dsn: str,
    *,
    label: str,
    rate: float | None,
    duration: float = 30.0,
    count: int | None = None,
    channels: int = 3,
    pollers: int = 1,
    poll_interval: float = POLL_INTERVAL,
    signal_share: float = 0.3,
    seed: int = 1,
    drain_timeout: float | None = None,
    abort_lag: float | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> BaselineResult:
    """The same posts as a tgstack load test, through the legacy path."""
    reset(dsn)
    total = count if count is not None else max(1, round((rate or 0) * duration))
    result = BaselineResult(label, rate, duration, pollers, loadavg_before=machine.loadavg())
    factory = PostFactory(loadtest_channels(channels), {}, signal_share=signal_share, seed=seed)
    workers = [BaselinePoller(dsn, f"tp-capital-{n}", poll_interval) for n in range(pollers)]
    for worker in workers:
        worker.start()
    pacer = Pacer(rate, total)
    expected: set[tuple[str, int]] = set()
    start = time.time()
    last_report = time.monotonic()
    watch = LockWatch(dsn)
    watch.start()
    with connect(dsn) as conn:
        pacer.start()
        while not pacer.done:
            if abort_lag is not None and pacer.behind > abort_lag:
                result.aborted = True
                say(f"  baseline {label}: stopping early, {pacer.behind:.1f} s behind schedule")
                break
            for _ in range(pacer.due()):
                record, post = factory.make()
                channel = str(record.channel_id)
                # the legacy dedup: a SELECT, then the INSERT, each its own transaction
                if conn.execute(DEDUP_SQL, (channel, record.message_id)).fetchone() is None:
                    conn.execute(
                        INSERT_SQL, (channel, record.message_id, record.text, record.telegram_date)
                    )
                if post.is_signal:
                    expected.add((channel, record.message_id))
                pacer.record(1)
                result.max_sender_lag_s = max(result.max_sender_lag_s, pacer.behind)
                if time.monotonic() - last_report >= 5:
                    last_report = time.monotonic()
                    say(
                        f"  baseline {label}: {pacer.sent:,}/{total:,} sent,"
                        f" behind schedule {pacer.behind:.2f} s"
                    )
            pacer.wait()
    result.send_seconds = time.time() - start
    result.sent = pacer.sent
    result.expected_signals = len(expected)
    # Drained: every signal post has its signal (the poll interval, twice, plus slack).
    timeout = drain_timeout if drain_timeout is not None else 2 * poll_interval + 10
    drain_started = time.monotonic()
    with connect(dsn) as conn:
        while time.monotonic() - drain_started < timeout:
            row = conn.execute(
                "SELECT count(DISTINCT (channel_id, message_id)) FROM baseline.signals"
            ).fetchone()
            if row is not None and int(row[0]) >= len(expected):
                result.drained = True
                break
            time.sleep(0.2)
        result.drain_seconds = time.monotonic() - drain_started
    for worker in workers:
        worker.stop()
    watch.stop_sampling()
    _account(dsn, result, start)
    result.poll_query_ms = stats.summary_ms([s for w in workers for s in w.poll_seconds])
    result.locks = watch.finish()
    result.loadavg_after = machine.loadavg()
    return result


def _account(dsn: str, result: BaselineResult, start: float) -> None:
    with connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) - count(DISTINCT (channel_id, message_id))"
            " FROM baseline.messages"
        ).fetchone()
        assert row is not None
        result.stored, result.duplicate_rows = int(row[0]), int(row[1])
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (channel_id, message_id)) FROM baseline.signals"
        ).fetchone()
        assert row is not None
        result.signals, result.unique_signals = int(row[0]), int(row[1])
        latencies = conn.execute(
            "SELECT extract(epoch FROM min(s.created_at) - m.telegram_date)::float8,"
            " extract(epoch FROM min(s.created_at))::float8"
            " FROM baseline.signals s JOIN baseline.messages m"
            " ON m.channel_id = s.channel_id AND m.message_id = s.message_id"
            " GROUP BY m.channel_id, m.message_id, m.telegram_date"
        ).fetchall()
        ingest = conn.execute(
            "SELECT extract(epoch FROM received_at - telegram_date)::float8 FROM baseline.messages"
        ).fetchall()
    result.end_to_end_ms = stats.summary_ms([float(x) for x, _ in latencies])
    result.ingest_ms = stats.summary_ms([float(x) for (x,) in ingest])
    if latencies:
        span = max(float(t) for _, t in latencies) - start
        # posts whose processing is finished per second (signal posts are the poller's output)
        result.end_to_end_rate = result.sent / span if span > 0 else 0.0


# The legacy queries on 1,000,000 rows ------------------------------------------------------


def load_rows(dsn: str, rows: int, channels: int = 20, pending_share: float = 0.02) -> None:
    """``rows`` posts in the baseline table (generated in SQL), all but the newest
    ``pending_share`` marked processed, like bench_db's data set."""
    reset(dsn)
    with connect(dsn) as conn:
        conn.execute(
            """
            INSERT INTO baseline.messages (channel_id, message_id, text, telegram_date, metadata)
            SELECT (-1001649127700 - (n %% %(channels)s))::text, n / %(channels)s + 1,
                   CASE WHEN n %% 10 < 4
                        THEN 'Bom dia, pessoal! Mercado abrindo com volatilidade, atenção.'
                        ELSE E'🟢Swing Trade\\nAtivo: PETR4\\nCompra: 36,50 a 37,00\\n'
                             'Alvo 1: 38,00\\nAlvo final: 40,00\\nStop: 35,00' END,
                   now() - make_interval(secs => (%(rows)s - n) * 7.776),
                   CASE WHEN n < %(cut)s THEN '{"processed_by": "tp-capital"}'::jsonb
                        ELSE '{}'::jsonb END
              FROM generate_series(0, %(rows)s - 1) AS n
            """,
            {"rows": rows, "channels": channels, "cut": int(rows * (1 - pending_share))},
        )
        conn.execute("VACUUM ANALYZE baseline.messages")


def time_queries(
    dsn: str, rows: int, polls: int = 20, dedups: int = 40, channels: int = 20
) -> dict[str, dict[str, Any]]:
    """The legacy poll (regex, no index) and dedup (SELECT, no unique index) on the table."""
    rng = random.Random(5)
    with connect(dsn) as conn:
        conn.execute(POLL_SQL, (SIGNAL_REGEX, POLL_LIMIT)).fetchall()  # warm the cache
        poll: list[float] = []
        for _ in range(polls):
            started = time.perf_counter()
            conn.execute(POLL_SQL, (SIGNAL_REGEX, POLL_LIMIT)).fetchall()
            poll.append(time.perf_counter() - started)
        dedup: list[float] = []
        per_channel = rows // channels
        for i in range(dedups):
            channel = str(-1001649127700 - rng.randrange(channels))
            message = rng.randrange(1, per_channel) + (0 if i % 2 else 10_000_000)  # hit, miss
            started = time.perf_counter()
            conn.execute(DEDUP_SQL, (channel, message)).fetchone()
            dedup.append(time.perf_counter() - started)
    return {"poll_ms": stats.summary_ms(poll), "dedup_ms": stats.summary_ms(dedup)}
