"""The end-of-run verdict: every post stored once, finished once, each signal stored once.

Counted in PostgreSQL over the run's own keys (load-test channels, the run's id range), after
the pollers have stopped:

* posts sent = rows stored = keys in the dedup ledger (nothing lost, nothing doubled);
* every row finished (processed or ignored; none pending, claimed or failed) and marked
  exactly once (``metadata.marks`` = 1);
* signals stored = the signal posts sent, one row each, none for a chatter post.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from tgstack.models import MessageKey

_RANGES = (
    "WITH ranges AS (SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[])"
    " AS r(channel_id, first_id, last_id))"
)
_MESSAGES = (
    _RANGES + " SELECT count(*), count(DISTINCT (m.channel_id, m.message_id)),"
    " count(*) FILTER (WHERE coalesce(m.published_at, o.published_at) IS NOT NULL),"
    " count(*) FILTER (WHERE m.processing_state = 'processed'),"
    " count(*) FILTER (WHERE m.processing_state = 'ignored'),"
    " count(*) FILTER (WHERE m.processing_state = 'failed'),"
    " count(*) FILTER (WHERE m.processing_state = 'pending'),"
    " count(*) FILTER (WHERE m.processing_state = 'processing'),"
    " count(*) FILTER (WHERE m.metadata ->> 'marks' = '1')"
    " FROM telegram_gateway.messages m JOIN ranges r ON m.channel_id = r.channel_id"
    " AND m.message_id BETWEEN r.first_id AND r.last_id"
    " LEFT JOIN telegram_gateway.message_outbox o ON o.channel_id = m.channel_id"
    " AND o.message_id = m.message_id AND o.telegram_date = m.telegram_date"
)
_LEDGER = (
    _RANGES + " SELECT count(*) FROM telegram_gateway.message_keys k JOIN ranges r"
    " ON k.channel_id = r.channel_id AND k.message_id BETWEEN r.first_id AND r.last_id"
)
_SIGNALS = (
    _RANGES + " SELECT s.channel_id, s.message_id, s.retired_at IS NOT NULL"
    " FROM tp_capital.signals s JOIN ranges r ON s.channel_id = r.channel_id"
    " AND s.message_id BETWEEN r.first_id AND r.last_id"
)
_CLEANUP = (
    (
        _RANGES + " DELETE FROM tp_capital.signal_events e USING ranges r WHERE e.channel_id ="
        " r.channel_id AND e.message_id BETWEEN r.first_id AND r.last_id"
    ),
    (
        _RANGES + " DELETE FROM tp_capital.signal_reviews v USING ranges r WHERE v.channel_id ="
        " r.channel_id AND v.message_id BETWEEN r.first_id AND r.last_id"
    ),
    (
        _RANGES + " DELETE FROM tp_capital.signals s USING ranges r WHERE s.channel_id ="
        " r.channel_id AND s.message_id BETWEEN r.first_id AND r.last_id"
    ),
    (
        _RANGES + " DELETE FROM telegram_gateway.messages m USING ranges r WHERE m.channel_id ="
        " r.channel_id AND m.message_id BETWEEN r.first_id AND r.last_id"
    ),
    (
        _RANGES + " DELETE FROM telegram_gateway.message_outbox o USING ranges r WHERE"
        " o.channel_id = r.channel_id AND o.message_id BETWEEN r.first_id AND r.last_id"
    ),
    (
        _RANGES + " DELETE FROM telegram_gateway.message_keys k USING ranges r WHERE"
        " k.channel_id = r.channel_id AND k.message_id BETWEEN r.first_id AND r.last_id"
    ),
)


@dataclass(frozen=True)
class Accounting:
    sent: int
    rows: int
    unique_rows: int
    ledger_keys: int
    published: int
    processed: int
    ignored: int
    failed: int
    pending: int
    claimed: int
    marked_once: int
    signals: int
    unique_signals: int
    retired_signals: int
    expected_signals: int
    missing_signals: int
    unexpected_signals: int

    @property
    def lost(self) -> int:
        return self.sent - self.unique_rows

    @property
    def duplicate_rows(self) -> int:
        return self.rows - self.unique_rows

    @property
    def duplicate_signals(self) -> int:
        return self.signals - self.unique_signals

    @property
    def not_marked_once(self) -> int:
        return self.rows - self.marked_once

    @property
    def unfinished(self) -> int:
        return self.pending + self.claimed + self.failed

    @property
    def zero_loss(self) -> bool:
        return self.lost == 0 and self.unfinished == 0 and self.missing_signals == 0

    @property
    def zero_duplicates(self) -> bool:
        return (
            self.duplicate_rows == 0
            and self.duplicate_signals == 0
            and self.not_marked_once == 0
            and self.unexpected_signals == 0
            and self.ledger_keys == self.unique_rows
        )

    @property
    def ok(self) -> bool:
        return self.zero_loss and self.zero_duplicates

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data |= {
            "lost": self.lost,
            "duplicate_rows": self.duplicate_rows,
            "duplicate_signals": self.duplicate_signals,
            "not_marked_once": self.not_marked_once,
            "unfinished": self.unfinished,
            "zero_loss": self.zero_loss,
            "zero_duplicates": self.zero_duplicates,
            "ok": self.ok,
        }
        return data

    def problems(self) -> list[str]:
        """What is wrong, one phrase each (empty when the run is clean)."""
        found = []
        checks = (
            (self.lost, "posts lost"),
            (self.duplicate_rows, "posts stored twice"),
            (self.ledger_keys - self.unique_rows, "ledger keys without a row"),
            (self.pending + self.claimed, "posts never finished"),
            (self.failed, "posts failed"),
            (self.not_marked_once, "posts not marked exactly once"),
            (self.missing_signals, "signals missing"),
            (self.duplicate_signals, "duplicate signals"),
            (self.unexpected_signals, "signals for non-signal posts"),
        )
        for count, what in checks:
            if count:
                found.append(f"{count} {what}")
        return found


def _range_params(ranges: Mapping[int, tuple[int, int]]) -> tuple[list[int], ...]:
    channels = sorted(ranges)
    return channels, [ranges[c][0] for c in channels], [ranges[c][1] for c in channels]


def account(
    conninfo: str,
    ranges: Mapping[int, tuple[int, int]],
    sent: int,
    signal_keys: Sequence[MessageKey],
) -> Accounting:
    """Count the run's rows and signals and compare them with what was sent."""
    params = _range_params(ranges)
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        row = conn.execute(_MESSAGES, params).fetchone()
        ledger = conn.execute(_LEDGER, params).fetchone()
        signal_rows = conn.execute(_SIGNALS, params).fetchall()
    assert row is not None
    assert ledger is not None
    rows, unique, published, processed, ignored, failed, pending, claimed, marked = map(int, row)
    stored_signals = [MessageKey(int(c), int(m)) for c, m, _ in signal_rows]
    expected = set(signal_keys)
    got = set(stored_signals)
    return Accounting(
        sent=sent,
        rows=rows,
        unique_rows=unique,
        ledger_keys=int(ledger[0]),
        published=published,
        processed=processed,
        ignored=ignored,
        failed=failed,
        pending=pending,
        claimed=claimed,
        marked_once=marked,
        signals=len(stored_signals),
        unique_signals=len(got),
        retired_signals=sum(1 for *_, retired in signal_rows if retired),
        expected_signals=len(expected),
        missing_signals=len(expected - got),
        unexpected_signals=len(got - expected),
    )


def cleanup(conninfo: str, ranges: Mapping[int, tuple[int, int]]) -> None:
    """Delete the run's signals, messages and ledger keys (a run against a deployed stack)."""
    params = _range_params(ranges)
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        for statement in _CLEANUP:
            conn.execute(statement, params)
