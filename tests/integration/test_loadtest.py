"""``tgstack loadtest`` against real servers: short runs, the zero-loss accounting, the files.

Figures are not asserted (no timed tests); what is asserted is the bookkeeping: every post
sent is counted stored, finished and marked once, each signal post has one signal, and the
accounting notices when that is not so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import TestDatabase
from tgstack.config import Settings
from tgstack.loadtest.accounting import account
from tgstack.loadtest.plan import LOADTEST_CHANNEL_BASE, LoadPlan
from tgstack.loadtest.result import LoadResult
from tgstack.loadtest.runner import run_loadtest


def short_plan(tmp_path: Path, **changes: object) -> LoadPlan:
    values: dict[str, object] = {
        "rate": 200.0,
        "duration": 2.0,
        "channels": 2,
        "pollers": 1,
        "poller_kind": "thread",
        "mode": "queue",
        "warmup": 0.5,
        "drain_timeout": 30.0,
        "label": "test",
        "out_dir": tmp_path / "result",
        "progress": False,
    }
    values.update(changes)
    return LoadPlan(**values)  # type: ignore[arg-type]


def test_a_short_run_stores_finishes_and_signals_every_post_once(
    stack_settings: Settings, tmp_path: Path
) -> None:
    result = run_loadtest(stack_settings, short_plan(tmp_path), out=None)

    acc = result.accounting
    assert result.ok, result.problems()
    assert acc.sent == 400
    assert acc.unique_rows == acc.rows == acc.ledger_keys == 400
    assert acc.processed + acc.ignored == 400
    assert acc.marked_once == 400
    assert acc.signals == acc.expected_signals > 0
    assert acc.duplicate_signals == acc.missing_signals == acc.unexpected_signals == 0
    assert len(result.done) == 400  # every post's latency read back from its row
    assert all(d.sent_at <= d.received_at <= d.processed_at + 1e-3 for d in result.done)


def test_the_result_files_hold_the_figures_the_summary_and_the_plot(
    stack_settings: Settings, tmp_path: Path
) -> None:
    result = run_loadtest(stack_settings, short_plan(tmp_path, rate=100.0), out=None)

    data = json.loads((tmp_path / "result" / "result.json").read_text())
    assert data["ok"] is True
    assert data["accounting"]["sent"] == data["sent"] == 200
    assert data["latency"]["end_to_end_ms"]["n"] > 0
    assert sum(row["sent"] for row in data["timeline"]) == 200
    assert sum(row["done"] for row in data["timeline"]) == 200
    assert len(data["loadavg_before"]) == 3
    assert data["machine"]["nproc"] >= 1
    # the run's deadlocks and longest lock wait, measured (tgstack.loadtest.locks)
    assert data["locks"]["deadlocks"] == 0
    assert data["locks"]["samples"] > 0
    assert data["sustained"] == (data["kept_pace"] and not data["not_sustained_because"])
    summary = (tmp_path / "result" / "summary.md").read_text()
    assert "PASS" in summary
    assert "| lost | 0 |" in summary
    assert "Deadlocks (pg_stat_database, during the run): 0; longest lock wait" in summary
    assert (tmp_path / "result" / "plot.png").read_bytes().startswith(b"\x89PNG")
    assert set(result.files) == {"json", "markdown", "plot"}


def test_a_second_run_on_the_same_database_continues_the_ids(
    stack_settings: Settings, tmp_path: Path
) -> None:
    first = run_loadtest(stack_settings, short_plan(tmp_path, duration=1.0), out=None, write=False)
    second = run_loadtest(stack_settings, short_plan(tmp_path, duration=1.0), out=None, write=False)

    assert first.ok
    assert second.ok
    assert second.accounting.sent == second.accounting.unique_rows == 200
    first_keys = {d.key for d in first.done}
    assert first_keys.isdisjoint(d.key for d in second.done)


def test_the_accounting_notices_a_lost_post_and_a_double_mark(
    stack_settings: Settings, db: TestDatabase, tmp_path: Path
) -> None:
    result = run_loadtest(stack_settings, short_plan(tmp_path, duration=1.0), out=None, write=False)
    lost, doubled = result.done[0].key, result.done[1].key
    with psycopg.connect(db.superuser_dsn, autocommit=True) as conn:
        for table in ("tp_capital.signals", "telegram_gateway.messages"):
            conn.execute(f"DELETE FROM {table} WHERE channel_id = %s AND message_id = %s", lost)
        conn.execute(
            "DELETE FROM telegram_gateway.message_keys WHERE channel_id = %s AND message_id = %s",
            lost,
        )
        conn.execute(
            "UPDATE telegram_gateway.messages SET metadata = metadata || '{\"marks\": 2}'"
            " WHERE channel_id = %s AND message_id = %s",
            doubled,
        )

    signal_keys = [d.key for d in result.done if d.is_signal]
    ranges = {
        channel: (
            min(d.key.message_id for d in result.done if d.key.channel_id == channel),
            max(d.key.message_id for d in result.done if d.key.channel_id == channel),
        )
        for channel in {d.key.channel_id for d in result.done}
    }
    again = account(stack_settings.require_database_url(), ranges, result.sent, signal_keys)

    assert again.lost == 1
    assert again.not_marked_once == 1
    assert not again.ok
    assert "1 posts lost" in again.problems()
    assert again.missing_signals == (1 if result.done[0].is_signal else 0)


@pytest.mark.slow
def test_poller_processes_in_hybrid_mode_lose_and_double_nothing(
    stack_settings: Settings, tmp_path: Path
) -> None:
    plan = short_plan(tmp_path, pollers=3, poller_kind="process", mode="hybrid", duration=5.0)
    result: LoadResult = run_loadtest(stack_settings, plan, out=None)

    assert result.ok, result.problems()
    assert result.poller_exit_codes == [0, 0, 0]  # SIGTERM: graceful
    assert result.accounting.unique_rows == 1000


@pytest.mark.slow
def test_the_cli_runs_against_a_configured_stack_with_its_own_poller_and_cleans_up(
    stack_settings: Settings, db: TestDatabase, tmp_path: Path
) -> None:
    """The deployed-stack path: ``tgstack --env-file … loadtest --pollers 0`` relies on the
    poller already running, reads its metrics, and ``--cleanup`` leaves no row behind."""
    from tgstack.cli import main
    from tgstack.loadtest.fleet import settings_env
    from tgstack_testing.localstack import free_port

    port = free_port()
    deployed = stack_settings.model_copy(update={"poller_port": port})
    env_file = tmp_path / "tgstack.env"
    env_file.write_text(
        "".join(f"{name}={value}\n" for name, value in settings_env(deployed).items())
    )
    env_file.chmod(0o600)
    poller = subprocess.Popen(
        [sys.executable, "-m", "tgstack", "--env-file", str(env_file), "poller", "--mode", "queue"],
        env={k: v for k, v in os.environ.items() if not k.startswith("TGSTACK_")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        code = main(
            [
                "--env-file", str(env_file), "loadtest", "--rate", "100", "--duration", "2",
                "--pollers", "0", "--mode", "queue", "--warmup", "0", "--cleanup",
                "--out", str(tmp_path / "deployed"), "--no-plot",
            ]
        )  # fmt: skip
    finally:
        poller.send_signal(signal.SIGTERM)
        poller.wait(30)
    assert code == 0
    data = json.loads((tmp_path / "deployed" / "result.json").read_text())
    assert data["accounting"]["sent"] == data["accounting"]["unique_rows"] == 200
    assert data["machine"]["servers"]["postgresql"]
    with psycopg.connect(db.superuser_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM telegram_gateway.messages WHERE channel_id <= %s",
            (LOADTEST_CHANNEL_BASE,),
        ).fetchone()
    assert row is not None
    assert row[0] == 0
