"""The rollback scenario, after ansible/migrate.yml converged (and proved idempotent).

In file order: the migration accounted for every legacy row; the runtime works on the imported
posts and stores new ones; a backup restores lost rows; the rollback gives the old installation
back with every legacy row intact and the posts stored since the cutover carried back; a second
rollback changes nothing; a damaged legacy table is repaired from the dump.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from tests.scenarios.conftest import (
    changed_tasks,
    drop_spool_file,
    ephemeral_dir,
    new_scalar,
    new_sql,
    print_figure,
    run_playbook,
    sh,
    wait_for,
)

testinfra_hosts = ["tgstack"]
# Playbook runs take minutes (pyproject's default timeout is 300 s).
pytestmark = pytest.mark.timeout(1800)

MIGRATION_DIR = "/var/backups/tgstack/migration"
LEGACY_DIR = "/opt/legacy/telegram-gateway"
LEGACY_UNIT = "legacy-telegram-gateway.service"
RUNTIME_UNITS = ("tgstack-gateway@main", "tgstack-poller", "tgstack-api")
AFTER_CUTOVER = 600  # posts the new stack stores after the cutover
STATUSES = {
    "received", "retrying", "published", "queued", "failed", "reprocess_pending",
    "reprocessed", "deleted",
}  # fmt: skip


def legacy_sql(host: Any, query: str) -> str:
    return sh(
        host,
        "docker exec legacy-postgres psql -X -At -v ON_ERROR_STOP=1 -U postgres -d tradingsystem"
        f" -c {shlex.quote(query)}",
    )


def server_json(host: Any, path: str) -> Any:
    return json.loads(sh(host, f"cat {shlex.quote(path)}"))


def legacy_fingerprint(host: Any, migration: str = "") -> Any:
    out = sh(
        host,
        f"docker exec -i legacy-postgres psql -X -q -At -U postgres -d tradingsystem"
        f" -v schema=telegram_gateway -v migration={shlex.quote(migration)}"
        f" < {MIGRATION_DIR}/legacy-fingerprint.sql",
    )
    return json.loads(out.splitlines()[-1])


def verify_legacy_vs_new(host: Any) -> Any:
    """`tgstack legacy verify` on the server (its env file names the new database)."""
    password = (ephemeral_dir() / "legacy-db-password").read_text().strip()
    dsn = f"host=127.0.0.1 port=5433 dbname=tradingsystem user=postgres password={password}"
    with host.sudo():
        result = host.run(
            f"TGSTACK_LEGACY_DATABASE_URL={shlex.quote(dsn)} TGSTACK_LOG_LEVEL=WARNING"
            " /usr/local/bin/tgstack legacy verify --max-rejected 100"
        )
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def seeded() -> Any:
    return json.loads((ephemeral_dir() / "legacy-seed.json").read_text().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def state(host: Any) -> Any:
    return server_json(host, f"{MIGRATION_DIR}/state.json")


# ----- the migration ------------------------------------------------------------------------


def test_migration_accounts_for_every_legacy_row(host: Any, seeded: Any, state: Any) -> None:
    report = server_json(host, f"{MIGRATION_DIR}/migration-report.json")
    first = report["import"]["first_run"]
    verification = report["verification"]
    print_figure("legacy rows seeded", seeded["rows"])
    print_figure(
        "first import",
        f"{first['imported']} posts imported, {first['duplicates']} duplicate rows folded,"
        f" {first['rejected_rows']} rows rejected, {first['seconds']} s",
    )
    print_figure("channels verified", len(verification["channels"]))
    assert report["phase"] == "migrated"
    assert first["legacy_rows"] == seeded["rows"]
    assert first["imported"] + first["duplicates"] + first["rejected_rows"] == seeded["rows"]
    assert first["duplicates"] == seeded["duplicates"]
    assert first["rejected_rows"] == seeded["unmapped_rows"] + seeded["bad_message_ids"]
    assert set(first["statuses"]) == STATUSES
    assert verification["ok"] is True
    assert verification["totals"]["missing"] == verification["totals"]["differing"] == 0
    assert len(verification["channels"]) == 5
    for channel in verification["channels"]:
        assert channel["legacy_checksum"] == channel["new_checksum"], channel["channel_id"]
    assert report["import"]["this_run"]["imported"] == 0, "the idempotence run imported again"
    assert state["fingerprint"]["rows"] == seeded["rows"]
    assert host.file(f"{MIGRATION_DIR}/migration-report.md").size > 0


def test_cutover_stopped_the_old_gateway_and_started_the_runtime(host: Any) -> None:
    assert not host.service(LEGACY_UNIT).is_running
    assert not host.service(LEGACY_UNIT).is_enabled
    for unit in RUNTIME_UNITS:
        assert host.service(unit).is_running, unit


def test_backups_are_private(host: Any, state: Any) -> None:
    parts = ("/legacy-sessions.tar.gz", "/legacy-telegram_gateway.dump", "/legacy.env.orig")
    for path in ("", *parts):
        file = host.file(MIGRATION_DIR + path)
        assert file.exists, path
        assert file.user == "root"
        assert file.mode == (0o700 if not path else 0o600), path
    assert state["sessions"]["entries"] >= 3  # the directory and its two files
    print_figure("legacy dump", f"{state['dump']['bytes']} bytes, sha256 {state['dump']['sha256']}")


def test_old_env_file_points_at_the_new_stack(host: Any) -> None:
    env = host.file(f"{LEGACY_DIR}/.env").content_string
    assert "TELEGRAM_DB_PORT=6434" in env
    assert "TELEGRAM_DB_NAME=telegram_gateway" in env


def test_runtime_processes_the_imported_pending_posts(host: Any) -> None:
    query = (
        "SELECT count(*) FROM telegram_gateway.messages"
        " WHERE deleted_at IS NULL AND processing_state IN ('pending', 'processing')"
    )
    _, seconds = wait_for(
        "imported pending posts processed", lambda: new_scalar(host, query) == 0, timeout=600
    )
    unpublished = new_scalar(host, "SELECT telegram_gateway.count_unpublished()")
    signals = new_scalar(host, "SELECT count(*) FROM tp_capital.signals")
    print_figure("imported pending posts processed after the cutover", f"within {seconds:.0f} s")
    print_figure("signals parsed from imported posts", signals)
    assert unpublished == 0
    assert signals > 0


def test_posts_after_the_cutover_are_stored(host: Any) -> None:
    before = new_scalar(host, "SELECT count(*) FROM telegram_gateway.messages")
    drop_spool_file(host, "after-cutover", count=AFTER_CUTOVER, first_id=500_000, seed=21)
    _, seconds = wait_for(
        "posts after the cutover stored",
        lambda: (
            new_scalar(host, "SELECT count(*) FROM telegram_gateway.messages")
            == before + AFTER_CUTOVER
        ),
        timeout=300,
    )
    print_figure("posts stored after the cutover", f"{AFTER_CUTOVER} in {seconds:.1f} s")


# ----- backup and restore --------------------------------------------------------------------


def test_backup_then_restore_brings_back_lost_rows(host: Any) -> None:
    counts = "SELECT count(*) FROM telegram_gateway.messages"
    signals = "SELECT count(*) FROM tp_capital.signals"
    wait_for(
        "the poller idle",
        lambda: (
            new_scalar(
                host,
                "SELECT count(*) FROM telegram_gateway.messages WHERE deleted_at IS NULL"
                " AND processing_state IN ('pending', 'processing')",
            )
            == 0
        ),
        timeout=300,
    )
    messages, signal_rows = new_scalar(host, counts), new_scalar(host, signals)
    backup = run_playbook("backup.yml")
    assert backup.rc == 0, backup.tail()
    archive = sh(host, "ls -1t /var/backups/tgstack/tgstack-backup-*.tar.gz | head -1")
    assert host.file(archive).mode == 0o600
    assert host.file(archive + ".sha256").mode == 0o600
    listing = sh(host, f"tar -tzf {archive}").split()
    assert sorted(listing) == sorted(
        ["manifest.json", "sessions.tar.gz", "postgres.dump", "redis.rdb",
         "rabbitmq-definitions.json"]
    )  # fmt: skip
    print_figure("backup", f"{archive} in {backup.seconds:.0f} s")

    # Lose rows: a bad cleanup deletes a thousand posts and their signals.
    new_sql(
        host,
        "WITH gone AS (DELETE FROM telegram_gateway.message_keys WHERE (channel_id, message_id) IN"
        " (SELECT channel_id, message_id FROM telegram_gateway.message_keys ORDER BY 1, 2"
        " LIMIT 1000) RETURNING channel_id, message_id),"
        " m AS (DELETE FROM telegram_gateway.messages x USING gone g"
        " WHERE x.channel_id = g.channel_id AND x.message_id = g.message_id RETURNING 1)"
        " DELETE FROM tp_capital.signals s USING gone g"
        " WHERE s.channel_id = g.channel_id AND s.message_id = g.message_id",
    )
    assert new_scalar(host, counts) == messages - 1000
    assert not verify_legacy_vs_new(host)["ok"]

    restore = run_playbook("restore.yml")
    assert restore.rc == 0, restore.tail()
    assert new_scalar(host, counts) == messages
    assert new_scalar(host, signals) == signal_rows
    assert verify_legacy_vs_new(host)["ok"]
    for unit in RUNTIME_UNITS:
        assert host.service(unit).is_running, unit
    print_figure(
        "restore", f"{messages} messages, {signal_rows} signals back in {restore.seconds:.0f} s"
    )


# ----- rollback ------------------------------------------------------------------------------


def test_rollback_gives_the_old_installation_back(host: Any, state: Any) -> None:
    original_env = (ephemeral_dir() / "legacy-env.sha256").read_text().split()[0]
    run = run_playbook("rollback.yml")
    assert run.rc == 0, run.tail()
    assert run.changed > 0
    print_figure("rollback", f"{run.seconds:.0f} s, {run.changed} changes")

    report = server_json(host, f"{MIGRATION_DIR}/rollback-report.json")
    rollback = report["rollback"]
    assert report["phase"] == "rolled_back"
    assert rollback["intact"] is True
    assert rollback["dump_restored"] is False, "the legacy table was untouched: no restore"
    assert int(rollback["carried_back"]) == AFTER_CUTOVER
    print_figure("posts carried back into the legacy table", rollback["carried_back"])

    now = legacy_fingerprint(host)
    without_carried = legacy_fingerprint(host, state["id"])
    assert without_carried["checksum"] == state["fingerprint"]["checksum"]
    assert without_carried["rows"] == state["fingerprint"]["rows"]
    assert now["rows"] == state["fingerprint"]["rows"] + AFTER_CUTOVER
    print_figure(
        "legacy rows after rollback",
        f"{now['rows']} = {without_carried['rows']} as dumped + {AFTER_CUTOVER} carried back",
    )
    assert legacy_sql(host, "SELECT count(*) FROM workspace.items") == "500"

    assert host.service(LEGACY_UNIT).is_running
    assert host.service(LEGACY_UNIT).is_enabled
    for unit in RUNTIME_UNITS:
        assert not host.service(unit).is_running, unit
    states = sh(
        host,
        "docker ps -a --filter label=com.docker.compose.project=tgstack-data --format '{{.State}}'",
    ).split()
    assert states, "the new stack's containers are kept"
    assert set(states) == {"exited"}, states
    volumes = sh(host, "docker volume ls --format '{{.Name}}'").split()
    assert "tgstack-data_postgres-data" in volumes
    assert sh(host, f"sha256sum {LEGACY_DIR}/.env").split()[0] == original_env
    env = host.file(f"{LEGACY_DIR}/.env")
    assert (env.mode, env.user) == (0o640, "root")
    sessions = sh(host, f"ls -1 {LEGACY_DIR}/.session").split()
    assert sorted(sessions) == ["telegram-gateway.json", "telegram-gateway.session"]


def test_rollback_again_changes_nothing(host: Any) -> None:
    before = legacy_fingerprint(host)
    run = run_playbook("rollback.yml")
    assert run.rc == 0, run.tail()
    assert run.changed == 0, changed_tasks(run)
    assert legacy_fingerprint(host) == before
    print_figure("second rollback", f"{run.seconds:.0f} s, 0 changes")


def test_rollback_repairs_a_damaged_legacy_table_from_the_dump(host: Any, state: Any) -> None:
    legacy_sql(
        host,
        "DELETE FROM telegram_gateway.messages WHERE id IN"
        " (SELECT id FROM telegram_gateway.messages ORDER BY id LIMIT 1000);"
        " UPDATE telegram_gateway.messages SET status = 'failed'"
        " WHERE id IN (SELECT id FROM telegram_gateway.messages ORDER BY id DESC LIMIT 50)",
    )
    assert legacy_fingerprint(host, state["id"])["checksum"] != state["fingerprint"]["checksum"]
    run = run_playbook("rollback.yml")
    assert run.rc == 0, run.tail()
    report = server_json(host, f"{MIGRATION_DIR}/rollback-report.json")["rollback"]
    assert report["dump_restored"] is True
    assert report["intact"] is True
    assert int(report["carried_back"]) == AFTER_CUTOVER
    set_aside = legacy_sql(
        host,
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'telegram_gateway_before_rollback_%'",
    ).split()
    assert len(set_aside) == 1, "the damaged table is kept, renamed"
    assert legacy_fingerprint(host, state["id"])["checksum"] == state["fingerprint"]["checksum"]
    print_figure(
        "damaged legacy table repaired",
        f"dump restored, {report['carried_back']} posts carried back again, damaged copy kept"
        f" as {set_aside[0]}; {run.seconds:.0f} s",
    )
