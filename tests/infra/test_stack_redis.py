"""Redis HA: one master, one replica, three Sentinels agreeing on them."""

from __future__ import annotations

from typing import Any

from conftest import StackSettings, docker_exec, info_fields, pairs

testinfra_hosts = ["ansible://tgstack"]


def _redis_cli(root: Any, settings: StackSettings, container: str, port: int, *args: str) -> Any:
    # REDISCLI_AUTH is set in the containers' environment (env/redis.env): no password here.
    return docker_exec(
        root, container, "redis-cli", "-h", settings.bind_address, "-p", str(port), *args
    )


def test_sentinel_sees_one_master_one_replica_three_sentinels(
    root: Any, settings: StackSettings
) -> None:
    masters = set()
    for i, port in enumerate(settings.sentinel_ports, start=1):
        container = settings.containers[f"redis-sentinel-{i}"]
        result = _redis_cli(
            root, settings, container, port, "SENTINEL", "MASTER", settings.master_name
        )
        assert result.rc == 0, result.stderr
        master = pairs(result.stdout.splitlines())
        assert master["flags"] == "master", f"sentinel {i}: {master.get('flags')}"
        assert int(master["num-slaves"]) == 1, f"sentinel {i}: {master.get('num-slaves')} replicas"
        assert int(master["num-other-sentinels"]) == len(settings.sentinel_ports) - 1
        assert int(master["quorum"]) == settings.sentinel_quorum
        assert int(master["down-after-milliseconds"]) == settings.sentinel_down_after_ms
        assert int(master["failover-timeout"]) == settings.sentinel_failover_timeout_ms
        masters.add((master["ip"], int(master["port"])))

        replicas = _redis_cli(
            root, settings, container, port, "SENTINEL", "REPLICAS", settings.master_name
        )
        assert replicas.rc == 0, replicas.stderr
        assert replicas.stdout.splitlines().count("flags") == 1
        assert "slave" in replicas.stdout.splitlines()

        quorum = _redis_cli(
            root, settings, container, port, "SENTINEL", "CKQUORUM", settings.master_name
        )
        assert quorum.stdout.startswith("OK"), quorum.stdout
    assert len(masters) == 1, f"the Sentinels disagree on the master: {masters}"
    assert masters == {(settings.bind_address, settings.redis_master_port)} or len(masters) == 1


def test_redis_master_replicates_to_the_replica(root: Any, settings: StackSettings) -> None:
    roles = {}
    for name, port in (
        ("redis-master", settings.redis_master_port),
        ("redis-replica", settings.redis_replica_port),
    ):
        result = _redis_cli(root, settings, settings.containers[name], port, "INFO", "replication")
        assert result.rc == 0, result.stderr
        roles[name] = info_fields(result.stdout)
    by_role = {fields["role"]: fields for fields in roles.values()}
    assert set(by_role) == {"master", "slave"}, roles
    assert by_role["master"]["connected_slaves"] == "1"
    assert by_role["slave"]["master_link_status"] == "up"


def test_redis_requires_a_password(root: Any, settings: StackSettings) -> None:
    for name, port in (
        ("redis-master", settings.redis_master_port),
        ("redis-sentinel-1", settings.sentinel_ports[0]),
    ):
        result = docker_exec(
            root,
            settings.containers[name],
            "sh",
            "-c",
            f"unset REDISCLI_AUTH; redis-cli -h {settings.bind_address} -p {port} PING",
        )
        assert "NOAUTH" in result.stdout + result.stderr, f"{name} answered without a password"
