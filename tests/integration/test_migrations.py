"""The migrator and the schema it builds, on a real PostgreSQL (directly and through PgBouncer)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import tgstack
from tgstack.migrate import (
    ChecksumMismatch,
    MigrationError,
    apply_migrations,
    default_migrations_dir,
    load_migrations,
    migration_status,
)

REPO_SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
ALL_MIGRATIONS = [path.name for path in sorted(REPO_SQL_DIR.glob("*.sql"))]


def rows(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        return conn.execute(query, params or None).fetchall()


def ledger(dsn: str) -> list[tuple[Any, ...]]:
    return rows(
        dsn, "SELECT name, checksum, applied_at FROM tgstack_meta.schema_migrations ORDER BY name"
    )


def catalog(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every object of the tgstack schemas, with identities that change if it is recreated."""
    schemas = ("telegram_gateway", "tp_capital", "tgstack_meta")
    return {
        "relations": rows(
            dsn,
            "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = ANY(%s) ORDER BY 2, 3",
            (list(schemas),),
        ),
        "functions": rows(
            dsn,
            "SELECT p.oid, p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc)"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = ANY(%s) ORDER BY 2, 3",
            (list(schemas),),
        ),
        "constraints": rows(
            dsn,
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = ANY(%s::regnamespace[]) ORDER BY 1, 2",
            (list(schemas),),
        ),
    }


def copy_migrations(target: Path, names: list[str] | None = None) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in names or ALL_MIGRATIONS:
        shutil.copy(REPO_SQL_DIR / name, target / name)
    return target


# The migrator ----------------------------------------------------------------------------------


def test_apply_migrations_applies_every_file_once_in_order(empty_db: Any) -> None:
    lines: list[str] = []

    applied = apply_migrations(empty_db.direct_dsn, log=lines.append)

    assert applied == ALL_MIGRATIONS
    assert [row[0] for row in ledger(empty_db.direct_dsn)] == ALL_MIGRATIONS
    assert lines.index("applying 001_schema.sql") < lines.index("applying 002_indexes.sql")
    assert any(line.startswith("applied 007_timescaledb.sql") for line in lines)


def test_migrating_twice_changes_nothing(empty_db: Any) -> None:
    apply_migrations(empty_db.direct_dsn)
    before = (ledger(empty_db.direct_dsn), catalog(empty_db.direct_dsn))

    assert apply_migrations(empty_db.direct_dsn) == []

    assert (ledger(empty_db.direct_dsn), catalog(empty_db.direct_dsn)) == before


def test_migrations_apply_through_pgbouncer_transaction_pooling(empty_db: Any) -> None:
    assert apply_migrations(empty_db.app_dsn) == ALL_MIGRATIONS
    assert apply_migrations(empty_db.app_dsn) == []


def test_every_migration_file_can_be_replayed_by_hand(db: Any) -> None:
    before = catalog(db.direct_dsn)

    with psycopg.connect(db.direct_dsn, autocommit=True) as conn:
        for migration in load_migrations(REPO_SQL_DIR):
            conn.execute(migration.sql.encode())

    assert catalog(db.direct_dsn) == before


def test_migration_status_lists_pending_then_applied(empty_db: Any, tmp_path: Path) -> None:
    first_two = copy_migrations(tmp_path / "partial", ALL_MIGRATIONS[:2])

    pending = migration_status(empty_db.direct_dsn, migrations_dir=REPO_SQL_DIR)
    apply_migrations(empty_db.direct_dsn, migrations_dir=first_two)
    partly = migration_status(empty_db.direct_dsn, migrations_dir=REPO_SQL_DIR)

    assert [s.name for s in pending] == ALL_MIGRATIONS
    assert not any(s.applied for s in pending)
    assert [s.applied for s in partly] == [True, True] + [False] * (len(ALL_MIGRATIONS) - 2)
    assert all(s.checksum == s.recorded_checksum for s in partly[:2])
    assert not any(s.changed for s in partly)


def test_migration_status_does_not_create_the_ledger(empty_db: Any) -> None:
    migration_status(empty_db.direct_dsn)

    assert rows(empty_db.direct_dsn, "SELECT to_regclass('tgstack_meta.schema_migrations')") == [
        (None,)
    ]


def test_changed_applied_migration_is_an_error_naming_the_file(
    empty_db: Any, tmp_path: Path
) -> None:
    migrations = copy_migrations(tmp_path / "sql")
    apply_migrations(empty_db.direct_dsn, migrations_dir=migrations)
    with (migrations / "003_functions.sql").open("a") as handle:
        handle.write("\n-- edited after release\n")

    with pytest.raises(ChecksumMismatch, match=r"003_functions.sql was changed"):
        apply_migrations(empty_db.direct_dsn, migrations_dir=migrations)
    states = {s.name: s for s in migration_status(empty_db.direct_dsn, migrations_dir=migrations)}
    assert states["003_functions.sql"].changed
    assert not states["002_indexes.sql"].changed


