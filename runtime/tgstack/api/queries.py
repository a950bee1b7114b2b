"""The API's reads and channel writes, through PgBouncer (transaction pooling).

``ApiStore`` owns a psycopg pool (``prepare_threshold=None`` unless prepared statements are
asked for: PgBouncer < 1.22 cannot route them). Every operation is one statement in autocommit
mode (one PgBouncer transaction, nothing to roll back), watched by a client-side deadline: a
watchdog cancels whatever is still running ``statement_timeout_ms`` after it started, and again
every two seconds until it ends. That covers a slow query (the cancel reaches PostgreSQL through
PgBouncer) and, above all, PostgreSQL being down: PgBouncer then holds the query while it waits
for a server connection (up to its ``query_wait_timeout``, two minutes by default), which no
server-side timeout can end. Lists use keyset pagination: ``limit + 1`` rows are fetched to
learn whether another page follows.

Failures surface as ``StoreUnavailable`` (no connection, connection lost; retried once on a
fresh connection), ``StoreTimeout`` (statement timeout), ``StoreInvalid`` or ``StoreError``: the
names of the API for the runtime's one family of database errors (``tgstack.postgres``, whose
pool and error classification this store shares with ``tgstack.db``).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from tgstack.postgres import (
    DatabaseError,
    DatabaseTimeout,
    DatabaseUnavailable,
    Failure,
    InvalidInput,
    classify,
    connection_pool,
    first_line,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]
Connection = psycopg.Connection[DictRow]

MESSAGE_FIELDS = (
    "channel_id, message_id, telegram_date, thread_id, reply_to_msg_id, grouped_id, source,"
    " message_type, text, caption, media_type, media_refs, edit_date, edit_count, status,"
    " processing_state, processed_at, last_error, received_at, published_at, deleted_at,"
    " metadata"
)
# The publish status and time come from the outbox unless the row carries legacy ones
# (sql/050_publish_outbox.sql): the gateway records confirmations there, not on the row.
_STATUS = "telegram_gateway.publish_status(m.status, m.published_at, o.published_at)"
_MESSAGE_EXPRESSIONS = {
    "status": f"{_STATUS} AS status",
    "published_at": "coalesce(m.published_at, o.published_at) AS published_at",
}
_MESSAGE_SELECT = ", ".join(
    _MESSAGE_EXPRESSIONS.get(name.strip(), f"m.{name.strip()}")
    for name in MESSAGE_FIELDS.split(",")
)
_OUTBOX_JOIN = (
    " LEFT JOIN telegram_gateway.message_outbox o ON o.channel_id = m.channel_id"
    " AND o.message_id = m.message_id AND o.telegram_date = m.telegram_date"
)
# The same expression as the trigram index of sql/020_api.sql (the function is inlined).
_SEARCH = "telegram_gateway.message_search_text(m.text, m.caption) ILIKE %(pattern)s"

_CHANNEL_SELECT = (
    "SELECT c.channel_id, c.title, c.username, c.is_active, c.created_at, c.updated_at,"
    " cur.last_message_id, cur.last_message_date, cur.last_backfill_at"
    " FROM telegram_gateway.channels c"
    " LEFT JOIN telegram_gateway.channel_cursors cur ON cur.channel_id = c.channel_id"
)

_SIGNAL_DATE = "coalesce(s.telegram_date, s.created_at)"
_SIGNAL_SELECT = (
    "SELECT s.id, s.channel_id, s.message_id, s.telegram_date, s.asset, s.signal_type,"
    " s.buy_min, s.buy_max, s.target_1, s.target_2, s.target_final, s.stop, s.raw_text,"
    " s.status, s.current_stop, s.result, s.status_changed_at,"
    f" s.created_at, s.updated_at, s.retired_at, {_SIGNAL_DATE} AS signal_date"
    " FROM tp_capital.signals s"
)
ANY_TARGET = "target"
"""The status filter's value for any target_N."""
_EVENT_SELECT = (
    "SELECT e.id, e.channel_id, e.message_id, e.telegram_date, e.kind, e.asset, e.target,"
    " e.stop, e.stop_ref, e.result, e.linked_by, e.raw_text, e.retired_at"
    " FROM tp_capital.signal_events e"
)
_REVIEW_SELECT = (
    "SELECT r.id, r.channel_id, r.message_id, r.telegram_date, r.asset, r.missing, r.raw_text"
    " FROM tp_capital.signal_reviews r"
)


