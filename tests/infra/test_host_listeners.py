"""Nothing the stack runs listens beyond loopback."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from conftest import StackSettings, listening_sockets

testinfra_hosts = ["ansible://tgstack"]

# TCP ports a server may expose to the network on purpose (SSH by default). A real server can
# widen this with TGSTACK_INFRA_PUBLIC_PORTS=22,443 ...
PUBLIC_PORTS = {int(p) for p in os.environ.get("TGSTACK_INFRA_PUBLIC_PORTS", "22").split(",") if p}


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # "*" or a name
        return False


def test_nothing_listens_beyond_loopback(root: Any) -> None:
    exposed = [
        (address, port, process)
        for address, port, process in listening_sockets(root, "t") + listening_sockets(root, "u")
        if not _is_loopback(address) and port not in PUBLIC_PORTS
    ]
    assert exposed == [], f"listening beyond loopback: {exposed}"


def test_stack_ports_listen_on_the_bind_address(root: Any, settings: StackSettings) -> None:
    ports = {
        "postgres": settings.postgres_port,
        "pgbouncer": settings.pgbouncer_port,
        "redis master": settings.redis_master_port,
        "redis replica": settings.redis_replica_port,
        "rabbitmq": settings.rabbitmq_port,
        "rabbitmq management": settings.rabbitmq_management_port,
        "rabbitmq prometheus": settings.rabbitmq_prometheus_port,
    }
    for i, port in enumerate(settings.sentinel_ports, start=1):
        ports[f"sentinel {i}"] = port
    listening = {(address, port) for address, port, _ in listening_sockets(root, "t")}
    missing = {
        name: port for name, port in ports.items() if (settings.bind_address, port) not in listening
    }
    assert missing == {}, f"not listening on {settings.bind_address}: {missing}"
