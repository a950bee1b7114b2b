"""Legacy table → new schema, on a real PostgreSQL: import, verify, fingerprint, carry back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tgstack import cli
from tgstack.legacy.carry import carry_back
from tgstack.legacy.importer import import_legacy
from tgstack.legacy.mapping import channel_key_sql, parse_legacy_channel_id
from tgstack.legacy.verify import fingerprint, verify_migration
from tgstack_testing.legacy.schema import create_legacy_schema
from tgstack_testing.legacy.seed import seed_legacy
from tgstack_testing.localstack import DataStack

CHANNEL = -1001649127710
OTHER = -1001744113331


def rows(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        return conn.execute(query, params or None).fetchall()


def scalar(dsn: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    return rows(dsn, query, params)[0][0]


@pytest.fixture
def legacy_dsn(data_stack: DataStack) -> Iterator[str]:
    """An empty database standing for the old shared database."""
    name = f"legacy_{uuid.uuid4().hex[:10]}"
    data_stack.postgres.create_database(name, "postgres")
    try:
        yield data_stack.postgres.superuser_dsn(name)
    finally:
        data_stack.postgres.drop_database(name)


@pytest.fixture
def empty_legacy(legacy_dsn: str) -> str:
    with psycopg.connect(legacy_dsn) as conn:
        create_legacy_schema(
            conn,
            first_month=datetime(2025, 1, 1, tzinfo=UTC).date(),
            last_month=datetime(2025, 3, 1, tzinfo=UTC).date(),
        )
    return legacy_dsn


BASE = datetime(2025, 2, 3, 12, 0, tzinfo=UTC)


def insert_legacy(dsn: str, **fields: Any) -> str:
    """One legacy row; returns its id."""
    row: dict[str, Any] = {
        "channel_id": str(CHANNEL),
        "message_id": 1,
        "text": "Bom dia",
        "status": "published",
        "telegram_date": BASE,
        "created_at": BASE + timedelta(seconds=1),
        "updated_at": BASE + timedelta(seconds=2),
        "metadata": {},
    } | fields
    for key in ("metadata", "media_refs"):
        if key in row and row[key] is not None:
            row[key] = Jsonb(row[key])
    columns = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    return str(
        scalar(
            dsn,
            f"INSERT INTO telegram_gateway.messages ({columns}) VALUES ({marks}) RETURNING id",
            tuple(row.values()),
        )
    )


def new_row(dsn: str, channel_id: int, message_id: int) -> dict[str, Any]:
    with (
        psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn,
        conn.cursor(row_factory=psycopg.rows.dict_row) as cur,
    ):
        found = cur.execute(
            "SELECT * FROM telegram_gateway.messages WHERE channel_id = %s AND message_id = %s",
            (channel_id, message_id),
        ).fetchall()
    assert len(found) == 1, f"{len(found)} rows for {channel_id}/{message_id}"
    return dict(found[0])


# ----- channel ids ---------------------------------------------------------------------------

CHANNEL_SPELLINGS = [
    "-1001649127710",
    " -1001649127710 ",
    "\t-1001649127710\n",
    "1649127710",
    "-1000000000001",
    "-1999999999999",
    "-2000000000000",
    "999999999999",
    "1000000000000",
    "-1000000000000",
    "-123456",
    "0",
    "",
    "@tp_capital",
    "-100164912771O",
    "+1649127710",
    "00001649127710",
    "-00",
    "12345678901234",
]


def test_sql_and_python_map_legacy_channel_ids_alike(legacy_dsn: str) -> None:
    expression = channel_key_sql("raw")
    with psycopg.connect(legacy_dsn, autocommit=True) as conn:
        for raw in CHANNEL_SPELLINGS:
            found = conn.execute(f"SELECT {expression} FROM (SELECT %s::text AS raw) s", (raw,))
            row = found.fetchone()
            assert row is not None
            assert row[0] == parse_legacy_channel_id(raw), raw


# ----- import --------------------------------------------------------------------------------


def test_import_moves_every_legacy_post_once_and_verification_passes(
    legacy_dsn: str, db: Any
) -> None:
    seeded = seed_legacy(legacy_dsn, 4000, seed=7)
    summary = import_legacy(legacy_dsn, db.direct_dsn, batch_size=700)

    assert summary.legacy_rows == seeded.rows
    assert summary.duplicates == seeded.duplicates
    # unmapped channel ids and the message id 0 are left out, each named with its reason
    assert summary.rejected_rows == seeded.unmapped_rows + seeded.bad_message_ids
    assert len(summary.rejections) == summary.rejected_rows
    assert summary.imported == summary.messages - seeded.bad_message_ids
    assert summary.already_present == 0
    stored = scalar(db.direct_dsn, "SELECT count(*) FROM telegram_gateway.messages")
    assert summary.imported == stored
    assert set(summary.statuses) == {
        "received", "retrying", "published", "queued", "failed", "reprocess_pending",
        "reprocessed", "deleted",
    }  # fmt: skip
    assert seeded.rows == (
        summary.imported + summary.duplicates + summary.rejected_rows
    ), "every legacy row is imported, folded into its post, or rejected"

    verification = verify_migration(legacy_dsn, db.direct_dsn)
    assert verification.ok, verification.as_dict()
    totals = verification.totals()
    assert totals["found"] == summary.imported
    assert totals["missing"] == totals["differing"] == totals["new_only"] == 0
    assert len(verification.channels) == 5


def test_import_twice_imports_nothing_new(legacy_dsn: str, db: Any) -> None:
    seed_legacy(legacy_dsn, 1500, seed=3)
    first = import_legacy(legacy_dsn, db.direct_dsn)
    before = rows(
        db.direct_dsn,
        "SELECT channel_id, message_id, updated_at FROM telegram_gateway.messages ORDER BY 1, 2",
    )
    second = import_legacy(legacy_dsn, db.direct_dsn)

    assert second.imported == 0
    assert second.already_present == first.imported
    after = rows(
        db.direct_dsn,
        "SELECT channel_id, message_id, updated_at FROM telegram_gateway.messages ORDER BY 1, 2",
    )
    assert after == before


def test_statuses_processed_by_and_timestamps_are_mapped(empty_legacy: str, db: Any) -> None:
    legacy = empty_legacy
    processed = {"processed_by": "tp-capital", "processed_at": "2025-02-03T12:00:05+00:00"}
    cases = {
        1: ("published", processed, {"published_at": BASE + timedelta(seconds=1)}),
        2: ("published", {}, {"published_at": BASE + timedelta(seconds=1)}),
        3: ("received", {}, {}),
        4: ("retrying", {}, {"failed_at": BASE + timedelta(seconds=3)}),
        5: ("queued", {}, {"queued_at": BASE + timedelta(seconds=1)}),
        6: ("failed", processed, {"failed_at": BASE + timedelta(seconds=3)}),
        7: ("reprocess_pending", processed, {"published_at": BASE}),
        8: ("reprocessed", {}, {"published_at": BASE}),
        9: ("deleted", {}, {"deleted_at": BASE + timedelta(hours=1)}),
        10: ("published", {}, {"deleted_at": BASE + timedelta(hours=2)}),
    }
    for message_id, (status, metadata, extra) in cases.items():
        insert_legacy(legacy, message_id=message_id, status=status, metadata=metadata, **extra)
    import_legacy(legacy, db.direct_dsn)

    expected = {
        1: ("published", "processed"),
        2: ("published", "pending"),
        3: ("received", "pending"),
        4: ("retrying", "pending"),
        5: ("queued", "pending"),
        6: ("failed", "processed"),
        7: ("reprocess_pending", "pending"),
        8: ("reprocessed", "processed"),
        9: ("deleted", "ignored"),
        10: ("deleted", "ignored"),
    }
    for message_id, (status, state) in expected.items():
        row = new_row(db.direct_dsn, CHANNEL, message_id)
        assert (row["status"], row["processing_state"]) == (status, state), message_id
        assert row["metadata"]["legacy"]["status"] == cases[message_id][0]
    one = new_row(db.direct_dsn, CHANNEL, 1)
    assert one["metadata"]["processed_by"] == "tp-capital"
    assert one["processed_at"] == datetime(2025, 2, 3, 12, 0, 5, tzinfo=UTC)
    assert one["created_at"] == BASE + timedelta(seconds=1)
    assert one["updated_at"] == BASE + timedelta(seconds=2)
    # a finished post without published_at gets one, so the outbox leaves history alone
    six = new_row(db.direct_dsn, CHANNEL, 6)
    assert six["published_at"] == BASE + timedelta(seconds=2)
    assert six["metadata"]["legacy"]["published_at_filled"] is True
    assert six["failed_at"] == BASE + timedelta(seconds=3)
    assert new_row(db.direct_dsn, CHANNEL, 9)["deleted_at"] == BASE + timedelta(hours=1)
    assert new_row(db.direct_dsn, CHANNEL, 10)["deleted_at"] == BASE + timedelta(hours=2)
    # pending posts stay unpublished: the outbox relay publishes them, the poller takes them
    unpublished = rows(
        db.direct_dsn,
        "SELECT message_id FROM telegram_gateway.get_unpublished_messages(0, 100) ORDER BY 1",
    )
    assert [r[0] for r in unpublished] == [3, 4, 5]
    assert scalar(
        db.direct_dsn,
        "SELECT last_message_id FROM telegram_gateway.channel_cursors WHERE channel_id = %s",
        (CHANNEL,),
    ) == 10


def test_duplicates_fold_into_the_copy_that_went_furthest(empty_legacy: str, db: Any) -> None:
    legacy = empty_legacy
    later = BASE + timedelta(days=30)
    first = insert_legacy(legacy, message_id=5, status="received", text="v1")
    done = insert_legacy(
        legacy,
        message_id=5,
        channel_id=" 1649127710 ",  # the same channel, spelled another way
        status="published",
        text="v1",
        created_at=later,
        updated_at=later,
        metadata={"processed_by": "tp-capital"},
    )
    summary = import_legacy(legacy, db.direct_dsn)

    assert (summary.messages, summary.duplicates, summary.imported) == (1, 1, 1)
    row = new_row(db.direct_dsn, CHANNEL, 5)
    assert row["metadata"]["legacy"]["id"] == done
    assert row["metadata"]["legacy"]["copy_ids"] == [first]
    assert row["processing_state"] == "processed"
    assert verify_migration(legacy, db.direct_dsn).ok


def test_missing_telegram_date_falls_back_to_received_at(empty_legacy: str, db: Any) -> None:
    insert_legacy(empty_legacy, message_id=9, telegram_date=None, received_at=BASE)
    import_legacy(empty_legacy, db.direct_dsn)
    row = new_row(db.direct_dsn, CHANNEL, 9)
    assert row["telegram_date"] == BASE
    assert row["metadata"]["legacy"]["telegram_date_from"] == "received_at"
    assert verify_migration(empty_legacy, db.direct_dsn).ok


# ----- verification --------------------------------------------------------------------------


def test_verification_names_missing_and_differing_posts(legacy_dsn: str, db: Any) -> None:
    seed_legacy(legacy_dsn, 600, seed=5)
    import_legacy(legacy_dsn, db.direct_dsn)
    victim, changed = rows(
        db.direct_dsn,
        "SELECT channel_id, message_id FROM telegram_gateway.messages"
        " WHERE channel_id = %s AND text IS NOT NULL ORDER BY message_id LIMIT 2",
        (CHANNEL,),
    )
    with psycopg.connect(db.direct_dsn, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM telegram_gateway.messages WHERE channel_id = %s AND message_id = %s",
            victim,
        )
        conn.execute(
            "UPDATE telegram_gateway.messages SET text = text || '!'"
            " WHERE channel_id = %s AND message_id = %s",
            changed,
        )
    verification = verify_migration(legacy_dsn, db.direct_dsn)

    assert not verification.ok
    bad = next(c for c in verification.channels if c.channel_id == CHANNEL)
    assert (bad.missing, bad.differing) == (1, 1)
    assert bad.missing_sample == [victim[1]]
    assert bad.differing_sample == [changed[1]]
    assert bad.legacy_checksum != bad.new_checksum
    assert all(c.ok for c in verification.channels if c.channel_id != CHANNEL)


def test_edits_and_new_posts_on_the_new_stack_keep_verification_green(
    empty_legacy: str, db: Any
) -> None:
    for message_id in (1, 2, 3):
        insert_legacy(empty_legacy, message_id=message_id, text=f"post {message_id}")
    import_legacy(empty_legacy, db.direct_dsn)
    with psycopg.connect(db.direct_dsn, autocommit=True) as conn:
        applied = conn.execute(
            "SELECT telegram_gateway.apply_message_edit(%s, 2, %s, 'post 2, edited')",
            (CHANNEL, BASE + timedelta(minutes=5)),
        ).fetchone()
        assert applied == (True,)
        conn.execute(
            "SELECT * FROM telegram_gateway.bulk_upsert_messages(%s)",
            (Jsonb([{"channel_id": CHANNEL, "message_id": 4, "telegram_date": BASE.isoformat()}]),),
        )
    verification = verify_migration(empty_legacy, db.direct_dsn)
    assert verification.ok, verification.as_dict()
    assert verification.channels[0].new_only == 1


# ----- fingerprint and carry back --------------------------------------------------------------


def test_fingerprint_changes_with_any_column_of_any_row(legacy_dsn: str) -> None:
    seed_legacy(legacy_dsn, 300, seed=2)
    before = fingerprint(legacy_dsn)
    assert before == fingerprint(legacy_dsn)
    with psycopg.connect(legacy_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE telegram_gateway.messages SET metadata = metadata || '{\"views\": -1}'"
            " WHERE id = (SELECT id FROM telegram_gateway.messages ORDER BY id LIMIT 1)"
        )
    after = fingerprint(legacy_dsn)
    assert after["rows"] == before["rows"]
    assert after["checksum"] != before["checksum"]
    changed = [ch for ch in before["channels"] if before["channels"][ch] != after["channels"][ch]]
    assert len(changed) == 1


def test_carry_back_copies_only_what_the_legacy_table_lacks_once(
    legacy_dsn: str, db: Any
) -> None:
    seed_legacy(legacy_dsn, 800, seed=4)
    before = fingerprint(legacy_dsn)
    import_legacy(legacy_dsn, db.direct_dsn)
    # after the cutover the new stack stores posts of its own, one is processed
    posts = [
        {"channel_id": CHANNEL, "message_id": 900_000 + i, "telegram_date": BASE.isoformat(),
         "text": f"depois do corte {i}", "source": "spool"}
        for i in range(25)
    ]  # fmt: skip
    with psycopg.connect(db.direct_dsn, autocommit=True) as conn:
        conn.execute("SELECT * FROM telegram_gateway.bulk_upsert_messages(%s)", (Jsonb(posts),))
        conn.execute(
            "UPDATE telegram_gateway.messages SET processing_state = 'processed',"
            " metadata = metadata || '{\"processed_by\": \"tp-capital\"}'"
            " WHERE channel_id = %s AND message_id = 900000",
            (CHANNEL,),
        )
    first = carry_back(db.direct_dsn, legacy_dsn, migration_id="m1")
    second = carry_back(db.direct_dsn, legacy_dsn, migration_id="m1")

    assert first["carried_back"] == 25
    assert first["channels"] == {str(CHANNEL): 25}
    assert second["carried_back"] == 0
    assert fingerprint(legacy_dsn, exclude_carried_from="m1")["checksum"] == before["checksum"]
    assert fingerprint(legacy_dsn)["rows"] == before["rows"] + 25
    carried = rows(
        legacy_dsn,
        "SELECT channel_id, source, status, metadata FROM telegram_gateway.messages"
        " WHERE message_id = 900000",
    )
    assert len(carried) == 1
    channel_text, source, status, metadata = carried[0]
    assert (channel_text, source, status) == (str(CHANNEL), "user_client", "received")
    assert metadata["processed_by"] == "tp-capital"
    assert metadata["tgstack"] == {
        "carried_back_from": "m1", "source": "spool", "processing_state": "processed",
    }  # fmt: skip


# ----- the command line ----------------------------------------------------------------------


def test_cli_imports_verifies_and_fails_verification_on_a_loss(
    legacy_dsn: str,
    db: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    monkeypatch.setenv("TGSTACK_LEGACY_DATABASE_URL", legacy_dsn)
    monkeypatch.setenv("TGSTACK_DATABASE_URL", db.app_dsn)
    monkeypatch.setenv("TGSTACK_DATABASE_ADMIN_URL", db.direct_dsn)
    assert cli.main(["legacy", "seed", "--posts", "500", "--channels", "3"]) == 0
    seeded = json.loads(capsys.readouterr().out)
    report = tmp_path / "import.json"
    assert cli.main(["legacy", "import", "--output", str(report)]) == 0
    imported = json.loads(capsys.readouterr().out)
    assert imported["legacy_rows"] == seeded["rows"]
    assert report.stat().st_mode & 0o777 == 0o600
    assert json.loads(report.read_text())["imported"] == imported["imported"]

    allowed = str(imported["rejected_rows"])
    assert cli.main(["legacy", "verify", "--max-rejected", allowed]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert cli.main(["legacy", "verify"]) == 1, "rejected rows above the allowance fail"
    capsys.readouterr()

    with psycopg.connect(db.direct_dsn, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM telegram_gateway.messages WHERE (channel_id, message_id) ="
            " (SELECT channel_id, message_id FROM telegram_gateway.messages LIMIT 1)"
        )
    assert cli.main(["legacy", "verify", "--max-rejected", allowed]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False
    assert result["totals"]["missing"] == 1


def test_cli_without_the_legacy_dsn_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TGSTACK_LEGACY_DATABASE_URL", raising=False)
    assert cli.main(["legacy", "fingerprint"]) == 2
    assert "TGSTACK_LEGACY_DATABASE_URL" in capsys.readouterr().err


def test_seed_script_loads_the_same_rows_as_seeding_directly(
    data_stack: DataStack, legacy_dsn: str, tmp_path: Any
) -> None:
    import subprocess

    from tgstack_testing.legacy.seed import seed_sql
    from tgstack_testing.localstack import postgres_bin_dir

    seed_legacy(legacy_dsn, 700, seed=9)
    lines, summary = seed_sql(700, seed=9)
    script = tmp_path / "seed.sql"
    script.write_text("".join(lines), encoding="utf-8")
    other = f"legacy_{uuid.uuid4().hex[:10]}"
    data_stack.postgres.create_database(other, "postgres")
    try:
        other_dsn = data_stack.postgres.superuser_dsn(other)
        subprocess.run(
            [str(postgres_bin_dir() / "psql"), "-v", "ON_ERROR_STOP=1", "-q", "-d", other_dsn,
             "-f", str(script)],
            check=True, capture_output=True,
        )  # fmt: skip
        loaded = fingerprint(other_dsn)
        assert loaded["rows"] == summary.rows
        assert loaded == fingerprint(legacy_dsn)
    finally:
        data_stack.postgres.drop_database(other)


ROLE_FINGERPRINT_SQL = (
    __import__("pathlib").Path(__file__).resolve().parents[2]
    / "roles/tgstack_migration/files/legacy-fingerprint.sql"
)


def psql_fingerprint(dsn: str, migration: str = "", schema: str = "telegram_gateway") -> Any:
    import subprocess

    from tgstack_testing.localstack import postgres_bin_dir

    out = subprocess.run(
        [str(postgres_bin_dir() / "psql"), "-X", "-q", "-At", "-v", f"schema={schema}",
         "-v", f"migration={migration}", "-f", str(ROLE_FINGERPRINT_SQL), "-d", dsn],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def test_the_rollback_playbooks_fingerprint_sql_agrees_with_the_python_one(
    legacy_dsn: str, db: Any
) -> None:
    assert psql_fingerprint(legacy_dsn)["exists"] is False
    seed_legacy(legacy_dsn, 900, seed=12)
    assert psql_fingerprint(legacy_dsn) == fingerprint(legacy_dsn)
    import_legacy(legacy_dsn, db.direct_dsn)
    with psycopg.connect(db.direct_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT * FROM telegram_gateway.bulk_upsert_messages(%s)",
            (Jsonb([{"channel_id": OTHER, "message_id": 999_999, "telegram_date": BASE.isoformat(),
                     "text": "novo"}]),),
        )  # fmt: skip
    carry_back(db.direct_dsn, legacy_dsn, migration_id="20260101T000000Z")
    excluded = psql_fingerprint(legacy_dsn, "20260101T000000Z")
    assert excluded == fingerprint(legacy_dsn, exclude_carried_from="20260101T000000Z")
    assert excluded["carried_back_rows"] == 1
    assert psql_fingerprint(legacy_dsn) == fingerprint(legacy_dsn)