StoreError = DatabaseError
"""A database operation failed; the message starts with the operation's name."""
StoreUnavailable = DatabaseUnavailable
"""No usable database connection (PostgreSQL or PgBouncer down or unreachable)."""
StoreTimeout = DatabaseTimeout
"""The statement ran past the API's statement timeout."""
StoreInvalid = InvalidInput
"""The database refused the input (a value out of range that validation let through)."""


class StoreConflict(DatabaseError):
    """A create hit an existing row."""


@dataclass(frozen=True, slots=True)
class MessageQuery:
    channel_id: int | None = None
    statuses: tuple[str, ...] = ()
    processing_states: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None  # an ILIKE pattern (params.like_pattern)
    include_deleted: bool = False
    after: tuple[datetime, int, int] | None = None  # the cursor's key
    limit: int = 50


@dataclass(frozen=True, slots=True)
class SignalQuery:
    channel_id: int | None = None
    asset: str | None = None
    status: str | None = None  # a status, or "target" for any target_N
    since: datetime | None = None
    until: datetime | None = None
    include_retired: bool = False
    after: tuple[datetime, int, int] | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class EventQuery:
    signal_id: int
    include_retired: bool = False
    after: tuple[datetime, int, int] | None = None  # (telegram_date, channel_id, message_id)
    limit: int = 50


@dataclass(frozen=True, slots=True)
class ReviewQuery:
    channel_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    after: tuple[datetime, int, int] | None = None
    limit: int = 50


