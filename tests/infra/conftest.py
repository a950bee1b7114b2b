"""testinfra fixtures for tests/infra: what a provisioned tgstack server must look like.

The same checks run in Molecule (the `default` scenario's verifier) and against any real server
of an inventory, from the repository root:

    pytest tests/infra --ansible-inventory=inventories/<env> --connection=ansible [--hosts=tgstack]

Nothing here assumes Molecule: names and ports are the role defaults, overridden by the
inventory's own variables when it sets them; secrets are read on the controller from the file
the tgstack_secrets role keeps (TGSTACK_SECRETS_DIR, else the inventory's tgstack_secrets_dir,
else ~/.local/share/tgstack/secrets). Commands run through sudo (the remote user needs it).
Passwords never appear in assertion messages. Each test module targets the hosts of group
`tgstack` (`testinfra_hosts`); --hosts overrides that.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml


@dataclass(frozen=True)
class StackSettings:
    """Names and ports of the deployed stack (role defaults unless the inventory overrides)."""

    bind_address: str = "127.0.0.1"
    stack_dir: str = "/opt/tgstack/data"
    network: str = "tgstack"
    postgres_port: int = 5434
    pgbouncer_port: int = 6434
    database: str = "telegram_gateway"
    app_user: str = "telegram"
    pgbouncer_admin_user: str = "pgbouncer_admin"
    redis_master_port: int = 6379
    redis_replica_port: int = 6380
    sentinel_ports: tuple[int, ...] = (26379, 26380, 26381)
    sentinel_quorum: int = 2
    sentinel_down_after_ms: int = 5000
    sentinel_failover_timeout_ms: int = 10000
    master_name: str = "tgstack"
    rabbitmq_port: int = 5672
    rabbitmq_management_port: int = 15672
    rabbitmq_prometheus_port: int = 15692
    vhost: str = "telegram"
    rabbitmq_user: str = "telegram"
    rabbitmq_monitor_user: str = "monitor"
    exchange: str = "telegram.messages"
    dead_letter_exchange: str = "telegram.messages.dlx"
    dead_letter_queue: str = "telegram.messages.dlq"
    dlq_message_ttl_ms: int = 86_400_000
    dlq_max_length: int = 100_000
    consumers: tuple[str, ...] = ("tp-capital",)
    delivery_limit: int = 3
    service_user: str = "tgstack"
    config_dir: str = "/etc/tgstack"

    @property
    def containers(self) -> dict[str, str]:
        names = {
            "postgres": "tgstack-postgres",
            "pgbouncer": "tgstack-pgbouncer",
            "redis-master": "tgstack-redis-master",
            "redis-replica": "tgstack-redis-replica",
            "rabbitmq": "tgstack-rabbitmq",
        }
        for i in range(1, len(self.sentinel_ports) + 1):
            names[f"redis-sentinel-{i}"] = f"tgstack-redis-sentinel-{i}"
        return names


# inventory variable -> StackSettings field
_INVENTORY_NAMES = {
    "tgstack_bind_address": "bind_address",
    "tgstack_stack_dir": "stack_dir",
    "tgstack_stack_network": "network",
    "tgstack_stack_postgres_port": "postgres_port",
    "tgstack_stack_pgbouncer_port": "pgbouncer_port",
    "tgstack_stack_postgres_database": "database",
    "tgstack_stack_postgres_app_user": "app_user",
    "tgstack_stack_pgbouncer_admin_user": "pgbouncer_admin_user",
    "tgstack_stack_redis_master_port": "redis_master_port",
    "tgstack_stack_redis_replica_port": "redis_replica_port",
    "tgstack_stack_redis_sentinel_ports": "sentinel_ports",
    "tgstack_stack_redis_sentinel_quorum": "sentinel_quorum",
    "tgstack_stack_redis_sentinel_down_after_ms": "sentinel_down_after_ms",
    "tgstack_stack_redis_sentinel_failover_timeout_ms": "sentinel_failover_timeout_ms",
    "tgstack_stack_redis_master_name": "master_name",
    "tgstack_stack_rabbitmq_port": "rabbitmq_port",
    "tgstack_stack_rabbitmq_management_port": "rabbitmq_management_port",
    "tgstack_stack_rabbitmq_prometheus_port": "rabbitmq_prometheus_port",
    "tgstack_stack_rabbitmq_vhost": "vhost",
    "tgstack_stack_rabbitmq_user": "rabbitmq_user",
    "tgstack_stack_rabbitmq_monitor_user": "rabbitmq_monitor_user",
    "tgstack_stack_rabbitmq_exchange": "exchange",
    "tgstack_stack_rabbitmq_dead_letter_exchange": "dead_letter_exchange",
    "tgstack_stack_rabbitmq_dead_letter_queue": "dead_letter_queue",
    "tgstack_stack_rabbitmq_dlq_message_ttl_ms": "dlq_message_ttl_ms",
    "tgstack_stack_rabbitmq_dlq_max_length": "dlq_max_length",
    "tgstack_stack_rabbitmq_consumers": "consumers",
    "tgstack_stack_rabbitmq_delivery_limit": "delivery_limit",
    "tgstack_host_user": "service_user",
    "tgstack_host_config_dir": "config_dir",
}


def _plain(value: Any) -> bool:
    """An inventory value we can use as it is (not a Jinja template)."""
    text = json.dumps(value) if not isinstance(value, str) else value
    return "{{" not in text and "{%" not in text


def inventory_variables(host: Any) -> dict[str, Any]:
    try:
        return dict(host.ansible.get_variables())
    except Exception:  # a non-ansible backend (plain --hosts=docker://...)
        return {}


@pytest.fixture(scope="module")
def settings(host: Any) -> StackSettings:
    variables = inventory_variables(host)
    defaults = StackSettings()
    values: dict[str, Any] = {}
    for var, field in _INVENTORY_NAMES.items():
        if var in variables and _plain(variables[var]):
            default = getattr(defaults, field)
            value = variables[var]
            if isinstance(default, tuple):
                value = tuple(type(default[0])(v) for v in value)
            else:
                value = type(default)(value)
            values[field] = value
    return StackSettings(**values)


@pytest.fixture
def root(host: Any) -> Iterator[Any]:
    """The host with every command run as root (sudo)."""
    with host.sudo():
        yield host


# ----- secrets (controller side) -----------------------------------------------------------------


def secrets_file(host: Any) -> Path:
    variables = inventory_variables(host)
    name = variables.get("inventory_hostname") or host.backend.get_hostname()
    directory = os.environ.get("TGSTACK_SECRETS_DIR")
    if not directory:
        configured = variables.get("tgstack_secrets_dir")
        if isinstance(configured, str) and configured and _plain(configured):
            directory = configured
    if not directory:
        directory = str(Path.home() / ".local/share/tgstack/secrets")
    return Path(directory).expanduser() / f"{name}.yml"


@pytest.fixture(scope="module")
def secrets(host: Any) -> dict[str, str]:
    """The secrets the tgstack_secrets role generated for this host (plain or ansible-vault)."""
    path = secrets_file(host)
    if not path.is_file():
        pytest.fail(f"secrets file {path} not found: run site.yml first or set TGSTACK_SECRETS_DIR")
    text = path.read_text(encoding="utf-8")
    if text.startswith("$ANSIBLE_VAULT"):
        text = subprocess.run(
            ["ansible-vault", "view", str(path)], check=True, capture_output=True, text=True
        ).stdout
    data = yaml.safe_load(text)
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return {str(k): str(v) for k, v in data.items()}


# ----- helpers ------------------------------------------------------------------------------------


class Masked:
    """Runs commands that carry secrets and keeps the secrets out of failure messages."""

    def __init__(self, host: Any, secrets: dict[str, str]) -> None:
        self.host = host
        self._secrets = sorted((s for s in secrets.values() if len(s) >= 8), key=len, reverse=True)

    def mask(self, text: str) -> str:
        for value in self._secrets:
            text = text.replace(value, "******")
        return text

    def run(self, command: str, **env: str) -> tuple[int, str, str]:
        """Run `command` with environment variables (values never shown in failures)."""
        prefix = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
        result = self.host.run(f"{prefix} {command}" if prefix else command)
        return result.rc, self.mask(result.stdout), self.mask(result.stderr)


@pytest.fixture
def masked(root: Any, secrets: dict[str, str]) -> Masked:
    return Masked(root, secrets)


def docker_exec(host: Any, container: str, *argv: str, user: str | None = None) -> Any:
    """`docker exec` as root on the host; returns testinfra's CommandResult."""
    opts = f"-u {shlex.quote(user)} " if user else ""
    return host.run(
        f"docker exec {opts}{shlex.quote(container)} " + " ".join(shlex.quote(a) for a in argv)
    )


def docker_inspect(host: Any, name: str) -> dict[str, Any]:
    result = host.run(f"docker inspect {shlex.quote(name)}")
    assert result.rc == 0, f"docker inspect {name}: {result.stderr.strip()}"
    return json.loads(result.stdout)[0]


def pairs(lines: list[str]) -> dict[str, str]:
    """redis-cli raw output of a flat reply (key, value, key, value ...) as a dict."""
    return dict(zip(lines[::2], lines[1::2], strict=False))


def info_fields(text: str) -> dict[str, str]:
    """Redis INFO output as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def listening_sockets(host: Any, proto: str = "t") -> list[tuple[str, int, str]]:
    """(address, port, process) of every listening socket (`ss -H -{proto}lnp`)."""
    result = host.run(f"ss -H -{proto}lnp")
    assert result.rc == 0, result.stderr
    sockets = []
    for line in result.stdout.splitlines():
        fields = line.split()
        local = fields[3]
        address, _, port = local.rpartition(":")
        process = re.search(r'users:\(\("([^"]+)"', line)
        sockets.append(
            (address.strip("[]").split("%")[0], int(port), process.group(1) if process else "?")
        )
    return sockets
