"""RabbitMQ: vhost, users (no guest), permissions, exchanges, DLQ, consumer queues, policies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import Masked, StackSettings, docker_exec

testinfra_hosts = ["ansible://tgstack"]


def _ctl(root: Any, settings: StackSettings, *args: str) -> list[dict[str, Any]]:
    result = docker_exec(
        root, settings.containers["rabbitmq"], "rabbitmqctl", "-q", *args, "--formatter", "json"
    )
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def topology(host: Any, settings: StackSettings) -> dict[str, Any]:
    with host.sudo():
        return {
            "vhosts": _ctl(host, settings, "list_vhosts", "name"),
            "users": _ctl(host, settings, "list_users"),
            "permissions": _ctl(host, settings, "list_permissions", "-p", settings.vhost),
            "exchanges": _ctl(
                host, settings, "list_exchanges", "-p", settings.vhost, "name", "type", "durable"
            ),
            "queues": _ctl(
                host,
                settings,
                "list_queues",
                "-p",
                settings.vhost,
                "name",
                "type",
                "durable",
                "arguments",
            ),
            "bindings": _ctl(
                host,
                settings,
                "list_bindings",
                "-p",
                settings.vhost,
                "source_name",
                "destination_name",
                "routing_key",
            ),
            "policies": _ctl(host, settings, "list_policies", "-p", settings.vhost),
        }


def test_rabbitmq_vhost_exists(topology: dict[str, Any], settings: StackSettings) -> None:
    assert settings.vhost in {v["name"] for v in topology["vhosts"]}


def test_rabbitmq_users_without_guest(topology: dict[str, Any], settings: StackSettings) -> None:
    users = {u["user"]: u["tags"] for u in topology["users"]}
    assert "guest" not in users
    assert set(users) == {settings.rabbitmq_user, settings.rabbitmq_monitor_user}
    assert "monitoring" in users[settings.rabbitmq_monitor_user]
    assert "administrator" not in users[settings.rabbitmq_user]


def test_rabbitmq_permissions(topology: dict[str, Any], settings: StackSettings) -> None:
    perms = {p["user"]: (p["configure"], p["write"], p["read"]) for p in topology["permissions"]}
    assert perms[settings.rabbitmq_user] == (".*", ".*", ".*")
    assert perms[settings.rabbitmq_monitor_user] == ("^$", "^$", ".*")


def test_rabbitmq_exchanges(topology: dict[str, Any], settings: StackSettings) -> None:
    exchanges = {e["name"]: (e["type"], e["durable"]) for e in topology["exchanges"]}
    assert exchanges[settings.exchange] == ("topic", True)
    assert exchanges[settings.dead_letter_exchange] == ("fanout", True)


def test_rabbitmq_dead_letter_queue(topology: dict[str, Any], settings: StackSettings) -> None:
    queues = {q["name"]: q for q in topology["queues"]}
    dlq = queues[settings.dead_letter_queue]
    assert dlq["type"] == "quorum"
    assert dlq["durable"] is True
    args = _arguments(dlq["arguments"])
    assert args["x-message-ttl"] == settings.dlq_message_ttl_ms
    assert args["x-max-length"] == settings.dlq_max_length
    bound = {(b["source_name"], b["destination_name"]) for b in topology["bindings"]}
    assert (settings.dead_letter_exchange, settings.dead_letter_queue) in bound


def test_rabbitmq_consumer_queues_dead_letter_after_the_delivery_limit(
    topology: dict[str, Any], settings: StackSettings
) -> None:
    queues = {q["name"]: q for q in topology["queues"]}
    bindings = {
        (b["source_name"], b["destination_name"], b["routing_key"]) for b in topology["bindings"]
    }
    for consumer in settings.consumers:
        name = f"telegram.consumer.{consumer}"
        assert queues[name]["type"] == "quorum"
        assert (
            _arguments(queues[name]["arguments"])["x-dead-letter-exchange"]
            == settings.dead_letter_exchange
        )
        assert (settings.exchange, name, "telegram.channel.*") in bindings
    policies = {p["name"]: p for p in topology["policies"]}
    definition = policies["telegram-consumers"]["definition"]
    definition = json.loads(definition) if isinstance(definition, str) else definition
    assert definition["delivery-limit"] == settings.delivery_limit


def test_rabbitmq_application_user_authenticates(
    masked: Masked, settings: StackSettings, secrets: dict[str, str]
) -> None:
    rc, out, err = masked.run(
        f"docker exec -e TGSTACK_PW {settings.containers['rabbitmq']} "
        f"sh -c 'rabbitmqctl -q authenticate_user {settings.rabbitmq_user} \"$TGSTACK_PW\"'",
        TGSTACK_PW=secrets["rabbitmq_password"],
    )
    assert rc == 0, err + out


def _arguments(value: Any) -> dict[str, Any]:
    """Queue arguments from rabbitmqctl's JSON: a map, or [key, (type,) value] lists."""
    if isinstance(value, dict):
        return value
    return {item[0]: item[-1] for item in value}
