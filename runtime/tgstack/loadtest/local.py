"""``--local``: the whole stack on this machine, as a deployment runs it.

Durable PostgreSQL (fsync and synchronous commit on) behind PgBouncer in transaction
pooling, a Redis master with a replica and three Sentinels, and RabbitMQ, all from the
Debian packages on free loopback ports, migrated, torn down after. The servers are started by
the test tooling (``tgstack_testing.localstack``, not in the wheel): ``local_stack`` imports it
when it runs, so this module imports on a server that has the wheel only.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tgstack.config import Settings
from tgstack.migrate import apply_migrations
from tgstack.testing_tools import require_test_tooling

if TYPE_CHECKING:
    from tgstack_testing.localstack import DataStack, RabbitMQServer, RedisHA


@dataclass
class LocalStack:
    base_dir: Path
    data: DataStack
    redis: RedisHA
    rabbitmq: RabbitMQServer

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": self.data.app_dsn,
            "database_admin_url": self.data.direct_dsn,
            "redis_sentinels": [f"{host}:{port}" for host, port in self.redis.sentinel_addresses],
            "redis_master_name": self.redis.master_name,
            "redis_password": self.redis.password,
            "amqp_url": self.rabbitmq.url(),
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    @property
    def superuser_dsn(self) -> str:
        return self.data.postgres.superuser_dsn(self.data.dbname)


@contextlib.contextmanager
def local_stack(
    base_dir: Path | None = None,
    *,
    durable: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> Iterator[LocalStack]:
    require_test_tooling("tgstack loadtest --local")
    from tgstack_testing.localstack import RabbitMQServer, RedisHA, start_data_stack

    base = base_dir or Path(tempfile.mkdtemp(prefix="tgstack-loadtest-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # PostgreSQL runs as another user when we are root
    started: list[object] = []
    try:
        progress(f"starting PostgreSQL + PgBouncer under {base}")
        data = start_data_stack(base / "data", durable=durable)
        started.append(data)
        progress("starting Redis (master, replica, 3 Sentinels) and RabbitMQ")
        redis = RedisHA(base / "redis")
        started.append(redis)
        redis.start()
        rabbitmq = RabbitMQServer(base / "rabbitmq")
        started.append(rabbitmq)
        rabbitmq.start()
        apply_migrations(data.direct_dsn)
        progress("stack up and migrated")
        yield LocalStack(base, data, redis, rabbitmq)
    finally:
        for server in reversed(started):
            with contextlib.suppress(Exception):
                server.stop()  # type: ignore[attr-defined]
        if base_dir is None:
            shutil.rmtree(base, ignore_errors=True)
