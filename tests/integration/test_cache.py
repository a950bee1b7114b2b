"""MessageCache against a real Redis server.

The fallback is the database boundary; here it is a plain in-memory store implementing
``cache.MessageSource`` (the PostgreSQL-backed end-to-end test lives with the ``db`` module).
Redis is always real: a session server, or a server of the test's own that it stops.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from redis.connection import Connection

from tgstack import keys
from tgstack.cache import MessageCache, MessageSource
from tgstack.models import MessageKey, MessageRecord, StoredMessage
from tgstack.redis_client import RedisConfigError, close_redis_client, create_redis_client
from tgstack_testing.localstack import RedisServer

CHANNEL = -1001649127710
OTHER_CHANNEL = -1001000000001
# Recent enough that cleanup_expired (real clock, 1 h hot TTL) keeps these messages.
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def record(message_id: int, *, channel_id: int = CHANNEL, seconds: int | None = None,
           text: str | None = None) -> MessageRecord:
    at = BASE + timedelta(seconds=message_id if seconds is None else seconds)
    return MessageRecord.create(
        channel_id, message_id, at,
        text=text if text is not None else f"🟢Swing Trade\nAtivo: PETR4\nCompra: {message_id},50",
        metadata={"source_test": True},
    )


class MemoryStore:
    """The database side of the cache: committed rows, in memory (implements MessageSource)."""

    def __init__(self) -> None:
        self.rows: dict[MessageKey, StoredMessage] = {}
        self.exists_calls = 0
        self.fetch_calls = 0

    def commit(self, rec: MessageRecord) -> None:
        self.rows.setdefault(rec.key, StoredMessage(rec))

    def message_exists(self, channel_id: int, message_id: int) -> bool:
        self.exists_calls += 1
        return MessageKey(channel_id, message_id) in self.rows

    def fetch_unprocessed(self, channel_id: int | None, limit: int) -> list[StoredMessage]:
        self.fetch_calls += 1
        rows = [
            row for row in self.rows.values()
            if row.processing_state == "pending"
            and (channel_id is None or row.record.channel_id == channel_id)
        ]
        rows.sort(key=lambda row: (row.record.telegram_date, row.record.message_id))
        return rows[:limit]


def _store_is_a_message_source(store: MemoryStore) -> MessageSource:
    return store  # mypy checks the Protocol here


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def url_client(server: RedisServer, **options: Any) -> redis.Redis:
    return create_redis_client(url=f"redis://127.0.0.1:{server.port}/0",
                               password=server.password, **options)


@pytest.fixture
def admin(redis_client: redis.Redis) -> redis.Redis:
    """A separate, already flushed connection to look at what the cache wrote."""
    return redis_client


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def cache(redis_server: RedisServer, admin: redis.Redis, store: MemoryStore
          ) -> Iterator[MessageCache]:
    cache = MessageCache(url_client(redis_server), fallback=store)
    try:
        yield cache
    finally:
        cache.close()


def commit_and_cache(cache: MessageCache, store: MemoryStore, *recs: MessageRecord) -> None:
    """What the gateway does: commit in the database first, then cache."""
    for rec in recs:
        store.commit(rec)
        assert cache.cache_message(rec) is True


# -- cache_message --------------------------------------------------------------------------


class CountingConnection(Connection):
    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def test_cache_message_is_one_round_trip_of_four_commands_without_multi(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    pool = redis.ConnectionPool(connection_class=CountingConnection, host="127.0.0.1",
                                port=redis_server.port, password=redis_server.password)
    client = redis.Redis(connection_pool=pool)
    cache = MessageCache(client)
    try:
        client.ping()  # connect (AUTH, HELLO/SETINFO) before counting
        admin.config_resetstat()
        CountingConnection.sends = 0
        assert cache.cache_message(record(1)) is True
        assert CountingConnection.sends == 1
        stats = admin.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()}
        assert calls.get("set") == 2
        assert calls.get("zadd") == 1
        assert calls.get("expire") == 1
        assert "multi" not in calls
        assert "exec" not in calls
    finally:
        cache.close()


def test_cache_message_sets_the_specified_ttls_and_values(
    cache: MessageCache, store: MemoryStore, admin: redis.Redis
) -> None:
    rec = record(42, text="Alvo 1: 1.250,50 — ação 📈")
    commit_and_cache(cache, store, rec)

    msg, dedup, recent = (keys.message_key(CHANNEL, 42), keys.dedup_key(CHANNEL, 42),
                          keys.recent_key(CHANNEL))
    assert 3590 < admin.ttl(msg) <= 3600
    assert 7190 < admin.ttl(dedup) <= 7200
    assert 3590 < admin.ttl(recent) <= 3600
    assert admin.type(recent) == b"zset"
    assert admin.zscore(recent, keys.recent_member(42)) == keys.score_ms(rec.telegram_date)
    body = admin.get(msg)
    assert body is not None
    assert MessageRecord.from_dict(json.loads(body)) == rec


def test_constructor_ttls_override_the_defaults(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    cache = MessageCache(url_client(redis_server), hot_ttl=60, dedup_ttl=120)
    try:
        assert cache.cache_message(record(5))
        assert 55 < admin.ttl(keys.message_key(CHANNEL, 5)) <= 60
        assert 55 < admin.ttl(keys.recent_key(CHANNEL)) <= 60
        assert 115 < admin.ttl(keys.dedup_key(CHANNEL, 5)) <= 120
    finally:
        cache.close()


def test_bodies_and_dedup_markers_expire_and_reads_fall_back_to_the_database(
    redis_server: RedisServer, admin: redis.Redis, store: MemoryStore
) -> None:
    cache = MessageCache(url_client(redis_server), fallback=store, hot_ttl=1, dedup_ttl=1)
    try:
        commit_and_cache(cache, store, record(1), record(2))
        assert [m.key for m in cache.get_unprocessed(CHANNEL, 10)] == [
            (CHANNEL, 1), (CHANNEL, 2)
        ]
        assert store.fetch_calls == 0
        assert cache.is_duplicate(CHANNEL, 1)

        deadline = time.monotonic() + 5
        names = [keys.message_key(CHANNEL, 1), keys.message_key(CHANNEL, 2),
                 keys.dedup_key(CHANNEL, 1), keys.dedup_key(CHANNEL, 2),
                 keys.recent_key(CHANNEL)]
        while admin.exists(*names) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert admin.exists(*names) == 0

        assert [m.key for m in cache.get_unprocessed(CHANNEL, 10)] == [
            (CHANNEL, 1), (CHANNEL, 2)
        ]
        assert store.fetch_calls == 1
        # An expired marker answers "not seen recently"; the DB insert-if-absent decides.
        assert cache.is_duplicate(CHANNEL, 1) is False
        assert store.exists_calls == 0
    finally:
        cache.close()


# -- is_duplicate ---------------------------------------------------------------------------


def test_is_duplicate_is_true_once_cached_and_false_otherwise(
    cache: MessageCache, store: MemoryStore
) -> None:
    assert cache.is_duplicate(CHANNEL, 7) is False
    commit_and_cache(cache, store, record(7))
    assert cache.is_duplicate(CHANNEL, 7) is True
    assert cache.is_duplicate(CHANNEL, 8) is False
    assert cache.is_duplicate(OTHER_CHANNEL, 7) is False
    assert store.exists_calls == 0  # Redis answered every time


# -- get_unprocessed ------------------------------------------------------------------------


def test_empty_window_is_a_miss_answered_by_the_database(
    cache: MessageCache, store: MemoryStore
) -> None:
    store.commit(record(3))  # committed while Redis missed it
    before = sample("tgstack_cache_fallbacks_total", operation="get_unprocessed",
                    reason="empty")
    assert [m.key for m in cache.get_unprocessed(CHANNEL, 10)] == [(CHANNEL, 3)]
    assert store.fetch_calls == 1
    assert cache.stats().misses == 1
    assert sample("tgstack_cache_fallbacks_total", operation="get_unprocessed",
                  reason="empty") == before + 1


def test_full_batch_is_a_hit_oldest_first_and_limited(
    cache: MessageCache, store: MemoryStore
) -> None:
    # Cached out of order; 10 and 9 share a second (ties sort by message id, not text).
    recs = [record(5), record(10, seconds=9), record(1), record(9), record(3)]
    commit_and_cache(cache, store, *recs)

    batch = cache.get_unprocessed(CHANNEL, 4)
    assert [m.key.message_id for m in batch] == [1, 3, 5, 9]
    assert all(m.status == "received" and m.processing_state == "pending" for m in batch)
    assert batch[0].record == recs[2]
    assert [m.key.message_id for m in cache.get_unprocessed(CHANNEL, 100)] == [1, 3, 5, 9, 10]
    assert store.fetch_calls == 0
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.hit_rate) == (2, 0, 1.0)


def test_a_missing_body_in_the_batch_sends_the_read_to_the_database(
    cache: MessageCache, store: MemoryStore, admin: redis.Redis
) -> None:
    commit_and_cache(cache, store, record(1), record(2), record(3))
    admin.delete(keys.message_key(CHANNEL, 2))  # as if expired or evicted
    assert [m.key.message_id for m in cache.get_unprocessed(CHANNEL, 10)] == [1, 2, 3]
    assert store.fetch_calls == 1
    # A batch that does not reach the missing body is still a hit.
    assert [m.key.message_id for m in cache.get_unprocessed(CHANNEL, 1)] == [1]
    assert store.fetch_calls == 1


def test_without_a_fallback_a_partial_window_returns_what_redis_has(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    cache = MessageCache(url_client(redis_server))
    try:
        for i in (1, 2, 3):
            cache.cache_message(record(i))
        admin.delete(keys.message_key(CHANNEL, 2))
        admin.zadd(keys.recent_key(CHANNEL), {"not-a-member": 0})
        assert [m.key.message_id for m in cache.get_unprocessed(CHANNEL, 10)] == [1, 3]
        assert cache.get_unprocessed(OTHER_CHANNEL, 10) == []
    finally:
        cache.close()


def test_all_channels_read_goes_to_the_database(cache: MessageCache, store: MemoryStore) -> None:
    commit_and_cache(cache, store, record(1), record(2, channel_id=OTHER_CHANNEL))
    assert len(cache.get_unprocessed(None, 10)) == 2
    assert store.fetch_calls == 1


def test_limit_must_be_positive(cache: MessageCache) -> None:
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="limit"):
            cache.get_unprocessed(CHANNEL, bad)


# -- mark_processed / cleanup_expired ------------------------------------------------------


def test_mark_processed_drops_window_entries_and_bodies_and_is_idempotent(
    cache: MessageCache, store: MemoryStore, admin: redis.Redis
) -> None:
    commit_and_cache(cache, store, record(1), record(2), record(3))
    assert cache.mark_processed(CHANNEL, [1, 2]) == 2
    assert cache.mark_processed(CHANNEL, [1, 2]) == 0
    assert cache.mark_processed(CHANNEL, []) == 0
    assert [m.key.message_id for m in cache.get_unprocessed(CHANNEL, 10)] == [3]
    assert admin.exists(keys.message_key(CHANNEL, 1), keys.message_key(CHANNEL, 2)) == 0
    assert cache.is_duplicate(CHANNEL, 1)  # the dedup marker outlives processing
    assert store.fetch_calls == 0


def test_cleanup_expired_removes_old_entries_and_entries_without_a_body(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    now = BASE.timestamp() + 3600 + 100  # record(n) is older than the hot TTL iff n < 100
    cache = MessageCache(url_client(redis_server), clock=lambda: now)
    try:
        for i in (1, 2, 150, 160, 170):
            assert cache.cache_message(record(i))
        admin.delete(keys.message_key(CHANNEL, 160))
        assert cache.cleanup_expired(CHANNEL) == 3
        members: list[bytes] = admin.zrange(keys.recent_key(CHANNEL), 0, -1)  # type: ignore[assignment]
        assert [keys.parse_recent_member(m) for m in members] == [150, 170]
        assert cache.cleanup_expired(CHANNEL) == 0
        assert cache.cleanup_expired(OTHER_CHANNEL) == 0
    finally:
        cache.close()


# -- stats ----------------------------------------------------------------------------------


def test_stats_report_counters_and_redis_figures(cache: MessageCache, store: MemoryStore) -> None:
    assert cache.stats().hit_rate is None
    commit_and_cache(cache, store, record(1))
    cache.get_unprocessed(CHANNEL, 10)  # hit
    cache.get_unprocessed(OTHER_CHANNEL, 10)  # miss, answered by the store
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.errors, stats.fallbacks) == (1, 1, 0, 1)
    assert stats.hit_rate == 0.5
    assert stats.role == "master"
    assert stats.used_memory is not None
    assert stats.used_memory > 0
    assert stats.keyspace_hits is not None
    assert stats.keyspace_hits >= 1
    assert stats.keyspace_misses is not None
    assert stats.redis_error is None


# -- Redis failing --------------------------------------------------------------------------


def test_redis_stopped_mid_run_reads_and_writes_go_through_the_database(
    own_redis: RedisServer, store: MemoryStore
) -> None:
    cache = MessageCache(url_client(own_redis), fallback=store, cooldown=3)
    try:
        commit_and_cache(cache, store, record(1), record(2))
        assert cache.get_unprocessed(CHANNEL, 10)[0].key.message_id == 1
        errors_before = sample("tgstack_cache_operations_total", operation="cache_message",
                               result="error")
        fallbacks_before = sample("tgstack_cache_fallbacks_total", operation="is_duplicate",
                                  reason="error")

        own_redis.stop()

        # Write path: the database commit is what counts; caching reports False, no raise.
        rec3 = record(3)
        store.commit(rec3)
        assert cache.cache_message(rec3) is False
        # Read paths answer from the database.
        assert cache.is_duplicate(CHANNEL, 3) is True
        assert cache.is_duplicate(CHANNEL, 4) is False
        assert [m.key.message_id for m in cache.get_unprocessed(CHANNEL, 10)] == [1, 2, 3]
        assert cache.mark_processed(CHANNEL, [1]) == 0
        assert cache.cleanup_expired(CHANNEL) == 0
        stats = cache.stats()
        assert stats.redis_error is not None
        assert stats.role is None
        assert stats.errors >= 5
        assert stats.fallbacks == 3
        assert store.exists_calls == 2
        assert sample("tgstack_cache_operations_total", operation="cache_message",
                      result="error") == errors_before + 1
        assert sample("tgstack_cache_fallbacks_total", operation="is_duplicate",
                      reason="error") == fallbacks_before + 2

        # A dead Redis costs no latency while the cache cools down.
        started = time.perf_counter()
        for i in range(200):
            cache.is_duplicate(CHANNEL, i + 1)
        assert time.perf_counter() - started < 0.5

        own_redis.start()  # comes back empty (no persistence)
        deadline = time.monotonic() + 10  # the cooldown, then the first write succeeds
        while not cache.cache_message(rec3) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cache.is_duplicate(CHANNEL, 3) is True
        assert cache.stats().role == "master"
    finally:
        cache.close()


def test_redis_stopped_without_a_fallback_answers_not_seen_and_nothing(
    own_redis: RedisServer,
) -> None:
    cache = MessageCache(url_client(own_redis), cooldown=0)
    try:
        assert cache.cache_message(record(1))
        own_redis.stop()
        assert cache.is_duplicate(CHANNEL, 1) is False
        assert cache.get_unprocessed(CHANNEL, 10) == []
        assert cache.cache_message(record(2)) is False
        assert cache.stats().errors == 3
    finally:
        cache.close()


def test_writes_to_a_demoted_master_degrade_instead_of_raising(
    own_redis: RedisServer, store: MemoryStore
) -> None:
    cache = MessageCache(url_client(own_redis), fallback=store, cooldown=0)
    admin = redis.Redis(host="127.0.0.1", port=own_redis.port, password=own_redis.password)
    try:
        commit_and_cache(cache, store, record(1))
        # Now a replica (of a master that is not there): writes get READONLY.
        admin.replicaof("127.0.0.1", 1)
        rec2 = record(2)
        store.commit(rec2)
        assert cache.cache_message(rec2) is False
        assert cache.mark_processed(CHANNEL, [1]) == 0
        assert cache.is_duplicate(CHANNEL, 1) is True  # reads still work on a replica
        assert cache.stats().role == "slave"
    finally:
        admin.replicaof("NO", "ONE")
        admin.close()
        cache.close()


def test_close_is_idempotent_and_closing_the_client_again_is_harmless(
    redis_server: RedisServer,
) -> None:
    cache = MessageCache(url_client(redis_server))
    assert cache.cache_message(record(1))
    cache.close()
    cache.close()
    close_redis_client(cache.client)


# -- create_redis_client --------------------------------------------------------------------


def test_url_client_reaches_the_server_and_closes(redis_server: RedisServer) -> None:
    client = url_client(redis_server, socket_timeout=1.0)
    try:
        assert client.ping()
        assert client.client_getname() in ("tgstack", b"tgstack")
    finally:
        close_redis_client(client)


def test_url_client_with_a_wrong_password_degrades(redis_server: RedisServer) -> None:
    client = create_redis_client(url=f"redis://127.0.0.1:{redis_server.port}",
                                 password="wrong")
    cache = MessageCache(client, cooldown=0)
    try:
        assert cache.cache_message(record(1)) is False
        assert cache.stats().redis_error is not None
    finally:
        cache.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "url or at least one sentinel"),
        ({"url": "redis://h", "sentinels": [("h", 1)]}, "not both"),
        ({"url": "http://h"}, "invalid Redis URL"),
        ({"url": "redis://:secret@h", "password": "x"}, "both in the URL"),
        ({"url": "redis://h/2", "db": 3}, "conflicts"),
        ({"url": "redis://h", "sentinel_password": "x"}, "needs sentinels"),
        ({"url": "redis://h", "socket_timeout": 0}, "socket_timeout"),
        ({"url": "redis://h", "socket_timeout": float("nan")}, "socket_timeout"),
        ({"url": "redis://h", "db": -1}, "db"),
        ({"sentinels": [("h", 0)]}, "sentinel address"),
        ({"sentinels": [("", 26379)]}, "sentinel address"),
        ({"sentinels": ["h:26379"]}, "sentinel address"),
        ({"sentinels": [("h", 26379)], "master_name": " "}, "master_name"),
    ],
)
def test_bad_client_arguments_raise_a_clear_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(RedisConfigError, match=match) as raised:
        create_redis_client(**kwargs)
    assert "secret" not in str(raised.value)
