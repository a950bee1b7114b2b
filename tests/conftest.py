"""Fixtures that start real servers (PostgreSQL, PgBouncer, Redis + Sentinel, RabbitMQ).

Servers are started from Debian packages on free loopback ports; `make test` installs them.
A test that needs a server gets it from here: nothing is skipped for want of one.
Long-lived servers are session-scoped; tests that stop or kill a server get their own.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from tgstack.config import Settings
from tgstack_testing.localstack import (
    DataStack,
    RabbitMQServer,
    RedisHA,
    RedisServer,
    start_data_stack,
)


@pytest.fixture(scope="session")
def server_root() -> Iterator[Path]:
    """Where test servers keep their data: outside pytest's temp dir, which another pytest
    session on the machine may reset to mode 0700 (PostgreSQL runs as another user)."""
    root = Path(tempfile.mkdtemp(prefix="tgstack-servers-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server_dir(server_root: Path) -> Path:
    """A fresh directory for one test's own servers."""
    path = server_root / f"t-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def data_stack(server_root: Path) -> Iterator[DataStack]:
    stack = start_data_stack(server_root / "data-stack")
    try:
        yield stack
    finally:
        stack.stop()


@dataclass(frozen=True)
class TestDatabase:
    """One freshly migrated database, reached through PgBouncer (app) or directly (admin)."""

    __test__ = False

    name: str
    app_dsn: str
    direct_dsn: str
    superuser_dsn: str


@pytest.fixture(scope="session")
def migrated_template(data_stack: DataStack) -> str:
    """A database with every migration applied, cloned by the `db` fixture."""
    from tgstack.migrate import apply_migrations

    name = "tgstack_template"
    data_stack.postgres.create_database(name, data_stack.app_user)
    direct = data_stack.direct_dsn.replace(f"dbname={data_stack.dbname}", f"dbname={name}")
    apply_migrations(direct)
    return name


def _database_dsns(stack: DataStack, name: str) -> TestDatabase:
    def swap(dsn: str) -> str:
        return dsn.replace(f"dbname={stack.dbname}", f"dbname={name}")

    return TestDatabase(
        name=name,
        app_dsn=swap(stack.app_dsn),
        direct_dsn=swap(stack.direct_dsn),
        superuser_dsn=stack.postgres.superuser_dsn(name),
    )


@pytest.fixture
def db(data_stack: DataStack, migrated_template: str) -> Iterator[TestDatabase]:
    """A fresh, fully migrated database of its own for each test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(data_stack.postgres.superuser_dsn(), autocommit=True) as conn:
        conn.execute(
            f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}" OWNER "{data_stack.app_user}"'
        )
    try:
        yield _database_dsns(data_stack, name)
    finally:
        data_stack.postgres.drop_database(name)


@pytest.fixture
def empty_db(data_stack: DataStack) -> Iterator[TestDatabase]:
    """A fresh database with no migrations applied."""
    name = f"e_{uuid.uuid4().hex[:12]}"
    data_stack.postgres.create_database(name, data_stack.app_user)
    try:
        yield _database_dsns(data_stack, name)
    finally:
        data_stack.postgres.drop_database(name)


@pytest.fixture
def own_data_stack(server_dir: Path) -> Iterator[DataStack]:
    """A PostgreSQL + PgBouncer pair for a test that stops or restarts them."""
    stack = start_data_stack(server_dir / "stack")
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def redis_server(server_root: Path) -> Iterator[RedisServer]:
    server = RedisServer(server_root / "redis", password="test-" + uuid.uuid4().hex)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, password=redis_server.password)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def own_redis(server_dir: Path) -> Iterator[RedisServer]:
    """A Redis server for a test that stops or kills it."""
    server = RedisServer(server_dir / "redis", password="test-" + uuid.uuid4().hex)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_ha(server_dir: Path) -> Iterator[RedisHA]:
    """Master, replica and three Sentinels (quorum 2), with a short down-after for drills."""
    ha = RedisHA(server_dir / "redis-ha", down_after_ms=2000, failover_timeout_ms=4000)
    ha.start()
    try:
        yield ha
    finally:
        ha.stop()


@pytest.fixture(scope="session")
def rabbitmq(server_root: Path) -> Iterator[RabbitMQServer]:
    server = RabbitMQServer(server_root / "rabbitmq")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def amqp_url(rabbitmq: RabbitMQServer) -> str:
    """A fresh, empty vhost on the shared broker, for a test that needs its own topology."""
    return rabbitmq.add_vhost(f"t-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def own_rabbitmq(server_dir: Path) -> Iterator[RabbitMQServer]:
    """A RabbitMQ node for a test that stops or restarts it."""
    server = RabbitMQServer(server_dir / "rabbitmq")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stack_settings(
    db: TestDatabase, redis_server: RedisServer, redis_client: object, amqp_url: str
) -> Settings:
    """Settings of a whole runtime on this test's database, Redis and RabbitMQ."""
    return Settings(
        database_url=db.app_dsn,  # type: ignore[arg-type]
        redis_url=f"redis://:{redis_server.password}@127.0.0.1:{redis_server.port}/0",  # type: ignore[arg-type]
        amqp_url=amqp_url,  # type: ignore[arg-type]
        log_level="WARNING",
    )
