"""Secret-bearing files are private on the server and on the controller."""

from __future__ import annotations

import stat
from typing import Any

import pytest

from conftest import StackSettings, secrets_file

testinfra_hosts = ["ansible://tgstack"]


@pytest.mark.parametrize("name", ["postgres.env", "redis.env", "rabbitmq.env"])
def test_compose_env_files_are_root_only(root: Any, settings: StackSettings, name: str) -> None:
    f = root.file(f"{settings.stack_dir}/env/{name}")
    assert f.is_file
    assert (f.user, f.group, f.mode) == ("root", "root", 0o600)
    directory = root.file(f"{settings.stack_dir}/env")
    assert directory.mode == 0o700


@pytest.mark.parametrize(
    "path",
    [
        "config/pgbouncer/userlist.txt",
        "config/redis-master/redis.conf",
        "config/redis-replica/redis.conf",
        "config/rabbitmq/definitions.json",
    ],
)
def test_secret_config_files_are_readable_by_their_service_only(
    root: Any, settings: StackSettings, path: str
) -> None:
    f = root.file(f"{settings.stack_dir}/{path}")
    assert f.is_file
    assert f.user == "root"
    assert f.mode == 0o640, f"{path}: {oct(f.mode)}"


def test_sentinel_files_belong_to_sentinel_and_are_private(
    root: Any, settings: StackSettings
) -> None:
    for i in range(1, len(settings.sentinel_ports) + 1):
        f = root.file(f"{settings.stack_dir}/state/sentinel-{i}/sentinel.conf")
        assert f.is_file
        assert f.mode & 0o077 == 0, f"sentinel-{i}: {oct(f.mode)}"
        assert f.uid != 0, "Sentinel must own (and rewrite) its configuration"


def test_compose_file_holds_no_secret(
    root: Any, settings: StackSettings, secrets: dict[str, str]
) -> None:
    content = root.file(f"{settings.stack_dir}/compose.yml").content_string
    leaked = [name for name, value in secrets.items() if value in content]
    assert leaked == [], f"compose.yml contains {leaked}"


def test_no_plaintext_password_in_pgbouncer_userlist(
    root: Any, settings: StackSettings, secrets: dict[str, str]
) -> None:
    content = root.file(f"{settings.stack_dir}/config/pgbouncer/userlist.txt").content_string
    leaked = [name for name, value in secrets.items() if value in content]
    assert leaked == [], f"userlist.txt contains the plaintext of {leaked}"
    lines = [line for line in content.splitlines() if line.strip()]
    assert lines, "userlist.txt is empty"
    assert all('" "SCRAM-SHA-256$' in line for line in lines)


def test_secrets_file_on_the_controller_is_private(host: Any) -> None:
    path = secrets_file(host)
    assert path.is_file(), f"{path} missing"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
