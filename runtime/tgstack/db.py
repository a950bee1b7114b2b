"""PostgreSQL access for the runtime, through PgBouncer in transaction pooling mode.

``Database`` wraps a ``psycopg_pool.ConnectionPool`` and offers one method per operation on
the ``telegram_gateway`` schema; the SQL functions of ``sql/`` do the work. Connections are in
autocommit mode, each operation is one statement (so one PgBouncer transaction), and prepared
statements are off unless asked for (PgBouncer < 1.22 cannot route them).

Every operation is idempotent, so one that fails for want of a connection (or on a deadlock)
is retried a bounded number of times on a fresh connection. The pool checks a connection before
handing it out only when it has been idle for a while (``check_after_idle``): checking every
checkout costs one more PgBouncer round trip per operation, and a connection used a moment
ago is almost always good. When one turns out broken anyway, every idle connection is checked
before the retry, so a retry does not draw the next broken one; after a deadlock the pool is
left alone, as its connection is fine. (If a commit went through but its acknowledgement was
lost, the retry reports what it found: e.g. the messages as duplicates, which the outbox then
publishes.) Errors surface as ``DatabaseError`` subclasses whose message starts with the
operation's name (``tgstack.postgres``: the pool, the errors and their classification this
store shares with the API's); each operation is timed in ``tgstack_db_operation_seconds``,
retries are counted in ``tgstack_db_retries_total`` and failures in ``tgstack_db_errors_total``.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from tgstack import metrics
from tgstack.models import (
    DEFAULT_LINK_WINDOW,
    MessageKey,
    MessageRecord,
    ProcessingResult,
    StoredMessage,
    StoredPost,
    Watermark,
    sanitize_text,
)
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

__all__ = [
    "Database",
    "DatabaseError",
    "DatabaseTimeout",
    "DatabaseUnavailable",
    "IdleCheck",
    "InvalidInput",
    "UpsertResult",
    "Watermark",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """What a bulk upsert did: keys stored now, and keys that were already stored."""

    inserted: tuple[MessageKey, ...]
    duplicates: tuple[MessageKey, ...]


# The columns read back into a StoredMessage, in _stored_message's order.
MESSAGE_COLUMNS = (
    "channel_id, message_id, telegram_date, text, caption, media_type, media_refs, thread_id,"
    " reply_to_msg_id, grouped_id, edit_date, source, message_type, metadata, status,"
    " processing_state"
)
_BULK_UPSERT = "SELECT * FROM telegram_gateway.bulk_upsert_messages(%s::jsonb)"
_FETCH_UNPROCESSED = (
    f"SELECT {MESSAGE_COLUMNS} FROM telegram_gateway.get_unprocessed_messages_optimized(%s, %s)"
)
_FETCH_UNPUBLISHED = (
    f"SELECT {MESSAGE_COLUMNS} FROM telegram_gateway.get_unpublished_messages(%s, %s)"
)
_CLAIM_UNPROCESSED = (
    f"SELECT {MESSAGE_COLUMNS} FROM telegram_gateway.claim_unprocessed_messages(%s, %s, %s, %s)"
)
_MARK_PROCESSED = (
    "SELECT telegram_gateway.mark_batch_as_processed(%s::bigint[], %s::bigint[], %s, %s, %s)"
)
_MARK_PUBLISHED = "SELECT telegram_gateway.mark_batch_as_published(%s::bigint[], %s::bigint[])"
_COUNT_UNPUBLISHED = "SELECT telegram_gateway.count_unpublished()"
_UPDATE_STATUS = "SELECT telegram_gateway.upsert_message_status(%s, %s, %s)"
# The dedup check: one probe of message_keys' primary key, whatever the partition count.
MESSAGE_EXISTS_SQL = (
    "SELECT EXISTS (SELECT 1 FROM telegram_gateway.message_keys"
    " WHERE channel_id = %s AND message_id = %s)"
)
_APPLY_EDIT = (
    "SELECT telegram_gateway.apply_message_edit(%s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb)"
)
_SOFT_DELETE = "SELECT telegram_gateway.soft_delete_messages(%s, %s::bigint[])"
_CLEANUP = "SELECT telegram_gateway.cleanup_old_messages(%s)"
_RELEASE_CLAIMS = "SELECT telegram_gateway.release_expired_claims(%s)"
_REFRESH_AGGREGATES = "SELECT telegram_gateway.refresh_aggregates()"
_CHANNEL_CURSORS = "SELECT channel_id, last_message_id FROM telegram_gateway.channel_cursors"
_MARK_BACKFILLED = "SELECT telegram_gateway.mark_channel_backfilled(%s)"
_INIT_WATERMARK = "SELECT * FROM telegram_gateway.init_channel_watermark(%s, %s)"
_ADVANCE_WATERMARK = "SELECT telegram_gateway.advance_channel_watermark(%s, %s, %s::bigint[])"
_FIND_HOLES = "SELECT first_id, last_id FROM telegram_gateway.find_message_holes(%s, %s, %s)"
_WATERMARKS = "SELECT channel_id, floor_id, watermark FROM telegram_gateway.channel_watermarks"
# Through message_keys' primary key, then one messages row per key (its partition by date).
_STORED_POSTS = (
    "SELECT k.message_id, m.edit_date, m.text, m.caption, m.media_type, m.media_refs,"
    " m.deleted_at IS NOT NULL"
    " FROM telegram_gateway.message_keys k"
    " JOIN telegram_gateway.messages m ON m.channel_id = k.channel_id"
    " AND m.message_id = k.message_id AND m.telegram_date = k.telegram_date"
    " WHERE k.channel_id = %s AND k.message_id > %s AND k.message_id <= %s"
)
_CLAIM_BY_KEYS = (
    f"SELECT {MESSAGE_COLUMNS} FROM telegram_gateway.claim_messages_by_key"
    "(%s, %s::bigint[], %s::bigint[], %s)"
)
_APPLY_RESULTS = (
    "SELECT channel_id, message_id, applied"
    " FROM tp_capital.apply_processing_results(%s, %s::jsonb, %s::interval)"
)
_RETIRE_SIGNALS = "SELECT tp_capital.retire_signals_of_deleted(%s, %s::bigint[], %s::interval)"
_UNLINKED_EVENTS = (
    "SELECT count(*) FROM tp_capital.signal_events"
    " WHERE signal_id IS NULL AND retired_at IS NULL AND telegram_date > now() - interval '1 day'"
)
_POLLING_LAG = (
    "SELECT coalesce(extract(epoch FROM now() - min(received_at)), 0)"
    " FROM telegram_gateway.messages"
    " WHERE processing_state IN ('pending', 'processing') AND deleted_at IS NULL"
)


class Database:
    """A pool of connections to the tgstack database and the operations the runtime needs."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        prepared_statements: bool = False,
        timeout: float = 10.0,
        connect_timeout: int = 5,
        retry_attempts: int = 3,
        retry_backoff: float = 0.25,
        batch_size: int = 1000,
        write_parallelism: int = 2,
        check_after_idle: float = 2.0,
        name: str = "tgstack-db",
    ) -> None:
        """Configure the pool; ``open()`` (or ``with``) connects.

        ``prepared_statements`` lets psycopg prepare a query server-side from its fifth run;
        leave it off (``prepare_threshold=None``) behind PgBouncer older than 1.22 or without
        ``max_prepared_statements``. ``retry_attempts`` bounds the tries of an operation that
        lost its connection, waiting ``retry_backoff`` × 2ⁿ between them. A bulk upsert of
        more than ``batch_size`` messages writes its transactions on up to
        ``write_parallelism`` pooled connections at once. A connection idle for more than
        ``check_after_idle`` seconds is checked before it is handed out (0 checks every one).
        """
        if retry_attempts < 1:
            raise ValueError("retry_attempts must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if write_parallelism < 1:
            raise ValueError("write_parallelism must be at least 1")
        self.write_parallelism = write_parallelism
        self.retry_attempts = retry_attempts
        self.retry_backoff = retry_backoff
        self.batch_size = batch_size
        idle_check = IdleCheck(check_after_idle)
        self._pool: ConnectionPool[Connection] = connection_pool(
            conninfo,
            psycopg.Connection,
            name=name,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            connect_timeout=connect_timeout,
            prepared_statements=prepared_statements,
            check=idle_check,
            reset=idle_check.returned,
        )

    # Lifecycle ----------------------------------------------------------------------------

    def open(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start the pool; with ``wait``, fail unless ``min_size`` connections come up."""
        try:
            self._pool.open(wait=wait, timeout=timeout)
        except psycopg.OperationalError as exc:
            metrics.DB_ERRORS.labels("open").inc()
            raise DatabaseUnavailable("open", f"no connection within {timeout}s: {exc}") from exc

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def ping(self, timeout: float = 2.0) -> bool:
        """Whether a connection answers ``SELECT 1`` now (no retries, never raises)."""
        try:
            with self._pool.connection(timeout=timeout) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error:
            return False
        return True

    # Writing messages ---------------------------------------------------------------------

    def bulk_upsert(self, records: Sequence[MessageRecord]) -> UpsertResult:
        """Store the messages not stored yet, in transactions of ``batch_size`` messages.

        A message is a duplicate when its (channel_id, message_id) is stored, whatever its
        date, including a repeat within ``records`` (the first occurrence is the one stored).
        Several transactions run at once when there are several: the server does most of the
        work, and its message_keys ledger keeps concurrent writers of one message apart. On an
        error, transactions already committed stay committed: a retry reports their messages
        as duplicates.
        """
        first: dict[MessageKey, int] = {}
        for index, record in enumerate(records):
            first.setdefault(record.key, index)
        batches = _batches([records[index] for index in first.values()], self.batch_size)
        if len(batches) <= 1 or self.write_parallelism == 1:
            outcomes = [self._upsert_batch(batch) for batch in batches]
        else:
            workers = min(self.write_parallelism, len(batches))
            with ThreadPoolExecutor(workers, thread_name_prefix="bulk-upsert") as executor:
                outcomes = list(executor.map(self._upsert_batch, batches))
        stored_now = {
            MessageKey(int(channel_id), int(message_id))
            for rows in outcomes
            for channel_id, message_id, was_inserted in rows
            if was_inserted
        }
        inserted: list[MessageKey] = []
        duplicates: list[MessageKey] = []
        for index, record in enumerate(records):
            key = record.key
            if key in stored_now and first[key] == index:
                inserted.append(key)
            else:
                duplicates.append(key)
        return UpsertResult(tuple(inserted), tuple(duplicates))

    def _upsert_batch(self, batch: Sequence[MessageRecord]) -> list[tuple[Any, ...]]:
        return self._run("bulk_upsert", _fetch_all(_BULK_UPSERT, (_payload(batch),)))

    def apply_edit(self, record: MessageRecord) -> bool:
        """Apply an edit (``record.edit_date`` required); False if stale or not stored."""
        if record.edit_date is None:
            raise InvalidInput("apply_edit", f"message {record.key} has no edit_date")
        stored = _message_json(record)
        params = (
            record.channel_id,
            record.message_id,
            record.edit_date,
            stored.get("text"),
            stored.get("caption"),
            record.media_type,
            _json_or_none(record.media_refs),
            json.dumps(stored.get("metadata", {}), ensure_ascii=False),
        )
        return bool(self._run("apply_edit", _fetch_value(_APPLY_EDIT, params)))

    def soft_delete(self, channel_id: int, message_ids: Sequence[int]) -> int:
        """Mark messages deleted; returns how many were not deleted before."""
        if not message_ids:
            return 0
        params = (channel_id, list(message_ids))
        return int(self._run("soft_delete", _fetch_value(_SOFT_DELETE, params)))

    def mark_published(self, keys: Sequence[MessageKey]) -> int:
        """Record that the broker confirmed these messages; returns how many changed."""
        if not keys:
            return 0
        params = ([key.channel_id for key in keys], [key.message_id for key in keys])
        return int(self._run("mark_published", _fetch_value(_MARK_PUBLISHED, params)))

    def update_status(self, channel_id: int, message_id: int, status: str) -> bool:
        """Set the publishing status (and its timestamp); False if the message is not stored."""
        params = (channel_id, message_id, status)
        return bool(self._run("update_status", _fetch_value(_UPDATE_STATUS, params)))

    # Reading messages ---------------------------------------------------------------------

    def fetch_unprocessed(self, channel_id: int | None, limit: int = 100) -> list[StoredMessage]:
        """The oldest pending messages (of one channel, or all), oldest first."""
        rows = self._run(
            "fetch_unprocessed", _fetch_messages(_FETCH_UNPROCESSED, (channel_id, limit))
        )
        return [_stored_message(row) for row in rows]

    def fetch_unpublished(
        self, limit: int = 100, min_age_seconds: float = 30.0
    ) -> list[MessageRecord]:
        """Outbox: stored messages not published after ``min_age_seconds``, oldest first."""
        rows = self._run(
            "fetch_unpublished", _fetch_messages(_FETCH_UNPUBLISHED, (min_age_seconds, limit))
        )
        return [_stored_message(row).record for row in rows]

    def count_unpublished(self) -> int:
        """Outbox depth: stored, not deleted messages not published yet."""
        return int(self._run("count_unpublished", _fetch_value(_COUNT_UNPUBLISHED, ())))

    def message_exists(self, channel_id: int, message_id: int) -> bool:
        """The dedup check: whether (channel_id, message_id) is stored."""
        params = (channel_id, message_id)
        return bool(self._run("message_exists", _fetch_value(MESSAGE_EXISTS_SQL, params)))

    # Consumer side ------------------------------------------------------------------------

    def mark_processed(
        self,
        keys: Sequence[MessageKey],
        processed_by: str,
        state: str = "processed",
        *,
        error: str | None = None,
    ) -> int:
        """Mark messages processed/ignored/failed by a consumer; returns how many changed."""
        if not keys:
            return 0
        params = (
            [key.channel_id for key in keys],
            [key.message_id for key in keys],
            processed_by,
            state,
            error,
        )
        return int(self._run("mark_processed", _fetch_value(_MARK_PROCESSED, params)))

    def claim_unprocessed(
        self,
        consumer: str,
        *,
        limit: int = 100,
        lease_seconds: int = 300,
        channel_id: int | None = None,
    ) -> list[StoredMessage]:
        """Claim pending messages for one consumer (others skip them) for ``lease_seconds``."""
        params = (consumer, limit, lease_seconds, channel_id)
        rows = self._run("claim_unprocessed", _fetch_messages(_CLAIM_UNPROCESSED, params))
        return [_stored_message(row) for row in rows]

    def release_expired_claims(self, max_attempts: int = 3) -> int:
        """Return expired claims to pending, or fail them after ``max_attempts``."""
        return int(
            self._run("release_expired_claims", _fetch_value(_RELEASE_CLAIMS, (max_attempts,)))
        )

    # Channels -----------------------------------------------------------------------------

    def channel_cursors(self) -> dict[int, int]:
        """The highest message id stored per channel (where a backfill resumes)."""
        rows = self._run("channel_cursors", _fetch_all(_CHANNEL_CURSORS, ()))
        return {int(channel_id): int(last_id) for channel_id, last_id in rows}

    def mark_backfilled(self, channel_id: int) -> None:
        """Record the time of a channel's backfill (channel_cursors.last_backfill_at)."""
        self._run("mark_backfilled", _fetch_value(_MARK_BACKFILLED, (channel_id,)))

    # The contiguous watermark (sql/040_channel_watermarks.sql) --------------------------------

    def init_watermark(self, channel_id: int, floor: int) -> Watermark:
        """The channel's watermark, created at ``floor`` if it has none."""
        rows = self._run("init_watermark", _fetch_all(_INIT_WATERMARK, (channel_id, floor)))
        floor_id, watermark, created = rows[0]
        return Watermark(int(floor_id), int(watermark), bool(created))

    def advance_watermark(self, channel_id: int, top: int, absent: Sequence[int] = ()) -> int:
        """Record ``absent`` ids (none above ``top``, the newest id Telegram has shown) and move
        the watermark over every committed or absent id above it; returns the watermark."""
        params = (channel_id, top, list(absent))
        return int(self._run("advance_watermark", _fetch_value(_ADVANCE_WATERMARK, params)))

    def find_holes(self, channel_id: int, top: int, limit: int = 1000) -> list[tuple[int, int]]:
        """The ranges (first, last) of ids above the watermark, up to ``top``, that are neither
        stored nor known absent, oldest first."""
        rows = self._run("find_holes", _fetch_all(_FIND_HOLES, (channel_id, top, limit)))
        return [(int(first), int(last)) for first, last in rows]

    def watermarks(self) -> dict[int, Watermark]:
        """Every channel's floor and watermark."""
        rows = self._run("watermarks", _fetch_all(_WATERMARKS, ()))
        return {int(ch): Watermark(int(floor), int(mark)) for ch, floor, mark in rows}

    def stored_posts(self, channel_id: int, after: int, last: int) -> dict[int, StoredPost]:
        """The channel's stored posts with an id in (after, last], deleted ones included."""
        rows = self._run(
            "stored_posts", _fetch_all(_STORED_POSTS, (channel_id, after, last), binary=True)
        )
        return {
            int(row[0]): StoredPost(
                message_id=int(row[0]),
                edit_date=_utc(row[1]),
                text=row[2],
                caption=row[3],
                media_type=row[4],
                media_refs=row[5],
                deleted=bool(row[6]),
            )
            for row in rows
        }

    # Maintenance --------------------------------------------------------------------------

    def cleanup_old(self, days: int) -> int:
        """Remove messages older than ``days`` that no consumer still owes; returns how many."""
        return int(self._run("cleanup_old", _fetch_value(_CLEANUP, (days,))))

    def refresh_aggregates(self) -> None:
        """Refresh messages_hourly/messages_daily (a no-op under TimescaleDB policies)."""
        self._run("refresh_aggregates", _fetch_value(_REFRESH_AGGREGATES, ()))

    # The TP Capital poller ------------------------------------------------------------------

    def claim_by_keys(
        self, consumer: str, keys: Sequence[MessageKey], lease_seconds: int = 300
    ) -> list[StoredMessage]:
        """Claim these messages if pending (or their lease expired); skips ones held by others."""
        if not keys:
            return []
        params = (
            consumer,
            [key.channel_id for key in keys],
            [key.message_id for key in keys],
            lease_seconds,
        )
        rows = self._run("claim_by_keys", _fetch_messages(_CLAIM_BY_KEYS, params))
        return [_stored_message(row) for row in rows]

    def apply_processing_results(
        self,
        consumer: str,
        results: Sequence[ProcessingResult],
        link_window: timedelta = DEFAULT_LINK_WINDOW,
    ) -> list[tuple[MessageKey, bool]]:
        """Store signals, follow-ups and reviews and mark messages in one transaction, fenced
        by the consumer's claim; a follow-up naming only its asset is linked to the most
        recent open signal of the last ``link_window``.

        Returns each result's key with whether it was applied (False: the claim was lost).
        """
        if not results:
            return []
        payload = json.dumps([result.to_json() for result in results], ensure_ascii=False)
        rows = self._run(
            "apply_processing_results",
            _fetch_all(_APPLY_RESULTS, (consumer, payload, link_window)),
        )
        return [(MessageKey(int(ch), int(mid)), bool(applied)) for ch, mid, applied in rows]

    def retire_signals_of_deleted(
        self,
        channel_id: int | None = None,
        message_ids: Sequence[int] | None = None,
        link_window: timedelta = DEFAULT_LINK_WINDOW,
    ) -> int:
        """Retire the signals, follow-ups and reviews whose post was deleted (these ids, or
        every deleted post), re-deriving the signals they changed; returns the signals retired.
        """
        params = (channel_id, list(message_ids) if message_ids is not None else None, link_window)
        return int(self._run("retire_signals", _fetch_value(_RETIRE_SIGNALS, params)))

    def unlinked_signal_events(self) -> int:
        """Follow-ups of the last 24 hours stored without a signal to link them to."""
        return int(self._run("unlinked_events", _fetch_value(_UNLINKED_EVENTS, ())) or 0)

    def polling_lag_seconds(self) -> float:
        """Seconds since the oldest message still pending was received (0 when none is)."""
        return float(self._run("polling_lag", _fetch_value(_POLLING_LAG, ())) or 0.0)

    # The one place that talks to the pool ---------------------------------------------------

    def _run(self, operation: str, work: Callable[[Connection], T]) -> T:
        """Run ``work`` on a pooled connection: timed, retried on lost connections, mapped."""
        with metrics.DB_OPERATION_SECONDS.labels(operation).time():
            try:
                return self._with_retries(operation, work)
            except DatabaseError:
                metrics.DB_ERRORS.labels(operation).inc()
                raise

    def _with_retries(self, operation: str, work: Callable[[Connection], T]) -> T:
        for attempt in range(1, self.retry_attempts + 1):
            try:
                with self._pool.connection() as conn:
                    return work(conn)
            except psycopg.Error as exc:
                failure = classify(exc)
                if not failure.transient or attempt == self.retry_attempts:
                    raise _translate(operation, exc, failure, attempt) from exc
                rolled_back = failure is Failure.ROLLED_BACK
                delay = self.retry_backoff * 2 ** (attempt - 1)
                log.warning(
                    "database_retry",
                    extra={
                        "operation": operation,
                        "attempt": attempt,
                        "attempts": self.retry_attempts,
                        "reason": "rolled_back" if rolled_back else "connection_lost",
                        "error": first_line(exc),
                        "retry_in": round(delay, 2),
                    },
                )
                metrics.DB_RETRIES.labels(operation).inc()
                time.sleep(delay)
                if not rolled_back:
                    # What broke this connection (a PgBouncer or server restart) most likely
                    # broke the idle ones too, recently used or not. A deadlock broke nothing.
                    self._pool.check()
        raise AssertionError("unreachable")  # pragma: no cover


# Helpers ----------------------------------------------------------------------------------------


class IdleCheck:
    """The pool's ``check``: check a connection only when it has been idle for ``after`` s.

    ``returned`` is the pool's ``reset`` callback, so it sees every connection coming back.
    """

    def __init__(self, after: float) -> None:
        if after < 0:
            raise ValueError("check_after_idle must not be negative")
        self.after = after
        self._returned_at: weakref.WeakKeyDictionary[Connection, float] = (
            weakref.WeakKeyDictionary()
        )

    def returned(self, conn: Connection) -> None:
        self._returned_at[conn] = time.monotonic()

    def __call__(self, conn: Connection) -> None:
        returned_at = self._returned_at.get(conn)
        if returned_at is None or time.monotonic() - returned_at >= self.after:
            ConnectionPool.check_connection(conn)


def _fetch_all(
    query: str, params: Sequence[Any], *, binary: bool = False
) -> Callable[[Connection], list[tuple[Any, ...]]]:
    def work(conn: Connection) -> list[tuple[Any, ...]]:
        return conn.execute(query, params, binary=binary).fetchall()

    return work


def _fetch_messages(query: str, params: Sequence[Any]) -> Callable[[Connection], list[Any]]:
    """Rows of MESSAGE_COLUMNS in the binary format: formatting timestamps and ids as text on
    the server and parsing them back here is a good part of a 100-post poll (measured)."""
    return _fetch_all(query, params, binary=True)


def _fetch_value(query: str, params: Sequence[Any]) -> Callable[[Connection], Any]:
    def work(conn: Connection) -> Any:
        row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    return work


def _translate(
    operation: str, exc: psycopg.Error, failure: Failure, attempts: int
) -> DatabaseError:
    detail = first_line(exc)
    if failure is Failure.INVALID:
        return InvalidInput(operation, detail)
    if failure is Failure.CLOSED:
        return DatabaseError(operation, f"the pool is not open ({detail})")
    if failure is Failure.TIMEOUT:
        return DatabaseTimeout(operation, detail)
    if failure is Failure.ROLLED_BACK:
        return DatabaseUnavailable(
            operation, f"still rolled back after {attempts} attempt(s): {detail}"
        )
    if failure.transient:
        return DatabaseUnavailable(
            operation, f"database unavailable after {attempts} attempt(s): {detail}"
        )
    return DatabaseError(operation, detail)


def _batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _payload(batch: Sequence[MessageRecord]) -> str:
    return json.dumps(
        [_message_json(record) for record in batch], ensure_ascii=False, separators=(",", ":")
    )


def _message_json(record: MessageRecord) -> dict[str, Any]:
    """The JSON object bulk_upsert_messages takes (defaults left out), text made storable.

    ``MessageRecord.create`` already sanitises; this catches records built directly, since a
    NUL byte or a lone surrogate would make PostgreSQL reject the whole batch.
    """
    data: dict[str, Any] = {
        "channel_id": record.channel_id,
        "message_id": record.message_id,
        "telegram_date": record.telegram_date.isoformat(),
    }
    if record.source != "user_client":  # the column defaults
        data["source"] = record.source
    if record.message_type != "text":
        data["message_type"] = record.message_type
    metadata = dict(record.metadata)
    for name, value in (("text", record.text), ("caption", record.caption)):
        if value is not None:
            clean, original = sanitize_text(value)
            data[name] = clean
            if original is not None:
                metadata[f"original_{name}_b64"] = original
    if record.media_type is not None:
        data["media_type"] = record.media_type
    if record.media_refs is not None:
        data["media_refs"] = dict(record.media_refs)
    if record.thread_id is not None:
        data["thread_id"] = record.thread_id
    if record.reply_to_msg_id is not None:
        data["reply_to_msg_id"] = record.reply_to_msg_id
    if record.grouped_id is not None:
        data["grouped_id"] = record.grouped_id
    if record.edit_date is not None:
        data["edit_date"] = record.edit_date.isoformat()
    if metadata:
        data["metadata"] = metadata
    return data


def _json_or_none(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(dict(value), ensure_ascii=False)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _stored_message(row: tuple[Any, ...]) -> StoredMessage:
    (
        channel_id,
        message_id,
        telegram_date,
        text,
        caption,
        media_type,
        media_refs,
        thread_id,
        reply_to_msg_id,
        grouped_id,
        edit_date,
        source,
        message_type,
        metadata,
        status,
        processing_state,
    ) = row
    record = MessageRecord(
        channel_id=channel_id,
        message_id=message_id,
        telegram_date=telegram_date.astimezone(UTC),
        text=text,
        caption=caption,
        media_type=media_type,
        media_refs=media_refs,
        thread_id=thread_id,
        reply_to_msg_id=reply_to_msg_id,
        grouped_id=grouped_id,
        edit_date=_utc(edit_date),
        source=source,
        message_type=message_type,
        metadata=metadata,
    )
    return StoredMessage(record=record, status=status, processing_state=processing_state)