class ApiStore:
    """The database side of the API: a pool and one method per operation."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 3.0,
        connect_timeout: int = 3,
        statement_timeout_ms: int = 5000,
        prepared_statements: bool = False,
        name: str = "tgstack-api",
    ) -> None:
        self._deadline = statement_timeout_ms / 1000
        self._watchdog = Watchdog()
        # No check on checkout: behind PgBouncer it could wait for minutes while PostgreSQL
        # is down, out of the watchdog's reach. A lost connection is retried instead.
        self._pool: ConnectionPool[Connection] = connection_pool(
            conninfo,
            psycopg.Connection[DictRow],
            name=name,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            connect_timeout=connect_timeout,
            prepared_statements=prepared_statements,
            row_factory=dict_row,
            application_name="tgstack-api",
        )

    # Lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        """Start the pool without waiting: the API answers (503) while the database is down."""
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()
        self._watchdog.stop()

    def ping(self, timeout: float = 2.0) -> tuple[bool, str | None]:
        """(reachable, error) for /health: one ``SELECT 1`` within ``timeout``, never raises."""
        try:
            with (
                self._pool.connection(timeout=timeout) as conn,
                self._watchdog.watching(conn, timeout),
            ):
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error as exc:
            return False, first_line(exc)
        return True, None

    # Messages -------------------------------------------------------------------------------

    def list_messages(self, query: MessageQuery) -> list[Row]:
        where: list[str] = []
        params: dict[str, Any] = {"limit": query.limit + 1}
        if query.channel_id is not None:
            where.append("m.channel_id = %(channel_id)s")
            params["channel_id"] = query.channel_id
        if query.statuses:
            where.append(f"{_STATUS} = ANY(%(statuses)s)")
            params["statuses"] = list(query.statuses)
        if query.processing_states:
            where.append("m.processing_state = ANY(%(states)s)")
            params["states"] = list(query.processing_states)
        if query.since is not None:
            where.append("m.telegram_date >= %(since)s")
            params["since"] = query.since
        if query.until is not None:
            where.append("m.telegram_date < %(until)s")
            params["until"] = query.until
        if not query.include_deleted:
            where.append("m.deleted_at IS NULL")
        if query.text is not None:
            where.append(_SEARCH)
            params["pattern"] = query.text
        if query.after is not None:
            where.append(
                "(m.telegram_date, m.channel_id, m.message_id) < (%(a_date)s, %(a_ch)s, %(a_id)s)"
            )
            params["a_date"], params["a_ch"], params["a_id"] = query.after
        sql = (
            f"SELECT {_MESSAGE_SELECT} FROM telegram_gateway.messages m{_OUTBOX_JOIN}"
            f"{_where(where)}"
            " ORDER BY m.telegram_date DESC, m.channel_id DESC, m.message_id DESC"
            " LIMIT %(limit)s"
        )
        return self._run("list_messages", _all(sql, params))

    def get_message(self, channel_id: int, message_id: int) -> Row | None:
        # Through message_keys: its key names the partition, so one partition is probed.
        sql = (
            f"SELECT {_MESSAGE_SELECT} FROM telegram_gateway.message_keys k"
            " JOIN telegram_gateway.messages m ON m.channel_id = k.channel_id"
            " AND m.message_id = k.message_id AND m.telegram_date = k.telegram_date"
            f"{_OUTBOX_JOIN}"
            " WHERE k.channel_id = %s AND k.message_id = %s"
        )
        return self._run("get_message", _one(sql, (channel_id, message_id)))

    # Channels -------------------------------------------------------------------------------

    def list_channels(self, *, is_active: bool | None, after: int | None, limit: int) -> list[Row]:
        where: list[str] = []
        params: dict[str, Any] = {"limit": limit + 1}
        if is_active is not None:
            where.append("c.is_active = %(active)s")
            params["active"] = is_active
        if after is not None:
            where.append("c.channel_id > %(after)s")
            params["after"] = after
        sql = f"{_CHANNEL_SELECT}{_where(where)} ORDER BY c.channel_id LIMIT %(limit)s"
        return self._run("list_channels", _all(sql, params))

    def get_channel(self, channel_id: int) -> Row | None:
        sql = f"{_CHANNEL_SELECT} WHERE c.channel_id = %s"
        return self._run("get_channel", _one(sql, (channel_id,)))

    def create_channel(
        self, channel_id: int, title: str | None, username: str | None, is_active: bool
    ) -> Row:
        """Insert a channel; StoreConflict when it exists (the gateway registers channels too)."""
        sql = (
            "WITH created AS ("
            " INSERT INTO telegram_gateway.channels (channel_id, title, username, is_active)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (channel_id) DO NOTHING"
            " RETURNING channel_id, title, username, is_active, created_at, updated_at)"
            " SELECT c.*, NULL::bigint AS last_message_id,"
            " NULL::timestamptz AS last_message_date, NULL::timestamptz AS last_backfill_at"
            " FROM created c"
        )
        # Not retried: a lost acknowledgement would turn a successful create into a conflict.
        row = self._run(
            "create_channel", _one(sql, (channel_id, title, username, is_active)), retry=False
        )
        if row is None:
            raise StoreConflict("create_channel", f"channel {channel_id} exists")
        return row

    def update_channel(self, channel_id: int, changes: dict[str, Any]) -> Row | None:
        """Set the given columns (title, username, is_active); None when there is no channel."""
        columns = [name for name in ("title", "username", "is_active") if name in changes]
        if not columns:
            raise ValueError("update_channel: no change given")
        assignments = ", ".join(f"{name} = %({name})s" for name in columns)
        sql = (
            f"WITH changed AS (UPDATE telegram_gateway.channels SET {assignments}"
            " WHERE channel_id = %(channel_id)s"
            " RETURNING channel_id, title, username, is_active, created_at, updated_at)"
            " SELECT c.*, cur.last_message_id, cur.last_message_date, cur.last_backfill_at"
            " FROM changed c LEFT JOIN telegram_gateway.channel_cursors cur"
            " ON cur.channel_id = c.channel_id"
        )
        params = {name: changes[name] for name in columns} | {"channel_id": channel_id}
        return self._run("update_channel", _one(sql, params))

    # Signals --------------------------------------------------------------------------------

    def list_signals(self, query: SignalQuery) -> list[Row]:
        return self._run("list_signals", _all(*signals_statement(query)))

    def get_signal(self, channel_id: int, message_id: int) -> Row | None:
        sql = f"{_SIGNAL_SELECT} WHERE s.channel_id = %s AND s.message_id = %s"
        return self._run("get_signal", _one(sql, (channel_id, message_id)))

    def list_signal_events(self, query: EventQuery) -> list[Row] | None:
        """The signal's events in post order, or None when no signal has that id (a retired
        signal keeps its events)."""
        rows = self._run("list_signal_events", _all(*signal_events_statement(query)))
        if not rows:
            return None
        return [row for row in rows if row["id"] is not None]

    def list_signal_reviews(self, query: ReviewQuery) -> list[Row]:
        return self._run("list_signal_reviews", _all(*signal_reviews_statement(query)))

    # The one place that talks to the pool -----------------------------------------------------

    def _run(self, operation: str, work: Callable[[Connection], T], *, retry: bool = True) -> T:
        """Run ``work`` (one statement) under the deadline; a read (``retry``) that lost its
        connection is tried once more on a fresh one."""
        attempts = 2 if retry else 1
        for attempt in range(1, attempts + 1):
            watch: Watch | None = None
            try:
                with (
                    self._pool.connection() as conn,
                    self._watchdog.watching(conn, self._deadline) as current,
                ):
                    watch = current
                    return work(conn)
            except psycopg.Error as exc:
                failure = classify(exc)
                if failure is Failure.TIMEOUT:
                    raise StoreTimeout(operation, f"cancelled ({first_line(exc)})") from exc
                if failure is Failure.CLOSED:
                    raise StoreUnavailable(operation, "the pool is closed") from exc
                if failure is Failure.UNREACHABLE:
                    raise StoreUnavailable(operation, f"no connection ({first_line(exc)})") from exc
                if failure is Failure.INVALID:
                    raise StoreInvalid(operation, first_line(exc)) from exc
                if not failure.transient:
                    raise StoreError(operation, first_line(exc)) from exc
                # Lost, or rolled back by a deadlock: ended by the watchdog, or tried again.
                if watch is not None and watch.abandoned:
                    raise StoreTimeout(operation, "no answer within the deadline") from exc
                if attempt == attempts:
                    raise StoreUnavailable(operation, first_line(exc)) from exc
                log.warning(
                    "api_db_retry",
                    extra={"operation": operation, "error": first_line(exc)},
                )
                time.sleep(0.05)
        raise AssertionError("unreachable")  # pragma: no cover


ABANDON_AFTER = 2.0
"""Seconds after the cancel that an operation still running has its connection shut down."""


@dataclass(slots=True)
class Watch:
    """One watched operation; ``abandoned`` once the watchdog shut its connection down."""

    conn: Connection
    cancelled: bool = False
    abandoned: bool = False


class Watchdog:
    """Ends database operations that outlive their deadline (one thread for all of them).

    At the deadline it sends a cancel request (through PgBouncer to PostgreSQL: ends a slow
    query). If the operation is still running ``ABANDON_AFTER`` seconds later, typically held by
    PgBouncer waiting for a PostgreSQL that is down (PgBouncer ignores cancels of a query that
    has no server yet), it shuts the connection's socket down: the blocked read returns at once
    with an error and the pool discards the connection. ``shutdown(2)``, unlike ``close``,
    leaves the descriptor valid, so the thread inside libpq never touches a freed one.
    """

    def __init__(self) -> None:
        self._deadlines: list[tuple[float, int]] = []
        self._watched: dict[int, Watch] = {}
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    @contextlib.contextmanager
    def watching(self, conn: Connection, seconds: float) -> Iterator[Watch]:
        ident = next(self._ids)
        watch = Watch(conn)
        with self._wake:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(
                    target=self._run, name="api-db-watchdog", daemon=True
                )
                self._thread.start()
            self._watched[ident] = watch
            heapq.heappush(self._deadlines, (time.monotonic() + seconds, ident))
            self._wake.notify()
        try:
            yield watch
        finally:
            with self._wake:
                self._watched.pop(ident, None)

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        with self._wake:
            while not self._stopping:
                while self._deadlines and self._deadlines[0][1] not in self._watched:
                    heapq.heappop(self._deadlines)  # finished in time
                if not self._deadlines or self._deadlines[0][0] > time.monotonic():
                    wait = self._deadlines[0][0] - time.monotonic() if self._deadlines else None
                    self._wake.wait(wait)
                    continue
                _, ident = heapq.heappop(self._deadlines)
                watch = self._watched[ident]
                # Under the lock: the operation cannot end and hand its connection to another
                # request while the watchdog acts on it.
                if not watch.cancelled:
                    watch.cancelled = True
                    heapq.heappush(self._deadlines, (time.monotonic() + ABANDON_AFTER, ident))
                    _cancel(watch.conn)
                else:
                    watch.abandoned = True
                    _shut_down(watch.conn)


def _cancel(conn: Connection) -> None:
    log.warning("api_db_cancel", extra={"reason": "deadline passed"})
    try:
        conn.cancel_safe(timeout=1.0)
    except Exception as exc:  # the abandon step follows
        log.warning("api_db_cancel_failed", extra={"error": first_line(exc)})


def _shut_down(conn: Connection) -> None:
    log.warning("api_db_abandon", extra={"reason": "still running after the cancel"})
    with contextlib.suppress(Exception):
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)


# The signal lists' statements (module level: tests EXPLAIN them) ----------------------------------


def signals_statement(query: SignalQuery) -> tuple[str, dict[str, Any]]:
    """GET /v1/signals: newest first by (signal date, channel_id, message_id)."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": query.limit + 1}
    if query.channel_id is not None:
        where.append("s.channel_id = %(channel_id)s")
        params["channel_id"] = query.channel_id
    if query.asset is not None:
        where.append("s.asset = %(asset)s")
        params["asset"] = query.asset
    if query.status == ANY_TARGET:
        where.append("s.status LIKE 'target\\_%%'")  # '_' escaped: LIKE's wildcard
    elif query.status is not None:
        # idx_signals_status_date (sql/060) when retired signals are left out
        where.append("s.status = %(status)s")
        params["status"] = query.status
    if query.since is not None:
        where.append(f"{_SIGNAL_DATE} >= %(since)s")
        params["since"] = query.since
    if query.until is not None:
        where.append(f"{_SIGNAL_DATE} < %(until)s")
        params["until"] = query.until
    if not query.include_retired:
        where.append("s.retired_at IS NULL")
    if query.after is not None:
        # The date bound repeats the row comparison's first column: what an index whose later
        # columns run the other way (idx_signals_status_date) seeks by; it also keeps the
        # planner's estimate of a deep page right.
        where.append(
            f"{_SIGNAL_DATE} <= %(a_date)s AND"
            f" ({_SIGNAL_DATE}, s.channel_id, s.message_id) < (%(a_date)s, %(a_ch)s, %(a_id)s)"
        )
        params["a_date"], params["a_ch"], params["a_id"] = query.after
    sql = (
        f"{_SIGNAL_SELECT}{_where(where)}"
        f" ORDER BY {_SIGNAL_DATE} DESC, s.channel_id DESC, s.message_id DESC"
        " LIMIT %(limit)s"
    )
    return sql, params


