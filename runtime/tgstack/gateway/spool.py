"""The spool source: the sandbox's stand-in for the Telegram network.

``TGSTACK_GATEWAY_SOURCE=spool`` makes ``tgstack gateway`` follow JSONL files (the replay
format, docs/replay-format.md) dropped into ``TGSTACK_GATEWAY_SPOOL_DIR`` instead of a
Telegram account. Only the network is faked: every line goes through the same
``IngestPipeline`` as a live post (PostgreSQL first, then Redis and RabbitMQ, outbox relay).

Files are followed like ``tail -F``: ``*.jsonl`` in name order, each read from where the
gateway left it. The read position of each file is saved atomically after the batch that
contains its lines is committed to PostgreSQL, so a gateway killed at any moment (kill -9)
resumes after its last commit: lines written while it was down are ingested on restart (the
sandbox's backfill) and lines read again after a crash are stored once (the pipeline
deduplicates). A file replaced by a new one (another inode, shorter, or a different start)
is read again from its start; its posts already stored count as duplicates. A trailing
line without its newline is left for the next poll (a writer is still appending it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tgstack import durable, metrics
from tgstack.config import Settings
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.pipeline import BatchStats, IngestPipeline
from tgstack.gateway.replay import RejectedLine, parse_line
from tgstack.gateway.telethon_source import GatewayFatal
from tgstack.gateway.wiring import Components, build_pipeline, build_relay, components
from tgstack.health_server import HealthServer

log = logging.getLogger("tgstack.gateway.spool")

SOURCE = "spool"
POSITIONS_FILE = ".tgstack-positions.json"
SPOOL_SUFFIX = ".jsonl"
# How much of a file's start identifies it (a replaced file differs there).
_FINGERPRINT_BYTES = 4096


@dataclass(frozen=True)
class FilePosition:
    """Where reading of one spool file resumes."""

    inode: int
    offset: int
    lines: int
    fingerprint: str

    @classmethod
    def start(cls, inode: int) -> FilePosition:
        return cls(inode=inode, offset=0, lines=0, fingerprint="")


class SpoolPositions:
    """The read position of every spool file, kept in one JSON file replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._positions: dict[str, FilePosition] = {}

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._positions = {}
            return
        except (OSError, ValueError) as exc:
            raise GatewayFatal(
                f"spool positions file {self.path} is unreadable ({exc}); "
                "remove it to read every spool file again (stored posts are not duplicated)"
            ) from exc
        files = data.get("files", {}) if isinstance(data, dict) else {}
        self._positions = {
            str(name): FilePosition(
                inode=int(value["inode"]),
                offset=int(value["offset"]),
                lines=int(value["lines"]),
                fingerprint=str(value.get("fingerprint", "")),
            )
            for name, value in files.items()
        }

    def get(self, name: str) -> FilePosition | None:
        return self._positions.get(name)

    def set(self, name: str, position: FilePosition) -> None:
        self._positions[name] = position

    def forget_all_but(self, names: Iterable[str]) -> bool:
        """Drop positions of files no longer in the spool; True when something was dropped."""
        keep = set(names)
        gone = [name for name in self._positions if name not in keep]
        for name in gone:
            del self._positions[name]
        return bool(gone)

    def save(self) -> None:
        """Write the positions durably (tgstack.durable)."""
        body = json.dumps(
            {"files": {name: asdict(pos) for name, pos in sorted(self._positions.items())}},
            indent=1,
        ).encode()
        durable.write_atomically(self.path, body)

    def as_dict(self) -> dict[str, FilePosition]:
        return dict(self._positions)


def _fingerprint(handle: BinaryIO, length: int) -> str:
    handle.seek(0)
    return hashlib.sha256(handle.read(min(length, _FINGERPRINT_BYTES))).hexdigest()


@dataclass
class SpoolTotals(BatchStats):
    """The pipeline's totals plus the lines the source read and rejected itself."""

    lines: int = 0
    files: int = 0


