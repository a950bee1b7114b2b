"""What the live gateway does when PostgreSQL cannot keep up: a bounded queue, and nothing lost.

The live queue (``BatchingWorker`` with a ``limit``) holds at most ``TGSTACK_GATEWAY_QUEUE_LIMIT``
events that are not committed yet. When an event finds it full, the queue *overflows* and
stays so until everything it held is committed and the spill below is applied:

* a new post is refused, and its channel is marked for backfill from just before that post
  (``BackfillMarks``): the service re-reads the channel's history from Telegram once the queue
  has drained. Telegram keeps the posts; holding them in memory as well is what ran the gateway
  out of memory in a long outage.
* an edit or a deletion is never dropped: it is appended to an on-disk spill (``EventSpill``,
  fsync'd before ``submit`` returns) and applied in arrival order once the queue has drained,
  before the queue takes any live event again (an edit never overtakes the post it edits, nor
  an earlier edit).

Invariants: the events in memory never exceed the limit (plus the batch being committed); every
edit and deletion is in memory, in the spill, or committed; every refused post is at or above
its channel's mark. The marks and the spill live in the gateway's state directory and survive a
restart: a gateway stopped while the database is down writes what it still holds there (edits
and deletions to the spill's head, new posts as marks), and the next start applies and
backfills them. Only a kill -9 loses what was in memory; the reconciliation of recent posts
repairs that.

Files (created on first use, mode 0600, in a 0700 directory):

* ``queue-spill.jsonl``: one event a line (``MessageRecord.to_dict`` for an edit); a torn last
  line (a crash in mid-append) is dropped at load. ``queue-spill.offset``: how many bytes of it
  are applied (replaced atomically after each applied chunk).
* ``backfill-marks.json``: ``{"channels": {"<channel id>": <backfill from this id>}}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tgstack import durable, metrics
from tgstack.gateway.events import MessageEvent
from tgstack.models import MessageRecord

log = logging.getLogger("tgstack.gateway.backpressure")

SPILL_FILE = "queue-spill.jsonl"
SPILL_OFFSET_FILE = "queue-spill.offset"
MARKS_FILE = "backfill-marks.json"


class StateDirError(OSError):
    """The gateway's state directory cannot be written (the spill cannot keep an event)."""


def _ensure_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateDirError(
            f"TGSTACK_GATEWAY_STATE_DIR: cannot create {directory}: {exc.strerror or exc}"
        ) from exc


def write_atomically(path: Path, body: bytes) -> None:
    """Replace ``path`` durably (tgstack.durable), creating the state directory first."""
    _ensure_dir(path.parent)
    durable.write_atomically(path, body)


def event_to_line(event: MessageEvent) -> bytes:
    data: dict[str, Any] = {
        "kind": event.kind,
        "channel_id": event.channel_id,
        "message_ids": list(event.message_ids),
        "observed_at": event.observed_at,
    }
    if event.record is not None:
        data["record"] = event.record.to_dict()
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def event_from_line(line: bytes) -> MessageEvent:
    data = json.loads(line)
    record = data.get("record")
    return MessageEvent(
        data["kind"],
        int(data["channel_id"]),
        tuple(int(m) for m in data["message_ids"]),
        MessageRecord.from_dict(record) if record is not None else None,
        float(data["observed_at"]),
    )