def signal_events_statement(query: EventQuery) -> tuple[str, dict[str, Any]]:
    """GET /v1/signals/{id}/events in one statement: the signal's row joined to at most
    ``limit + 1`` of its events in post order (telegram_date, message_id, channel_id). No row:
    no such signal; one row of NULLs: a signal without events."""
    conditions = ["e.signal_id = s.id"]
    params: dict[str, Any] = {"id": query.signal_id, "limit": query.limit + 1}
    if not query.include_retired:
        conditions.append("e.retired_at IS NULL")  # idx_signal_events_signal
    if query.after is not None:
        conditions.append(
            "e.telegram_date >= %(a_date)s AND"
            " (e.telegram_date, e.message_id, e.channel_id) > (%(a_date)s, %(a_id)s, %(a_ch)s)"
        )
        params["a_date"], params["a_ch"], params["a_id"] = query.after
    sql = (
        f"SELECT ev.* FROM tp_capital.signals s LEFT JOIN LATERAL ({_EVENT_SELECT}"
        f" WHERE {' AND '.join(conditions)}"
        " ORDER BY e.telegram_date, e.message_id, e.channel_id LIMIT %(limit)s) ev ON true"
        " WHERE s.id = %(id)s ORDER BY ev.telegram_date, ev.message_id, ev.channel_id"
    )
    return sql, params


