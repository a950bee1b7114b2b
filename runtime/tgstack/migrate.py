"""Apply the numbered SQL migrations (``sql/NNN_name.sql``) to a database, each exactly once.

Every migration runs in its own transaction together with its row in the ledger
(``tgstack_meta.schema_migrations``: name, sha256 checksum, applied_at). Inside that transaction
the migrator first takes a transaction-scoped advisory lock and re-reads the ledger, so two
migrators started at once apply each file once; the lock is transaction-scoped, which also
works through PgBouncer in transaction pooling mode. A file whose content changed after it was
applied is an error naming the file. Running the migrator again changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

Log = Callable[[str], None]

LEDGER_TABLE = "tgstack_meta.schema_migrations"
SQL_DIR_ENV = "TGSTACK_SQL_DIR"
# One advisory lock id for every tgstack migrator (first 8 bytes of a fixed sha256).
ADVISORY_LOCK_ID = int.from_bytes(
    hashlib.sha256(b"tgstack.schema_migrations").digest()[:8], "big", signed=True
)

_FILE_NAME = re.compile(r"^(?P<number>\d{3,})_[a-z0-9_]+\.sql$")

_CREATE_LEDGER = """
CREATE SCHEMA IF NOT EXISTS tgstack_meta;
CREATE TABLE IF NOT EXISTS tgstack_meta.schema_migrations (
    name         text        PRIMARY KEY,
    checksum     text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at   timestamptz NOT NULL DEFAULT now(),
    execution_ms integer     NOT NULL DEFAULT 0
);
"""


class MigrationError(RuntimeError):
    """A migration could not be read or applied; the message names the file."""


class ChecksumMismatch(MigrationError):
    """An applied migration's file has changed since it was applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    name: str
    path: Path
    sql: str
    checksum: str


@dataclass(frozen=True, slots=True)
class MigrationState:
    """A migration file and whether (when) the database has applied it."""

    name: str
    checksum: str
    applied_at: datetime | None
    recorded_checksum: str | None = None

    @property
    def applied(self) -> bool:
        return self.applied_at is not None

    @property
    def changed(self) -> bool:
        """Applied, but the file on disk is no longer what was applied."""
        return self.recorded_checksum is not None and self.recorded_checksum != self.checksum