class EventSpill:
    """An append-only, fsync'd FIFO of events on disk, applied in order (not thread-safe: the
    worker's lock guards it)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / SPILL_FILE
        self.offset_path = directory / SPILL_OFFSET_FILE
        self._applied = 0  # bytes of the file applied (durable in the offset file)
        self._read = 0  # bytes handed out by read() and not yet applied
        self._size = 0
        self._pending = 0  # events in the file after the applied offset
        self._handed = 0  # events handed out by read() and not yet applied
        self._fd: int | None = None

    def load(self) -> None:
        """Find what a previous run left; drop a torn last line."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            log.warning("spill_torn_line_dropped", extra={"bytes": len(data) - complete})
            with self.path.open("r+b") as handle:
                handle.truncate(complete)
                os.fsync(handle.fileno())
        try:
            applied = int(self.offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            applied = 0
        self._applied = self._read = min(applied, complete)
        self._size = complete
        self._pending = data[self._applied : complete].count(b"\n")
        self._show()

    def __len__(self) -> int:
        return self._pending

    def append(self, event: MessageEvent) -> None:
        """Write one event and fsync it; StateDirError when the disk refuses."""
        line = event_to_line(event)
        try:
            if self._fd is None:
                _ensure_dir(self.directory)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(self._fd, line)
            os.fsync(self._fd)
        except OSError as exc:
            raise StateDirError(f"cannot append to the spill {self.path}: {exc}") from exc
        self._size += len(line)
        self._pending += 1
        self._show()

    def read(self, limit: int) -> list[MessageEvent]:
        """Up to ``limit`` events after those already handed out, in order."""
        if self._read >= self._size:
            return []
        events: list[MessageEvent] = []
        with self.path.open("rb") as handle:
            handle.seek(self._read)
            while len(events) < limit and self._read < self._size:
                line = handle.readline()
                self._read += len(line)
                events.append(event_from_line(line))
        self._handed += len(events)
        return events

    def applied(self) -> None:
        """The events handed out by ``read`` are committed: remember it durably."""
        self._applied = self._read
        self._pending = max(0, self._pending - self._handed)
        self._handed = 0
        if self._pending == 0:
            self.clear()
            return
        write_atomically(self.offset_path, str(self._applied).encode())
        self._show()

    def unread(self) -> None:
        """Hand the events read but not applied out again (their batch was abandoned)."""
        self._read = self._applied
        self._handed = 0

    def clear(self) -> None:
        """Everything is applied: empty the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.offset_path.unlink()
        self._applied = self._read = self._size = self._pending = self._handed = 0
        self._show()

    def prepend(self, events: Sequence[MessageEvent]) -> None:
        """Put ``events`` before what is not applied yet (a stop with events still in memory:
        they arrived before anything spilled)."""
        if not events:
            return
        rest = b""
        with contextlib.suppress(FileNotFoundError):
            rest = self.path.read_bytes()[self._applied : self._size]
        body = b"".join(event_to_line(event) for event in events) + rest
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        write_atomically(self.path, body)
        with contextlib.suppress(FileNotFoundError):
            self.offset_path.unlink()
            durable.fsync_dir(self.directory)
        self._applied = self._read = self._handed = 0
        self._size = len(body)
        self._pending = body.count(b"\n")
        self._show()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _show(self) -> None:
        metrics.GATEWAY_SPILLED_EVENTS.set(self._pending)


class BackfillMarks:
    """Channels whose new posts were refused, each with the id to backfill from (thread-safe).

    A mark stays until a backfill from it has finished: a mark renewed meanwhile (the queue
    overflowed again) is kept for the next round.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / MARKS_FILE
        self._lock = threading.Lock()
        self._marks: dict[int, int] = {}
        self._versions: dict[int, int] = {}

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("backfill_marks_unreadable", extra={"error": str(exc)})
            return
        with self._lock:
            for channel, from_id in dict(data.get("channels", {})).items():
                self._marks[int(channel)] = int(from_id)
                self._versions[int(channel)] = 0
            self._show()

    def mark(self, channel_id: int, from_id: int) -> bool:
        """Backfill ``channel_id`` from ``from_id`` (kept: the lowest); True when it changed."""
        with self._lock:
            known = self._marks.get(channel_id)
            if known is not None and known <= from_id:
                return False
            self._marks[channel_id] = from_id if known is None else min(known, from_id)
            self._versions[channel_id] = self._versions.get(channel_id, 0) + 1
            self._save()
            return True

    def mark_all(self, refused: Iterable[MessageEvent]) -> None:
        for event in refused:
            if event.kind == "new":
                self.mark(event.channel_id, min(event.message_ids) - 1)

    def pending(self) -> dict[int, tuple[int, int]]:
        """Channel -> (backfill from this id, version of the mark)."""
        with self._lock:
            return {ch: (from_id, self._versions[ch]) for ch, from_id in self._marks.items()}

    def done(self, channel_id: int, version: int) -> None:
        """The backfill from a mark of this version finished: forget it unless renewed."""
        with self._lock:
            if self._versions.get(channel_id) != version:
                return
            del self._marks[channel_id]
            del self._versions[channel_id]
            self._save()

    def __len__(self) -> int:
        return len(self._marks)

    def _save(self) -> None:
        body = json.dumps({"channels": {str(c): m for c, m in sorted(self._marks.items())}})
        try:
            write_atomically(self.path, body.encode())
        except OSError as exc:  # the mark still holds in memory for this run
            log.error("backfill_marks_save_failed", extra={"error": str(exc)})
        self._show()

    def _show(self) -> None:
        metrics.GATEWAY_BACKFILL_PENDING_CHANNELS.set(len(self._marks))


class Overflow:
    """The spill and the marks of one gateway state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.spill = EventSpill(directory)
        self.marks = BackfillMarks(directory)

    def load(self) -> Overflow:
        self.spill.load()
        self.marks.load()
        if len(self.spill) or len(self.marks):
            log.info(
                "spill_left_by_last_run",
                extra={"spilled_events": len(self.spill), "channels_to_backfill": len(self.marks)},
            )
        return self
