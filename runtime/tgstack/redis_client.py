"""Redis clients: a plain one from a URL, or a Sentinel-aware one that follows failovers.

The Sentinel client asks the Sentinels for the current master before every new connection,
and re-checks at most every ``MASTER_CHECK_INTERVAL`` so pooled connections leave a master
that was replaced while still alive. When the master dies, commands fail with
ConnectionError until the Sentinels promote a replica; retries and the next connection go to
the new master. A connection still open to a demoted master gets READONLY on writes;
redis-py's SentinelManagedConnection drops it and raises ConnectionError, and the retry
reconnects through the Sentinels (``FollowingSentinelConnection``) to the new master.
Callers (``cache.MessageCache``) treat whatever still fails as "Redis unavailable" and take
the database path.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.connection import parse_url
from redis.exceptions import RedisError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

if TYPE_CHECKING:
    from tgstack.config import Settings

RETRIES = 2
"""Retries per command (and per connect) on ConnectionError/TimeoutError."""
BACKOFF_BASE = 0.05
BACKOFF_CAP = 0.25
HEALTH_CHECK_INTERVAL = 5
"""A pooled connection idle longer than this (seconds) is PINGed before it is used."""
MASTER_CHECK_INTERVAL = 1.0
"""How often (seconds, at most) a Sentinel client re-asks the Sentinels who the master is."""
CLIENT_NAME = "tgstack"


class RedisConfigError(ValueError):
    """The arguments do not describe one usable Redis endpoint (the text says why)."""


def retry_policy() -> Retry:
    """Short retries with jittered exponential backoff: ride out a dropped connection,
    give up fast when the server is gone (a failover takes seconds; the caller degrades)."""
    return Retry(ExponentialWithJitterBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), RETRIES)


def create_redis_client(
    *,
    url: str | None = None,
    sentinels: Sequence[tuple[str, int]] = (),
    master_name: str = "tgstack",
    password: str | None = None,
    sentinel_password: str | None = None,
    socket_timeout: float = 0.5,
    db: int = 0,
    client_name: str | None = CLIENT_NAME,
    master_check_interval: float = MASTER_CHECK_INTERVAL,
) -> redis.Redis:
    """Return a client for ``url`` (``redis://``, ``rediss://``, ``unix://``) or for the
    master named ``master_name`` behind ``sentinels`` — exactly one of the two.

    ``password`` authenticates to Redis (it must not also be in the URL);
    ``sentinel_password`` to the Sentinels. ``socket_timeout`` bounds connect and each
    reply. ``master_check_interval`` (Sentinel only) bounds how long pooled connections may
    stay on a master the Sentinels have replaced. Raises RedisConfigError for bad arguments;
    no connection is made here.
    """
    _check_timeout(socket_timeout)
    _check_timeout(master_check_interval, "master_check_interval")
    _check_db(db)
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": retry_policy(),
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "client_name": client_name,
        # A Redis Enterprise handshake; open-source Redis answers it with an error on every
        # new connection (an extra round trip and an errorstat), so leave it off.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    if url is not None and sentinels:
        raise RedisConfigError("give either url or sentinels, not both")
    if url is not None:
        if sentinel_password is not None:
            raise RedisConfigError("sentinel_password needs sentinels")
        return _url_client(url, password, db, options)
    if not sentinels:
        raise RedisConfigError("give a url or at least one sentinel address")
    options["master_check_interval"] = master_check_interval
    return _sentinel_client(list(sentinels), master_name, password, sentinel_password, db, options)


def _url_client(url: str, password: str | None, db: int, options: dict[str, Any]) -> redis.Redis:
    if not isinstance(url, str):
        raise RedisConfigError(f"url must be a string, got {type(url).__name__}")
    try:
        parsed: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:  # the message never contains the URL itself
        raise RedisConfigError(f"invalid Redis URL: {exc}") from exc
    if password is not None and "password" in parsed:
        raise RedisConfigError("password given both in the URL and as an argument")
    if "db" in parsed and db not in (0, parsed["db"]):
        raise RedisConfigError(f"db {db} conflicts with db {parsed['db']} in the URL")
    if "db" not in parsed:
        options["db"] = db
    if password is not None:
        options["password"] = password
    return redis.Redis.from_url(url, **options)


def _sentinel_client(
    sentinels: list[tuple[str, int]],
    master_name: str,
    password: str | None,
    sentinel_password: str | None,
    db: int,
    options: dict[str, Any],
) -> redis.Redis:
    for address in sentinels:
        _check_address(address)
    if not isinstance(master_name, str) or not master_name.strip():
        raise RedisConfigError("master_name must be a non-empty string")
    # Sentinel queries go to each Sentinel in turn, so no retries there: a dead Sentinel
    # is skipped at once instead of being retried while a live one waits.
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
        "retry": Retry(NoBackoff(), 0),
        "password": sentinel_password,
        "maint_notifications_config": options["maint_notifications_config"],
    }
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    client: redis.Redis = manager.master_for(
        master_name,
        connection_pool_class=FollowingSentinelPool,
        connection_class=FollowingSentinelConnection,
        password=password,
        db=db,
        **options,
    )
    return client


class FollowingSentinelConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that also reconnects through the Sentinels on a retry.

    In redis-py 8.1 a command retried after an error reconnects inside
    ``send_packed_command`` to the connection's last host and port, bypassing the Sentinel
    lookup in ``SentinelManagedConnection.connect``: after READONLY from a demoted master
    every retry lands on that same read-only server again. Connecting here first sends the
    retry to the master the Sentinels name now.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # type: ignore[no-untyped-call]
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class FollowingSentinelPool(SentinelConnectionPool):
    """A Sentinel master pool that re-checks the master's address every few seconds.

    redis-py asks the Sentinels only when it opens a connection. After a failover that
    leaves the old master alive (manual failover, partition), a pooled connection would keep
    writing to it until the Sentinels demote it (8 s or more), and those writes are lost.
    Re-checking drops idle connections to a replaced master within ``master_check_interval``.
    """

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        self.master_check_interval = float(kwargs.pop("master_check_interval"))
        self._next_master_check = 0.0
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now >= self._next_master_check:
            self._next_master_check = now + self.master_check_interval
            # Drops idle connections if the master moved. If no Sentinel answers, keep the
            # current connections; a new connection would report the error itself.
            with contextlib.suppress(RedisError):
                self.get_master_address()  # type: ignore[no-untyped-call]
        return super().get_connection(*args, **kwargs)


def close_redis_client(client: redis.Redis) -> None:
    """Close the client's connections and, for a Sentinel client, its Sentinel connections."""
    pool = client.connection_pool
    client.close()
    pool.disconnect()
    if isinstance(pool, SentinelConnectionPool):
        pool.sentinel_manager.close()


def _check_timeout(value: object, name: str = "socket_timeout") -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise RedisConfigError(f"{name} must be a positive number, got {value!r}")


def _check_db(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RedisConfigError(f"db must be a non-negative integer, got {value!r}")


def _check_address(address: object) -> None:
    ok = (
        isinstance(address, tuple)
        and len(address) == 2
        and isinstance(address[0], str)
        and address[0].strip() != ""
        and isinstance(address[1], int)
        and not isinstance(address[1], bool)
        and 1 <= address[1] <= 65535
    )
    if not ok:
        raise RedisConfigError(f"a sentinel address must be (host, port), got {address!r}")


def redis_client_from(settings: Settings) -> redis.Redis:
    """The client the settings describe: Sentinel-aware when Sentinels are listed."""
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    sentinel_password = (
        settings.redis_sentinel_password.get_secret_value()
        if settings.redis_sentinel_password
        else None
    )
    return create_redis_client(
        url=settings.redis_url.get_secret_value() if settings.redis_url else None,
        sentinels=settings.sentinel_addresses,
        master_name=settings.redis_master_name,
        password=password,
        sentinel_password=sentinel_password,
        socket_timeout=settings.redis_socket_timeout,
    )
