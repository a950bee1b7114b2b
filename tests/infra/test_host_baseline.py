"""Host baseline and Docker engine."""

from __future__ import annotations

import json
from typing import Any

from conftest import StackSettings

testinfra_hosts = ["ansible://tgstack"]


def test_service_user_is_a_system_account_without_login(root: Any, settings: StackSettings) -> None:
    user = root.user(settings.service_user)
    assert user.exists
    assert user.uid < 1000
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    config_dir = root.file(settings.config_dir)
    assert config_dir.is_directory
    assert (config_dir.user, config_dir.group, config_dir.mode) == (
        "root",
        settings.service_user,
        0o750,
    )


def test_journald_is_persistent_and_bounded(root: Any) -> None:
    conf = root.file("/etc/systemd/journald.conf.d/60-tgstack.conf")
    assert conf.is_file
    assert conf.contains("^Storage=persistent")
    assert conf.contains("^SystemMaxUse=")


def test_sysctl_file_sets_overcommit_for_redis(root: Any) -> None:
    conf = root.file("/etc/sysctl.d/60-tgstack.conf")
    assert conf.contains(r"^vm\.overcommit_memory = 1")
    assert conf.contains(r"^net\.core\.somaxconn = ")


def test_docker_engine_is_enabled_and_running(root: Any) -> None:
    docker = root.service("docker")
    assert docker.is_running
    assert docker.is_enabled


def test_docker_daemon_rotates_logs_and_keeps_containers_on_restart(root: Any) -> None:
    daemon = json.loads(root.file("/etc/docker/daemon.json").content_string)
    assert daemon["live-restore"] is True
    assert daemon["log-driver"] == "json-file"
    assert "max-size" in daemon["log-opts"]


def test_docker_compose_is_v2_at_least_2_18(root: Any) -> None:
    version = root.check_output("docker compose version --short").lstrip("v")
    major, minor = (int(x) for x in version.split(".")[:2])
    assert (major, minor) >= (2, 18), version