def signal_reviews_statement(query: ReviewQuery) -> tuple[str, dict[str, Any]]:
    """GET /v1/signals/review and `tgstack signals review`: open reviews (retired_at IS NULL,
    idx_signal_reviews_open), newest first by (telegram_date, channel_id, message_id)."""
    where = ["r.retired_at IS NULL"]
    params: dict[str, Any] = {"limit": query.limit + 1}
    if query.channel_id is not None:
        where.append("r.channel_id = %(channel_id)s")
        params["channel_id"] = query.channel_id
    if query.since is not None:
        where.append("r.telegram_date >= %(since)s")
        params["since"] = query.since
    if query.until is not None:
        where.append("r.telegram_date < %(until)s")
        params["until"] = query.until
    if query.after is not None:
        where.append(
            "r.telegram_date <= %(a_date)s AND"
            " (r.telegram_date, r.channel_id, r.message_id) < (%(a_date)s, %(a_ch)s, %(a_id)s)"
        )
        params["a_date"], params["a_ch"], params["a_id"] = query.after
    sql = (
        f"{_REVIEW_SELECT}{_where(where)}"
        " ORDER BY r.telegram_date DESC, r.channel_id DESC, r.message_id DESC LIMIT %(limit)s"
    )
    return sql, params


def _where(conditions: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _all(sql: str, params: Any) -> Callable[[Connection], list[Row]]:
    def work(conn: Connection) -> list[Row]:
        return [dict(row) for row in conn.execute(sql, params).fetchall()]

    return work


def _one(sql: str, params: Any) -> Callable[[Connection], Row | None]:
    def work(conn: Connection) -> Row | None:
        row = conn.execute(sql, params).fetchone()
        return None if row is None else dict(row)

    return work
