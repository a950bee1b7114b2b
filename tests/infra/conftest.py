"""testinfra fixtures for tests/infra: what a provisioned tgstack server must look like.

The same checks run in Molecule (the `default` scenario's verifier) and against any real server
of an inventory, from the repository root:

    pytest tests/infra --ansible-inventory=inventories/<env> --connection=ansible [--hosts=tgstack]

Nothing here assumes Molecule: names and ports are the role defaults, read from the roles' own
defaults files (roles/tgstack/defaults/main.yml, the settings the roles share, and the data
stack's roles/tgstack_stack/defaults/main.yml), overridden by the inventory's own variables when
it sets them; secrets are read on the controller from the file
the tgstack_secrets role keeps (TGSTACK_SECRETS_DIR, else the inventory's tgstack_secrets_dir,
else ~/.local/share/tgstack/secrets). Commands run through sudo (the remote user needs it).
Passwords never appear in assertion messages. Each test module targets the hosts of group
`tgstack` (`testinfra_hosts`); --hosts overrides that.
"""

from __future__ import annotations

import dataclasses
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

REPO = Path(__file__).resolve().parents[2]
# Where the settings' defaults are defined: the roles' own defaults files, never copied here.
DEFAULTS_FILES = (
    REPO / "roles" / "tgstack" / "defaults" / "main.yml",
    REPO / "roles" / "tgstack_stack" / "defaults" / "main.yml",
)


@dataclass(frozen=True)
class StackSettings:
    """Names and ports of the deployed stack (role defaults unless the inventory overrides)."""

    bind_address: str
    stack_dir: str
    network: str
    postgres_port: int
    pgbouncer_port: int
    database: str
    app_user: str
    pgbouncer_admin_user: str
    redis_master_port: int
    redis_replica_port: int
    sentinel_ports: tuple[int, ...]
    sentinel_quorum: int
    sentinel_down_after_ms: int
    sentinel_failover_timeout_ms: int
    master_name: str
    rabbitmq_port: int
    rabbitmq_management_port: int
    rabbitmq_prometheus_port: int
    vhost: str
    rabbitmq_user: str
    rabbitmq_monitor_user: str
    exchange: str
    dead_letter_exchange: str
    dead_letter_queue: str
    dlq_message_ttl_ms: int
    dlq_max_length: int
    consumers: tuple[str, ...]
    delivery_limit: int
    service_user: str
    config_dir: str

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


def role_defaults() -> dict[str, Any]:
    """The variables of DEFAULTS_FILES, as the roles define them."""
    merged: dict[str, Any] = {}
    for path in DEFAULTS_FILES:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert isinstance(data, dict), f"{path} is not a YAML mapping"
        merged.update(data)
    return merged


def _coerce(field: dataclasses.Field[Any], value: Any) -> Any:
    """An inventory or defaults value as the field's type (annotations are strings here)."""
    kind = str(field.type)
    if kind.startswith("tuple["):
        element = int if kind == "tuple[int, ...]" else str
        return tuple(element(v) for v in value)
    return int(value) if kind == "int" else str(value)


def stack_settings(variables: dict[str, Any]) -> StackSettings:
    """The settings: each the inventory's value when it sets a plain one, else the role default."""
    defaults = role_defaults()
    fields = {f.name: f for f in dataclasses.fields(StackSettings)}
    values: dict[str, Any] = {}
    for var, name in _INVENTORY_NAMES.items():
        if var in variables and _plain(variables[var]):
            value = variables[var]
        else:
            if var not in defaults or not _plain(defaults[var]):
                files = ", ".join(str(path) for path in DEFAULTS_FILES)
                raise LookupError(f"{var}: no plain default in {files}")
            value = defaults[var]
        values[name] = _coerce(fields[name], value)
    return StackSettings(**values)


def inventory_variables(host: Any) -> dict[str, Any]:
    try:
        return dict(host.ansible.get_variables())
    except Exception:  # a non-ansible backend (plain --hosts=docker://...)
        return {}


@pytest.fixture(scope="module")
def settings(host: Any) -> StackSettings:
    return stack_settings(inventory_variables(host))


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
