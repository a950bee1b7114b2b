"""The API when its dependencies fail, and its shutdown: Redis down, PostgreSQL down, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import redis

from tests.conftest import TestDatabase
from tests.integration.test_api_support import (
    ADMIN_TOKEN,
    CHANNEL_A,
    READ_TOKEN,
    Api,
    Response,
    message,
    running_api,
    store_messages,
)
from tgstack.migrate import apply_migrations
from tgstack_testing.localstack import DataStack, RedisServer, free_port, port_open, wait_until


def _cache_errors(api: Api) -> float:
    for line in api.get("/metrics", token=None).body.decode().splitlines():
        if line.startswith('tgstack_api_cache_total{result="error"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_redis_stopped_answers_come_from_the_database(
    db: TestDatabase, own_redis: RedisServer
) -> None:
    store_messages(db.app_dsn, [message(CHANNEL_A, 1, 0)])
    client = redis.Redis(
        host="127.0.0.1", port=own_redis.port, password=own_redis.password, socket_timeout=0.5
    )
    try:
        with running_api(db.app_dsn, redis_client=client) as api:
            assert api.get("/v1/messages").header("X-Cache") == "miss"
            assert api.get("/v1/messages").header("X-Cache") == "hit"
            own_redis.stop()
            errors_before = _cache_errors(api)
            response = api.get("/v1/messages")
            assert response.status == 200
            assert response.header("X-Cache") == "bypass"
            assert response.json["data"][0]["message_id"] == 1
            assert _cache_errors(api) > errors_before
            # A write while Redis is down still succeeds; its invalidation is owed.
            patched = api.request(
                "PATCH", f"/v1/channels/{CHANNEL_A}", json_body={"title": "t"}, token=ADMIN_TOKEN
            )
            assert patched.status == 200
            health = api.get("/health", token=None)
            assert health.status == 200
            assert health.json["status"] == "degraded"
            assert health.json["redis"]["status"] == "down"

            own_redis.start()
            time.sleep(1.1)  # the cache's cooldown after an error
            fresh = api.get(f"/v1/channels/{CHANNEL_A}")
            assert fresh.status == 200
            assert fresh.json["title"] == "t"
            assert api.get("/health", token=None).json["status"] == "ok"
    finally:
        client.close()


def test_database_stopped_is_503_json_and_recovers(own_data_stack: DataStack) -> None:
    apply_migrations(own_data_stack.direct_dsn)
    store_messages(own_data_stack.app_dsn, [message(CHANNEL_A, 1, 0)])
    with running_api(own_data_stack.app_dsn, statement_timeout_ms=1000) as api:
        assert api.get("/v1/messages").status == 200
        own_data_stack.postgres.stop()
        started = time.monotonic()
        for path in ("/v1/messages", f"/v1/messages/{CHANNEL_A}/1", "/v1/channels"):
            response = api.get(path)
            assert response.status == 503, response.body
            assert response.header("Content-Type") == "application/json"
            assert response.json["error"]["code"] == "unavailable"
            assert response.header("Retry-After")
        assert time.monotonic() - started < 15  # the watchdog ends PgBouncer's wait
        health = api.get("/health", token=None)
        assert health.status == 503
        assert health.json["database"]["status"] == "down"

        own_data_stack.postgres.start()
        wait_until(lambda: api.get("/v1/messages").status == 200, 30, "the API to recover")
        assert api.get("/health", token=None).json["status"] == "ok"


def test_pgbouncer_stopped_is_503_json(own_data_stack: DataStack) -> None:
    apply_migrations(own_data_stack.direct_dsn)
    with running_api(own_data_stack.app_dsn) as api:
        assert api.get("/v1/channels").status == 200
        own_data_stack.pgbouncer.stop()
        response = api.get("/v1/channels")
        assert response.status == 503
        assert response.json["error"]["code"] == "unavailable"


def _start_cli(db: TestDatabase, port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TGSTACK_")}
    env |= {
        "TGSTACK_DATABASE_URL": db.app_dsn,
        "TGSTACK_API_READ_TOKENS": READ_TOKEN,
        "TGSTACK_API_ADMIN_TOKENS": ADMIN_TOKEN,
        "TGSTACK_API_PORT": str(port),
        "TGSTACK_API_SHUTDOWN_GRACE_SECONDS": "20",
    }
    log = (tmp_path / "api.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "tgstack", "api"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def test_sigterm_finishes_the_request_in_progress_then_exits(
    db: TestDatabase, tmp_path: Path
) -> None:
    store_messages(db.app_dsn, [message(CHANNEL_A, 1, 0)])
    port = free_port()
    process = _start_cli(db, port, tmp_path)
    try:
        wait_until(lambda: port_open(port), 20, "tgstack api to listen")
        api = Api("127.0.0.1", port, services=None, server=None)  # type: ignore[arg-type]
        assert api.get("/v1/channels").status == 200

        # Hold the channels table so the next request waits inside the database.
        locker = psycopg.connect(db.superuser_dsn)
        locker.execute("LOCK TABLE telegram_gateway.channels IN ACCESS EXCLUSIVE MODE")
        results: list[Response] = []
        slow = threading.Thread(target=lambda: results.append(api.get("/v1/channels?limit=7")))
        slow.start()
        wait_until(lambda: _waiting_on_lock(db), 10, "the request to wait on the lock")

        process.send_signal(signal.SIGTERM)
        wait_until(lambda: not port_open(port), 5, "the listener to close")
        assert process.poll() is None  # still finishing the request
        time.sleep(0.5)
        locker.rollback()
        locker.close()

        slow.join(10)
        assert results, "the request in progress got no answer"
        assert results[0].status == 200, results
        assert results[0].json["limit"] == 7
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    log = (tmp_path / "api.log").read_text()
    assert '"event": "api_stopped"' in log, log
    assert '"drained": true' in log, log
    assert READ_TOKEN not in log
    assert ADMIN_TOKEN not in log


def _waiting_on_lock(db: TestDatabase) -> bool:
    with psycopg.connect(db.superuser_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE '%%telegram_gateway.channels%%'"
        ).fetchone()
    return bool(row and row[0])


def test_cli_refuses_to_start_without_tokens(db: TestDatabase) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TGSTACK_")}
    env |= {"TGSTACK_DATABASE_URL": db.app_dsn}
    result = subprocess.run(
        [sys.executable, "-m", "tgstack", "api", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "TGSTACK_API_READ_TOKENS" in result.stderr