def default_migrations_dir() -> Path:
    """``$TGSTACK_SQL_DIR`` if set, else the ``sql`` directory shipped in the package."""
    configured = os.environ.get(SQL_DIR_ENV)
    directory = Path(configured) if configured else Path(__file__).parent / "sql"
    if not directory.is_dir():
        source = f"${SQL_DIR_ENV}" if configured else "the tgstack package"
        raise MigrationError(f"migrations directory {directory} (from {source}) does not exist")
    return directory


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files of a directory, ordered by number."""
    directory = directory or default_migrations_dir()
    by_number: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNN_lowercase_name.sql")
        number = int(match["number"])
        if number in by_number:
            raise MigrationError(
                f"{path.name} and {by_number[number].name} share the number {number}"
            )
        data = path.read_bytes()
        by_number[number] = Migration(
            name=path.name,
            path=path,
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [by_number[number] for number in sorted(by_number)]


def apply_migrations(
    conninfo: str,
    *,
    migrations_dir: Path | None = None,
    log: Log | None = None,
) -> list[str]:
    """Apply the pending migrations in order; return the names applied by this call."""
    say = log or _quiet
    migrations = load_migrations(migrations_dir)
    applied: list[str] = []
    with _connect(conninfo, say) as conn:
        _ensure_ledger(conn)
        recorded = _recorded_checksums(conn)
        _verify_checksums(migrations, recorded)
        _note_unknown(migrations, recorded, say)
        for migration in migrations:
            if migration.name not in recorded and _apply_one(conn, migration, say):
                applied.append(migration.name)
    say(f"{len(applied)} migration(s) applied, {len(migrations) - len(applied)} already present")
    return applied


def migration_status(conninfo: str, *, migrations_dir: Path | None = None) -> list[MigrationState]:
    """Each migration file with its applied time (None while pending). Changes nothing."""
    migrations = load_migrations(migrations_dir)
    with _connect(conninfo, _quiet) as conn:
        rows = _ledger_rows(conn) if _ledger_exists(conn) else {}
    states = []
    for migration in migrations:
        recorded_checksum, applied_at = rows.get(migration.name, (None, None))
        states.append(
            MigrationState(migration.name, migration.checksum, applied_at, recorded_checksum)
        )
    return states


# Internals ------------------------------------------------------------------------------------


def _quiet(_message: str) -> None:
    return None


@contextmanager
def _connect(conninfo: str, say: Log) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    # autocommit: transactions are explicit; prepare_threshold=None: PgBouncer-safe.
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        conn.add_notice_handler(lambda diag: say(f"notice: {diag.message_primary}"))
        yield conn


def _lock(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_ID,))


def _ledger_exists(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (LEDGER_TABLE,)).fetchone()
    return bool(row and row[0])


def _ensure_ledger(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    if _ledger_exists(conn):
        return
    with conn.transaction():
        _lock(conn)
        if not _ledger_exists(conn):
            conn.execute(_CREATE_LEDGER)


def _ledger_rows(
    conn: psycopg.Connection[tuple[object, ...]],
) -> dict[str, tuple[str, datetime]]:
    rows = conn.execute(
        "SELECT name, checksum, applied_at FROM tgstack_meta.schema_migrations"
    ).fetchall()
    ledger: dict[str, tuple[str, datetime]] = {}
    for name, checksum, applied_at in rows:
        assert isinstance(applied_at, datetime)
        ledger[str(name)] = (str(checksum), applied_at)
    return ledger


def _recorded_checksums(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, str]:
    return {name: checksum for name, (checksum, _) in _ledger_rows(conn).items()}


def _recorded_checksum(conn: psycopg.Connection[tuple[object, ...]], name: str) -> str | None:
    row = conn.execute(
        "SELECT checksum FROM tgstack_meta.schema_migrations WHERE name = %s", (name,)
    ).fetchone()
    return None if row is None else str(row[0])


def _verify_checksums(migrations: Sequence[Migration], recorded: dict[str, str]) -> None:
    for migration in migrations:
        _verify_checksum(migration, recorded.get(migration.name))


def _verify_checksum(migration: Migration, recorded: str | None) -> None:
    if recorded is not None and recorded != migration.checksum:
        raise ChecksumMismatch(
            f"{migration.name} was changed after it was applied "
            f"(applied sha256 {recorded[:12]}…, file sha256 {migration.checksum[:12]}…); "
            "add a new migration instead of editing an applied one"
        )


def _note_unknown(migrations: Sequence[Migration], recorded: dict[str, str], say: Log) -> None:
    unknown = sorted(set(recorded) - {m.name for m in migrations})
    if unknown:
        say(f"the database has migrations this release does not know: {', '.join(unknown)}")


def _apply_one(
    conn: psycopg.Connection[tuple[object, ...]], migration: Migration, say: Log
) -> bool:
    """Apply one migration unless another migrator did; True when this call applied it."""
    started = time.monotonic()
    try:
        with conn.transaction():
            _lock(conn)
            recorded = _recorded_checksum(conn, migration.name)
            if recorded is not None:
                _verify_checksum(migration, recorded)
                say(f"{migration.name}: already applied by another migrator")
                return False
            say(f"applying {migration.name}")
            conn.execute(migration.sql.encode("utf-8"))
            elapsed_ms = int((time.monotonic() - started) * 1000)
            conn.execute(
                "INSERT INTO tgstack_meta.schema_migrations (name, checksum, execution_ms)"
                " VALUES (%s, %s, %s)",
                (migration.name, migration.checksum, elapsed_ms),
            )
    except psycopg.Error as exc:
        raise MigrationError(f"migration {migration.name} failed: {exc}") from exc
    say(f"applied {migration.name} in {time.monotonic() - started:.2f}s")
    return True
