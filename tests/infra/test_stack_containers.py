"""The data stack's containers: running, healthy, limited, restarting on their own."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import StackSettings, docker_inspect

testinfra_hosts = ["ansible://tgstack"]

SERVICES = [
    "postgres",
    "pgbouncer",
    "redis-master",
    "redis-replica",
    "redis-sentinel-1",
    "redis-sentinel-2",
    "redis-sentinel-3",
    "rabbitmq",
]


@pytest.mark.parametrize("service", SERVICES)
def test_stack_container_is_running_and_healthy(
    root: Any, settings: StackSettings, service: str
) -> None:
    info = docker_inspect(root, settings.containers[service])
    state = info["State"]
    assert state["Status"] == "running", f"{service}: {state['Status']}"
    assert state.get("Health", {}).get("Status") == "healthy", f"{service}: {state.get('Health')}"
    assert info["Config"]["Labels"].get("com.docker.compose.project") == "tgstack-data"


@pytest.mark.parametrize("service", SERVICES)
def test_stack_container_has_cpu_and_memory_limits(
    root: Any, settings: StackSettings, service: str
) -> None:
    host_config = docker_inspect(root, settings.containers[service])["HostConfig"]
    assert host_config["NanoCpus"] > 0, f"{service} has no CPU limit"
    assert host_config["Memory"] > 0, f"{service} has no memory limit"
    assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
    assert "no-new-privileges:true" in (host_config.get("SecurityOpt") or [])


def test_stack_data_lives_in_named_volumes(root: Any, settings: StackSettings) -> None:
    expected = {
        "postgres": "/var/lib/postgresql/data",
        "redis-master": "/data",
        "redis-replica": "/data",
        "rabbitmq": "/var/lib/rabbitmq",
    }
    for service, target in expected.items():
        mounts = docker_inspect(root, settings.containers[service])["Mounts"]
        volume = [m for m in mounts if m["Destination"] == target]
        assert volume, f"{service}: nothing mounted on {target}"
        assert volume[0]["Type"] == "volume", f"{service}: {target} is not a named volume"
        assert volume[0]["Name"].startswith("tgstack-data_"), volume[0]["Name"]


def test_stack_network_exists_for_monitoring(root: Any, settings: StackSettings) -> None:
    result = root.run(f"docker network inspect {settings.network} --format '{{{{.Driver}}}}'")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "bridge"
    for service in ("postgres", "pgbouncer", "rabbitmq"):
        networks = docker_inspect(root, settings.containers[service])["NetworkSettings"]["Networks"]
        assert settings.network in networks, f"{service} is not on {settings.network}"
