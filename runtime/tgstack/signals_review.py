"""The posts that need review, for ``tgstack signals review``.

A post with signal labels and a ticker that the poller could not complete (no price) is a row
of ``tp_capital.signal_reviews`` until an edit completes it or the post is deleted. This reads
the open ones with the very statement of ``GET /v1/signals/review``
(``tgstack.api.queries.signal_reviews_statement``: same filter, same order) over one short
connection, and renders them: JSON lines or a table for a terminal. The parser package
(``tgstack.signals``) stays free of I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tgstack.api.queries import ReviewQuery, signal_reviews_statement

DEFAULT_LIMIT = 50
TEXT_WIDTH = 60
EMPTY = "no posts need review"
_COLUMNS = ("telegram_date (UTC)", "channel", "message", "asset", "missing", "text")


@dataclass(frozen=True, slots=True)
class Review:
    """One open review: the post and what a signal lacks."""

    id: int
    channel_id: int
    message_id: int
    telegram_date: datetime
    asset: str | None
    missing: tuple[str, ...]
    raw_text: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Review:
        return cls(
            id=row["id"],
            channel_id=row["channel_id"],
            message_id=row["message_id"],
            telegram_date=row["telegram_date"],
            asset=row["asset"],
            missing=tuple(row["missing"]),
            raw_text=row["raw_text"],
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The item of GET /v1/signals/review."""
        return {
            "id": self.id,
            "channel_id": self.channel_id,
            "message_id": self.message_id,
            "telegram_date": _utc(self.telegram_date).isoformat().replace("+00:00", "Z"),
            "asset": self.asset,
            "missing": list(self.missing),
            "raw_text": self.raw_text,
        }


@dataclass(frozen=True, slots=True)
class ReviewList:
    reviews: list[Review]
    more: bool  # further open reviews exist beyond the limit


def open_reviews(
    dsn: str,
    *,
    limit: int = DEFAULT_LIMIT,
    channel_id: int | None = None,
    connect_timeout: int = 5,
) -> ReviewList:
    """The newest ``limit`` open reviews (of one channel, if given), newest first."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    sql, params = signal_reviews_statement(ReviewQuery(channel_id=channel_id, limit=limit))
    with psycopg.connect(
        dsn,
        autocommit=True,
        prepare_threshold=None,  # PgBouncer in transaction mode
        connect_timeout=connect_timeout,
        application_name="tgstack-signals-review",
        row_factory=dict_row,
    ) as conn:
        rows = conn.execute(sql, params).fetchall()
    return ReviewList([Review.from_row(row) for row in rows[:limit]], more=len(rows) > limit)


def first_line(text: str, width: int = TEXT_WIDTH) -> str:
    """The text's first non-blank line, stripped, cut to ``width`` characters with an ellipsis."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= width else line[: width - 1] + "…"


def table(reviews: Iterable[Review], width: int = TEXT_WIDTH) -> list[str]:
    """A header and one aligned line per review (the text column last, so wide characters
    cannot shift the others)."""
    rows = [
        (
            _utc(review.telegram_date).strftime("%Y-%m-%d %H:%M:%S"),
            str(review.channel_id),
            str(review.message_id),
            review.asset or "-",
            ",".join(review.missing) or "-",
            first_line(review.raw_text, width),
        )
        for review in reviews
    ]
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]]
        ).rstrip()
        for row in [_COLUMNS, *rows]
    ]


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
