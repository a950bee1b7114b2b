"""The spool source (TGSTACK_GATEWAY_SOURCE=spool) against real PostgreSQL and RabbitMQ.

Files dropped into the spool directory end in PostgreSQL exactly once whatever happens: the
same file dropped twice or replaced, a line still being written, the gateway killed with
SIGKILL mid-stream and lines written while it was down.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
from amqpstorm.uri_connection import UriConnection

from tests.conftest import TestDatabase
from tgstack.config import Settings
from tgstack.gateway.spool import POSITIONS_FILE, SpoolSource
from tgstack.gateway.synthetic import generate, to_jsonl_line
from tgstack.gateway.wiring import build_pipeline, components
from tgstack.queue import consumer_queue_name
from tgstack_testing.localstack import free_port, wait_until

CHANNEL = -1001649127710


def lines(count: int, *, first_id: int = 1, seed: int = 1) -> str:
    records = generate(count, channels=(CHANNEL,), seed=seed, first_message_id=first_id)
    return "".join(to_jsonl_line(r) + "\n" for r in records)


def stored(dsn: str) -> tuple[int, int, set[str]]:
    """(rows, distinct keys, sources) in telegram_gateway.messages."""
    with psycopg.connect(dsn, prepare_threshold=None) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (channel_id, message_id)),"
            " coalesce(array_agg(DISTINCT source), '{}')"
            " FROM telegram_gateway.messages"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), set(row[2])


def settings_for(db: TestDatabase, spool: Path, **values: object) -> Settings:
    base: dict[str, object] = {
        "database_url": db.app_dsn,
        "gateway_source": "spool",
        "gateway_spool_dir": spool,
        "gateway_batch_size": 100,
    }
    return Settings(**(base | values))  # type: ignore[arg-type]


def test_a_file_dropped_twice_or_replaced_is_stored_once(db: TestDatabase, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    body = lines(250)
    (spool / "channel.jsonl").write_text(body)
    with components(settings_for(db, spool), source="gateway") as parts:
        source = SpoolSource(spool, build_pipeline(parts), batch_size=100)
        source.check()
        assert source.poll_once() == 250
        assert stored(db.app_dsn) == (250, 250, {"spool"})
        assert source.poll_once() == 0  # nothing new: nothing read again

        (spool / "channel-again.jsonl").write_text(body)  # dropped a second time
        assert source.poll_once() == 250
        replacement = spool / ".incoming"
        replacement.write_text(body)
        os.replace(replacement, spool / "channel.jsonl")  # the same name, a new file
        assert source.poll_once() == 250
        assert source.backlog_bytes() == 0
    assert stored(db.app_dsn) == (250, 250, {"spool"})
    assert (source.totals.stored, source.totals.duplicates) == (250, 500)


def test_a_line_still_being_written_waits_for_its_newline(db: TestDatabase, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    first, second = lines(2).splitlines(keepends=True)
    path = spool / "live.jsonl"
    path.write_text(first + second[:20])
    with components(settings_for(db, spool), source="gateway") as parts:
        source = SpoolSource(spool, build_pipeline(parts))
        source.check()
        assert source.poll_once() == 1
        assert stored(db.app_dsn)[0] == 1
        with path.open("a") as handle:
            handle.write(second[20:])
        assert source.poll_once() == 1
    assert stored(db.app_dsn)[:2] == (2, 2)


def test_rejected_lines_are_skipped_and_the_rest_is_stored(
    db: TestDatabase, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    good = lines(3).splitlines(keepends=True)
    other_channel = json.loads(good[0]) | {"channel_id": -1001000000001, "message_id": 99}
    (spool / "mixed.jsonl").write_text(
        good[0] + "not json\n" + json.dumps(other_channel) + "\n" + good[1] + "\n" + good[2]
    )
    settings = settings_for(db, spool, channels=[CHANNEL])
    with components(settings, source="gateway") as parts:
        source = SpoolSource(spool, build_pipeline(parts), channels=settings.channels)
        source.check()
        assert source.poll_once() == 6  # blank line included
    assert stored(db.app_dsn)[:2] == (3, 3)
    assert source.totals.rejected == 2


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def queue_depth(url: str) -> int:
    connection = UriConnection(url)
    try:
        queue = consumer_queue_name("tp-capital")
        return int(connection.channel().queue.declare(queue, passive=True)["message_count"])
    finally:
        connection.close()


def start_gateway(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tgstack", "gateway"], env=env, stdout=out, stderr=out
        )


def test_gateway_killed_mid_stream_resumes_where_it_was_and_reads_what_came_meanwhile(
    db: TestDatabase, amqp_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGSTACK_")} | {
        "TGSTACK_DATABASE_URL": db.app_dsn,
        "TGSTACK_AMQP_URL": amqp_url,
        "TGSTACK_GATEWAY_SOURCE": "spool",
        "TGSTACK_GATEWAY_SPOOL_DIR": str(spool),
        "TGSTACK_GATEWAY_SPOOL_POLL_SECONDS": "0.2",
        "TGSTACK_GATEWAY_BATCH_SIZE": "50",
        "TGSTACK_GATEWAY_PORT": str(port),
        "TGSTACK_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "gateway.log"
    (spool / "a.jsonl").write_text(lines(4000))
    gateway = start_gateway(env, log)
    try:
        wait_until(lambda: stored(db.app_dsn)[0] >= 300, 60, "first batches stored")
        gateway.send_signal(signal.SIGKILL)  # mid-stream, at any point of a batch
        gateway.wait(10)
        at_kill = stored(db.app_dsn)[0]
        assert 300 <= at_kill < 4000, "the kill should land mid-stream"
        # written while the gateway is down: more of the same file, and a new file
        with (spool / "a.jsonl").open("a") as handle:
            handle.write(lines(500, first_id=4001, seed=2))
        (spool / "b.jsonl").write_text(lines(500, first_id=4501, seed=3))

        gateway = start_gateway(env, log)
        wait_until(lambda: stored(db.app_dsn)[0] >= 5000, 120, "every line stored")
        wait_until(lambda: get(port, "/health")[0] == 200, 20, "gateway health")
        # The read position is saved just after a batch commits: the backlog reaches 0 then.
        wait_until(
            lambda: json.loads(get(port, "/health")[1])["spool_backlog_bytes"] == 0,
            20,
            "the read position recorded at the end of every file",
        )
        assert json.loads(get(port, "/health")[1])["source"] == "spool"
        status, text = get(port, "/metrics")
        assert status == 200
        # resumed from its saved position, not from the start: at most the batch that was
        # committed but not yet recorded when it died is read again
        assert metric(text, "tgstack_gateway_duplicates_total") <= 50
        assert metric(text, "tgstack_gateway_telegram_connected") == 1
        # published like live posts (a post committed but not confirmed when the gateway died
        # is sent by the outbox relay): the tp-capital queue holds every stored post
        wait_until(lambda: queue_depth(amqp_url) >= 5000, 60, "every post published")
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0, log.read_text()[-2000:]
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(10)
    assert stored(db.app_dsn) == (5000, 5000, {"spool"})
    positions = json.loads((spool / POSITIONS_FILE).read_text())["files"]
    assert {name: p["offset"] for name, p in positions.items()} == {
        name: (spool / name).stat().st_size for name in ("a.jsonl", "b.jsonl")
    }
    assert positions["a.jsonl"]["lines"] == 4500


def test_gateway_with_a_missing_spool_directory_exits_78(db: TestDatabase, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGSTACK_")} | {
        "TGSTACK_DATABASE_URL": db.app_dsn,
        "TGSTACK_GATEWAY_SOURCE": "spool",
        "TGSTACK_GATEWAY_SPOOL_DIR": str(tmp_path / "absent"),
        "TGSTACK_GATEWAY_PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tgstack", "gateway"], env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 78
    assert b"TGSTACK_GATEWAY_SPOOL_DIR" in result.stderr