class SpoolSource:
    """Feeds the lines of spool files into a pipeline, committing each batch before moving on."""

    def __init__(
        self,
        directory: Path,
        pipeline: IngestPipeline,
        *,
        positions: SpoolPositions | None = None,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        channels: Iterable[int] = (),
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self.directory = directory
        self.pipeline = pipeline
        self.positions = positions or SpoolPositions(directory / POSITIONS_FILE)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.channels = frozenset(channels)
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.totals = SpoolTotals()
        self._stop = threading.Event()
        self.pipeline.is_stopping = self._stop.is_set

    # Lifecycle ---------------------------------------------------------------------------

    def check(self) -> None:
        """Fail fast (GatewayFatal) when the spool directory is unusable."""
        if not self.directory.is_dir():
            raise GatewayFatal(
                f"TGSTACK_GATEWAY_SPOOL_DIR: spool directory {self.directory} does not exist"
            )
        if not os.access(self.directory, os.R_OK | os.W_OK | os.X_OK):
            raise GatewayFatal(
                f"TGSTACK_GATEWAY_SPOOL_DIR: spool directory {self.directory} must be readable "
                "and writable by the gateway (it keeps its read positions there)"
            )
        self.positions.load()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Poll the spool until ``stop``; each poll reads every file to its end."""
        self.check()
        log.info("spool_source_started", extra={"directory": str(self.directory)})
        while not self._stop.is_set():
            try:
                self.poll_once()
            except GatewayFatal:
                raise
            except Exception as exc:  # e.g. the database stayed down past a stop request
                if self._stop.is_set():
                    break
                log.warning("spool_poll_failed", extra={"error": str(exc)})
            self._stop.wait(self.poll_interval)
        log.info("spool_source_stopped", extra=self.summary())

    def summary(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self.totals).items() if isinstance(v, int)}

    # Reading -----------------------------------------------------------------------------

    def spool_files(self) -> list[Path]:
        names = (p for p in self.directory.iterdir() if p.name.endswith(SPOOL_SUFFIX))
        return sorted(p for p in names if not p.name.startswith(".") and p.is_file())

    def poll_once(self) -> int:
        """Read every spool file from its saved position to its end; returns lines read."""
        files = self.spool_files()
        read = 0
        for path in files:
            if self._stop.is_set():
                break
            read += self._follow(path)
        if self.positions.forget_all_but(path.name for path in files):
            self.positions.save()
        return read

    def backlog_bytes(self) -> int:
        """Bytes written to spool files and not yet committed (0 when caught up)."""
        total = 0
        for path in self.spool_files():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            known = self.positions.get(path.name)
            offset = known.offset if known is not None and known.inode == stat.st_ino else 0
            total += max(0, stat.st_size - offset)
        return total

    def _follow(self, path: Path) -> int:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return 0  # removed since the directory was listed
        read = 0
        with handle:
            position = self._resume_position(path.name, handle)
            while not self._stop.is_set():
                handle.seek(position.offset)
                events, rejected, raw_lines, consumed = self._read_batch(handle, position.lines)
                if not raw_lines:
                    break
                self._commit(events, rejected)
                new_offset = position.offset + consumed
                fingerprint = position.fingerprint
                if position.offset < _FINGERPRINT_BYTES:
                    fingerprint = _fingerprint(handle, new_offset)
                position = FilePosition(
                    position.inode, new_offset, position.lines + raw_lines, fingerprint
                )
                self.positions.set(path.name, position)
                self.positions.save()
                read += raw_lines
                self.totals.lines += raw_lines
        return read

    def _resume_position(self, name: str, handle: BinaryIO) -> FilePosition:
        stat = os.fstat(handle.fileno())
        known = self.positions.get(name)
        if known is None:
            self.totals.files += 1
            return FilePosition.start(stat.st_ino)
        replaced = (
            known.inode != stat.st_ino
            or stat.st_size < known.offset
            or (known.fingerprint and _fingerprint(handle, known.offset) != known.fingerprint)
        )
        if replaced:
            log.info("spool_file_replaced", extra={"file": name})
            self.totals.files += 1
            return FilePosition.start(stat.st_ino)
        return known

    def _read_batch(
        self, handle: BinaryIO, lines_before: int
    ) -> tuple[list[MessageEvent], int, int, int]:
        """Up to batch_size complete lines: (events, rejected, lines, bytes consumed)."""
        events: list[MessageEvent] = []
        rejected = lines = consumed = 0
        while lines < self.batch_size:
            raw = handle.readline()
            if not raw.endswith(b"\n"):
                break  # end of file, or a line still being written
            lines += 1
            consumed += len(raw)
            parsed = parse_line(raw, lines_before + lines, source=SOURCE)
            if parsed is None:
                continue
            if isinstance(parsed, RejectedLine):
                rejected += 1
                self._log_rejection(handle, str(parsed))
                continue
            if self.channels and parsed.channel_id not in self.channels:
                rejected += 1
                self._log_rejection(
                    handle,
                    f"line {lines_before + lines}: channel {parsed.channel_id} is not followed "
                    "(TGSTACK_CHANNELS)",
                )
                continue
            events.append(parsed)
        return events, rejected, lines, consumed

    def _log_rejection(self, handle: BinaryIO, reason: str) -> None:
        metrics.GATEWAY_REJECTED.labels(SOURCE).inc()
        log.warning("spool_line_rejected", extra={"file": Path(handle.name).name, "reason": reason})

    def _commit(self, events: list[MessageEvent], rejected: int) -> None:
        """Hand a batch to the pipeline and wait for its commit (retrying unexpected errors)."""
        self.totals.rejected += rejected
        if not events:
            return
        for event in events:
            metrics.GATEWAY_EVENTS.labels(event.kind, SOURCE).inc()
        metrics.GATEWAY_PENDING_EVENTS.set(len(events))
        delay = self.retry_initial
        while True:
            try:
                stats = self.pipeline.process_batch(events)
                break
            except Exception:
                if self._stop.is_set():
                    raise  # not committed: the position stays, the lines are read again
                log.exception("spool_batch_failed", extra={"retry_in": delay})
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max)
        metrics.GATEWAY_PENDING_EVENTS.set(0)
        self.totals.add(stats)


# The long-running gateway with the spool source ------------------------------------------------


class SpoolGatewayService:
    """``tgstack gateway`` with ``TGSTACK_GATEWAY_SOURCE=spool``: source, relay, /health."""

    def __init__(self, settings: Settings, parts: Components) -> None:
        self.settings = settings
        self.parts = parts
        self.source = SpoolSource(
            settings.gateway_spool_dir,
            build_pipeline(parts),
            batch_size=settings.gateway_batch_size,
            poll_interval=settings.gateway_spool_poll_seconds,
            channels=settings.channels,
        )
        self.relay = build_relay(parts, settings)
        self.health = HealthServer(settings.gateway_bind, settings.gateway_port, self.check)

    def check(self) -> tuple[bool, dict[str, Any]]:
        spool = self.source.directory.is_dir() and not self.source.stopping
        database = bool(self.parts.database.ping())
        return spool and database, {
            "account": self.settings.gateway_account,
            "source": SOURCE,
            "spool_readable": spool,
            "database": database,
            "spool_backlog_bytes": self.source.backlog_bytes(),
        }

    def request_stop(self) -> None:
        self.source.stop()

    def run(self) -> None:
        self.source.check()
        metrics.GATEWAY_ACCOUNT.labels(self.settings.gateway_account).set(1)
        self.health.start()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.source.stop())
        if self.relay is not None:
            self.relay.start()
        # The stand-in for the Telegram connection: up while the spool is followed.
        metrics.GATEWAY_CONNECTED.set(1)
        try:
            self.source.run()
        finally:
            metrics.GATEWAY_CONNECTED.set(0)
            if self.relay is not None:
                self.relay.stop()
            with contextlib.suppress(Exception):
                self.health.stop()


def run_spool_gateway(settings: Settings) -> None:
    with components(settings, source="gateway") as parts:
        SpoolGatewayService(settings, parts).run()
