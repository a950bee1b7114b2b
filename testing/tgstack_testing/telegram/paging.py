"""Telegram's offset pagination of a history (core.telegram.org/api/offsets), as a pure function.

The list is newest first. The window starts at ``offsetFromID(offset_id) + add_offset``, where
offsetFromID counts the messages with an id >= offset_id (0 for offset_id 0); with no offset_id,
``offset_date`` places it after the messages sent at or after that date. ``limit`` messages are
taken from there (a negative start shortens the window), and only then are ``max_id`` and
``min_id`` applied as exclusive bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def history_window(
    ids_desc: Sequence[int],
    dates: Sequence[int],
    *,
    offset_id: int = 0,
    offset_date: int = 0,
    add_offset: int = 0,
    limit: int = 0,
    max_id: int = 0,
    min_id: int = 0,
) -> list[int]:
    """The ids of one getHistory page; `ids_desc` and `dates` describe the same messages."""
    if limit <= 0:
        limit = DEFAULT_LIMIT
    limit = min(limit, MAX_LIMIT)
    if offset_id > 0:
        start = sum(1 for i in ids_desc if i >= offset_id)
    elif offset_date > 0:
        start = sum(1 for d in dates if d >= offset_date)
    else:
        start = 0
    start += add_offset
    end = start + limit
    window = ids_desc[max(start, 0) : max(end, 0)]
    return [
        i for i in window if (max_id <= 0 or i < max_id) and (min_id <= 0 or i > min_id)
    ]
