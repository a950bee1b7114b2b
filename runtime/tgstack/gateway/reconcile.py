"""What a reconciliation repairs: the stored posts of a window compared with Telegram's.

The job: from the posts stored for a window of a channel's ids and the posts Telegram returns
for the same window, say which edits to apply, which posts to soft-delete and which to store.
Pure; ``TelethonSource.reconcile_channel`` reads both sides and sends the result through the
ingest pipeline's own edit, delete and new paths, so the edit history, the cache and the
broker see a repair as they see a live event.

Invariants:

* Only ids in the window (after, last] are judged, and ``last`` is at most the newest id Telegram
  had shown when its side was read; the stored side is read *before* Telegram's. A post stored
  and missing from Telegram was therefore there when it was stored and deleted since: a post
  published meanwhile is above ``last`` or already on Telegram's side.
* An edit is applied only when Telegram's ``edit_date`` is newer than the stored one and the
  content (text, caption, media) differs, exactly what ``apply_message_edit`` would
  apply; a repair is never counted for something that changes nothing.

Why the window reaches below the newest ids after a downtime (``window_start``): posts made
while the gateway was down are fetched with their current text by the backfill, but edits and
deletions of posts stored *before* it went down reach it only through reconciliation, so the
first window after a gap starts ``window`` ids below the watermark the gap began at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tgstack.models import MessageRecord, StoredPost


@dataclass
class Repairs:
    """Edits to apply, ids to soft-delete and posts to store, each in id order."""

    edits: list[MessageRecord] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)
    missing: list[MessageRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"edit": len(self.edits), "delete": len(self.deletes), "missing": len(self.missing)}


def window_start(
    top: int, window: int, *, gap_from: int | None = None, depth: int = 0, floor: int = 0
) -> int:
    """The id after which a reconciliation window of ``window`` ids ending at ``top`` starts.

    ``gap_from`` (the lowest watermark a backfill started from since the last reconciliation)
    widens it to ``window`` ids below that; ``depth`` (if not 0) caps the width at
    ``max(depth, window)`` ids; it never reaches to or below ``floor``.
    """
    start = top - window
    if gap_from is not None:
        start = min(start, gap_from - window)
    if depth:
        start = max(start, top - max(depth, window))
    return max(start, floor, 0)


def plan_repairs(
    stored: Mapping[int, StoredPost], seen: Mapping[int, MessageRecord], *, after: int, last: int
) -> Repairs:
    """Compare the window (after, last]: ``stored`` posts by id, ``seen`` the posts Telegram
    returned for the whole window (service messages left out)."""
    repairs = Repairs()
    for message_id in sorted(set(stored) | set(seen)):
        if not after < message_id <= last:
            continue
        post = stored.get(message_id)
        record = seen.get(message_id)
        if record is None:
            if post is not None and not post.deleted:
                repairs.deletes.append(message_id)
        elif post is None:
            repairs.missing.append(record)
        elif not post.deleted and _newer_edit(post, record):
            repairs.edits.append(record)
    return repairs


def _newer_edit(post: StoredPost, record: MessageRecord) -> bool:
    if record.edit_date is None:
        return False
    if post.edit_date is not None and record.edit_date <= post.edit_date:
        return False
    media_changed = (record.media_type is not None and record.media_type != post.media_type) or (
        record.media_refs is not None and dict(record.media_refs) != post.media_refs
    )
    return record.text != post.text or record.caption != post.caption or media_changed