def test_failed_migration_is_rolled_back_and_not_recorded(empty_db: Any, tmp_path: Path) -> None:
    (tmp_path / "001_good.sql").write_text("CREATE TABLE good (n int);")
    (tmp_path / "002_bad.sql").write_text("CREATE TABLE half_done (n int);\nSELECT 1 / 0;")

    with pytest.raises(MigrationError, match=r"002_bad\.sql failed: division by zero"):
        apply_migrations(empty_db.direct_dsn, migrations_dir=tmp_path)

    assert [row[0] for row in ledger(empty_db.direct_dsn)] == ["001_good.sql"]
    assert rows(empty_db.direct_dsn, "SELECT to_regclass('half_done')") == [(None,)]


def test_concurrent_migrators_apply_each_migration_once(empty_db: Any, tmp_path: Path) -> None:
    # Not idempotent on purpose: a second run of 001 would fail, of 002/003 would double rows.
    (tmp_path / "001_probe.sql").write_text(
        "CREATE TABLE race_probe (n int); SELECT pg_sleep(0.5);"
    )
    (tmp_path / "002_two.sql").write_text("INSERT INTO race_probe VALUES (2);")
    (tmp_path / "003_three.sql").write_text(
        "INSERT INTO race_probe VALUES (3); SELECT pg_sleep(0.2);"
    )
    start = threading.Barrier(2)
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def migrate(label: str, dsn: str) -> None:
        start.wait()
        try:
            results[label] = apply_migrations(dsn, migrations_dir=tmp_path)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [
        threading.Thread(target=migrate, args=("direct", empty_db.direct_dsn)),
        threading.Thread(target=migrate, args=("pgbouncer", empty_db.app_dsn)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    applied = results["direct"] + results["pgbouncer"]
    assert sorted(applied) == ["001_probe.sql", "002_two.sql", "003_three.sql"]
    assert rows(empty_db.direct_dsn, "SELECT n FROM race_probe ORDER BY n") == [(2,), (3,)]


def test_concurrent_migrators_build_the_real_schema_once(empty_db: Any) -> None:
    start = threading.Barrier(3)
    results: list[list[str]] = []

    def migrate() -> None:
        start.wait()
        results.append(apply_migrations(empty_db.app_dsn))

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(name for applied in results for name in applied) == ALL_MIGRATIONS
    assert len(ledger(empty_db.direct_dsn)) == len(ALL_MIGRATIONS)


# Finding the migration files ------------------------------------------------------------------


def test_default_migrations_dir_is_shipped_inside_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TGSTACK_SQL_DIR", raising=False)

    found = default_migrations_dir()

    assert found == Path(tgstack.__file__).parent / "sql"
    assert found.resolve() == REPO_SQL_DIR
    assert [m.name for m in load_migrations()] == ALL_MIGRATIONS


def test_sql_dir_environment_variable_takes_precedence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TGSTACK_SQL_DIR", str(tmp_path))
    assert default_migrations_dir() == tmp_path

    monkeypatch.setenv("TGSTACK_SQL_DIR", str(tmp_path / "missing"))
    with pytest.raises(MigrationError, match=r"TGSTACK_SQL_DIR"):
        default_migrations_dir()


def test_misnamed_or_clashing_migration_files_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "1_short.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"1_short.sql"):
        load_migrations(tmp_path)

    (tmp_path / "1_short.sql").unlink()
    (tmp_path / "004_a.sql").write_text("SELECT 1;")
    (tmp_path / "004_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"share the number 4"):
        load_migrations(tmp_path)


# What the migrations build (plain PostgreSQL path) ---------------------------------------------


def test_plain_postgresql_gets_declarative_monthly_partitions_without_default(db: Any) -> None:
    dsn = db.direct_dsn
    assert rows(dsn, "SELECT tgstack_meta.timescaledb_enabled()") == [(False,)]
    assert rows(
        dsn, "SELECT relkind FROM pg_class WHERE oid = 'telegram_gateway.messages'::regclass"
    ) == [("p",)]
    assert rows(dsn, "SELECT pg_get_partkeydef('telegram_gateway.messages'::regclass)") == [
        ("RANGE (telegram_date)",)
    ]
    assert rows(
        dsn,
        "SELECT count(*) FROM pg_partition_tree('telegram_gateway.messages')"
        " WHERE isleaf AND relid::text LIKE '%default%'",
    ) == [(0,)]


def test_plain_postgresql_gets_refreshable_materialized_aggregates(db: Any) -> None:
    found = rows(
        db.direct_dsn,
        "SELECT c.relname, c.relkind, bool_or(i.indisunique) FROM pg_class c"
        " LEFT JOIN pg_index i ON i.indrelid = c.oid"
        " WHERE c.relnamespace = 'telegram_gateway'::regnamespace"
        " AND c.relname IN ('messages_hourly', 'messages_daily') GROUP BY 1, 2 ORDER BY 1",
    )
    assert found == [("messages_daily", "m", True), ("messages_hourly", "m", True)]


def test_schema_has_the_seed_indexes_on_messages(db: Any) -> None:
    names = {
        row[0]
        for row in rows(
            db.direct_dsn,
            "SELECT indexrelid::regclass::text FROM pg_index"
            " WHERE indrelid = 'telegram_gateway.messages'::regclass",
        )
    }
    expected = {
        "telegram_gateway.messages_pkey",
        "telegram_gateway.idx_telegram_messages_unprocessed",
        "telegram_gateway.idx_telegram_messages_processing",
        "telegram_gateway.idx_telegram_messages_metadata",
        "telegram_gateway.idx_telegram_messages_polling_cover",
        "telegram_gateway.idx_telegram_messages_processed_by",
        "telegram_gateway.idx_telegram_messages_analytics",
    }
    assert expected <= names
    # The outbox has a table of its own (sql/050_publish_outbox.sql).
    assert "telegram_gateway.idx_telegram_messages_outbox" not in names
    outbox = rows(
        db.direct_dsn,
        "SELECT indexrelid::regclass::text FROM pg_index"
        " WHERE indrelid = 'telegram_gateway.message_outbox'::regclass ORDER BY 1",
    )
    assert [row[0] for row in outbox] == [
        "telegram_gateway.idx_message_outbox_unpublished",
        "telegram_gateway.message_outbox_pkey",
    ]


def test_signals_are_unique_per_source_message(db: Any) -> None:
    insert = (
        "INSERT INTO tp_capital.signals (channel_id, message_id, asset, signal_type, buy_min,"
        " buy_max, raw_text) VALUES (-1001649127710, 7, 'PETR4', 'swing_trade', %s, %s, 'x')"
    )
    with psycopg.connect(db.app_dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute(insert, (10.5, 11))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, (12, 13))
        with pytest.raises(psycopg.errors.CheckViolation, match=r"signals_buy_range_check"):
            conn.execute(insert.replace(", 7,", ", 8,"), (12, 11))
        stored = conn.execute("SELECT buy_min, buy_max FROM tp_capital.signals").fetchall()
    assert [(str(a), str(b)) for a, b in stored] == [("10.5", "11")]


def test_the_outbox_migration_carries_the_publish_state_of_stored_messages(
    empty_db: Any, tmp_path: Path
) -> None:
    before_outbox = [name for name in ALL_MIGRATIONS if name < "050_publish_outbox.sql"]
    apply_migrations(empty_db.direct_dsn, migrations_dir=copy_migrations(tmp_path, before_outbox))
    posts = [
        {"channel_id": -1001000000001, "message_id": n, "telegram_date": "2026-11-02T12:00:00Z"}
        for n in (1, 2, 3)
    ]
    with psycopg.connect(empty_db.direct_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT * FROM telegram_gateway.bulk_upsert_messages(%s::jsonb)",
            (Jsonb(posts),),
        )
        conn.execute(
            "SELECT telegram_gateway.mark_batch_as_published("
            "ARRAY[-1001000000001]::bigint[], ARRAY[1]::bigint[])"
        )
        conn.execute(
            "SELECT telegram_gateway.soft_delete_messages(-1001000000001, ARRAY[3]::bigint[])"
        )

    apply_migrations(empty_db.direct_dsn)

    assert rows(
        empty_db.direct_dsn,
        "SELECT message_id, published_at IS NOT NULL, publish_attempts"
        " FROM telegram_gateway.message_outbox ORDER BY 1",
    ) == [(1, True, 1), (2, False, 0), (3, False, 0)]
    assert rows(
        empty_db.direct_dsn,
        "SELECT message_id FROM telegram_gateway.get_unpublished_messages(0, 10)",
    ) == [(2,)]
    assert rows(
        empty_db.direct_dsn,
        "SELECT message_id, status FROM telegram_gateway.message_publish_status ORDER BY 1",
    ) == [(1, "published"), (2, "received"), (3, "deleted")]
