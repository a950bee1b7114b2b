"""The real-server harness itself: each server is what the stack expects it to be."""

from __future__ import annotations

import amqpstorm
import psycopg
import pytest
import redis

from tgstack_testing.localstack import DataStack, RabbitMQServer, RedisHA


def test_pgbouncer_accepts_scram_login_in_transaction_mode(data_stack: DataStack) -> None:
    with psycopg.connect(data_stack.app_dsn, prepare_threshold=None, autocommit=True) as conn:
        user = conn.execute("SELECT current_user").fetchone()
    assert user == (data_stack.app_user,)
    with psycopg.connect(data_stack.pgbouncer.admin_dsn(), autocommit=True) as admin:
        rows = admin.execute("SHOW CONFIG").fetchall()
    config = {row[0]: row[1] for row in rows}
    assert config["pool_mode"] == "transaction"
    assert config["auth_type"] == "scram-sha-256"


def test_pgbouncer_rejects_a_wrong_password(data_stack: DataStack) -> None:
    bad = data_stack.pgbouncer.dsn(data_stack.app_user, "wrong-password", data_stack.dbname)
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(bad, connect_timeout=5)


def test_sentinels_see_one_master_one_replica_and_each_other(redis_ha: RedisHA) -> None:
    for sentinel in redis_ha.sentinels:
        info = sentinel.master_info()
        assert int(str(info["port"])) == redis_ha.master.port
        assert int(str(info["num-slaves"])) == 1
        assert int(str(info["num-other-sentinels"])) == 2
        assert int(str(info["quorum"])) == 2
    replica = redis.Redis(port=redis_ha.replica.port, password=redis_ha.password)
    assert replica.info("replication")["role"] == "slave"
    replica.close()


def test_rabbitmq_accepts_amqp_login_on_the_telegram_vhost(rabbitmq: RabbitMQServer) -> None:
    connection = amqpstorm.UriConnection(rabbitmq.url())
    channel = connection.channel()
    channel.queue.declare("harness-check", arguments={"x-queue-type": "quorum"}, durable=True)
    channel.confirm_deliveries()  # a quorum queue enqueues asynchronously: wait for the ack
    assert channel.basic.publish("hello", "harness-check")
    message = channel.basic.get("harness-check", no_ack=True)
    assert message is not None
    assert message.body == "hello"
    channel.queue.delete("harness-check")
    connection.close()
