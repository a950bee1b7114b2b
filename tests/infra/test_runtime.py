"""The native tgstack services on a deployed server (role tgstack_runtime), with testinfra.

Units active, enabled and hardened (systemd-analyze security <= 1.5 on the server itself), the
env file private, every port on loopback, migrations applied, and the gateway's source at work.
With the spool source (the sandbox), a sample channel dropped into the spool directory - and
dropped again - ends in PostgreSQL as messages and TP Capital signals exactly once.

Settings (environment of the test run): TGSTACK_RUNTIME_DIR (default /opt/tgstack/runtime),
TGSTACK_SPOOL_DIR (default /var/lib/tgstack/spool).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import StackSettings, docker_exec

testinfra_hosts = ["ansible://tgstack"]

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "channel-sample.jsonl"
WHEELHOUSE = REPO / "roles" / "tgstack_runtime" / "files" / "wheelhouse.py"
RUNTIME_DIR = os.environ.get("TGSTACK_RUNTIME_DIR", "/opt/tgstack/runtime")
SPOOL_DIR = os.environ.get("TGSTACK_SPOOL_DIR", "/var/lib/tgstack/spool")
ENV_FILE = "tgstack.env"
MAX_EXPOSURE = 1.5

UNITS = {"tgstack-gateway": 4006, "tgstack-poller": 4007, "tgstack-api": 4010}
T = TypeVar("T")


def retry(check: Callable[[], T], timeout: float = 120, interval: float = 2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


def unit_properties(host: Any, unit: str, *names: str) -> dict[str, str]:
    out = host.check_output(f"systemctl show {unit}.service -p {','.join(names)}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def http_get(host: Any, port: int, path: str, token: str | None = None) -> tuple[int, str]:
    """GET on the server's loopback (status, body), with python3 on the server."""
    script = (
        "import sys,urllib.request,urllib.error\n"
        "r=urllib.request.Request(sys.argv[1])\n"
        "if len(sys.argv)>2: r.add_header('Authorization','Bearer '+sys.argv[2])\n"
        "try:\n"
        "  x=urllib.request.urlopen(r,timeout=10); print(x.status); print(x.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "  print(e.code); print(e.read().decode())\n"
    )
    args = [f"http://127.0.0.1:{port}{path}"] + ([token] if token else [])
    out = host.run("python3 -c " + " ".join(shlex.quote(a) for a in [script, *args]))
    assert out.rc == 0, out.stderr
    status, _, body = out.stdout.partition("\n")
    return int(status), body


def psql(host: Any, settings: StackSettings, sql: str) -> list[list[str]]:
    out = docker_exec(
        host,
        settings.containers["postgres"],
        "psql", "-X", "-q", "-t", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1",
        "-d", settings.database, "-c", sql,
        user="postgres",
    )  # fmt: skip
    assert out.rc == 0, out.stderr
    return [line.split("|") for line in out.stdout.splitlines() if line]


# ----- units ---------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_is_active_enabled_and_runs_as_the_service_user(root, settings, unit):
    service = root.service(unit)
    assert service.is_running, root.run(f"journalctl -u {unit} -n 30 --no-pager").stdout
    assert service.is_enabled
    props = unit_properties(root, unit, "User", "Restart", "RestartUSec", "SyslogIdentifier")
    assert props == {
        "User": settings.service_user,
        "Restart": "on-failure",
        "RestartUSec": "10s",
        "SyslogIdentifier": unit,
    }
    main_pid = unit_properties(root, unit, "MainPID")["MainPID"]
    assert root.check_output(f"ps -o user= -p {main_pid}").strip() == settings.service_user


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_has_resource_limits(root, unit):
    props = unit_properties(
        root, unit, "MemoryMax", "CPUQuotaPerSecUSec", "TasksMax", "LimitNOFILE"
    )
    assert props["MemoryMax"] not in ("", "infinity")
    assert props["CPUQuotaPerSecUSec"] not in ("", "infinity")
    assert props["TasksMax"] not in ("", "infinity")
    assert int(props["LimitNOFILE"]) >= 16384


def test_gateway_does_not_restart_when_it_cannot_run(root):
    props = unit_properties(root, "tgstack-gateway", "RestartPreventExitStatus")
    assert "78" in props["RestartPreventExitStatus"].split()


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_is_hardened_to_at_most_1_5_in_systemd_analyze_security(root, unit):
    path = f"/etc/systemd/system/{unit}.service"
    out = root.run(f"systemd-analyze security --offline=true --no-pager {path}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert match, out.stdout[-2000:] + out.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, out.stdout


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_logs_to_the_journal_under_its_identifier(root, unit):
    out = root.run(f"journalctl -t {unit} -n 5 --no-pager -o cat")
    assert out.rc == 0
    assert out.stdout.strip(), f"no journal lines tagged {unit}"


# ----- files ---------------------------------------------------------------------------------


def test_env_file_is_private_to_the_service_user(root, settings, secrets):
    env = root.file(f"{settings.config_dir}/{ENV_FILE}")
    assert env.is_file
    assert (env.mode, env.user) == (0o600, settings.service_user)
    content = env.content_string
    assert f"@127.0.0.1:{settings.pgbouncer_port}/{settings.database}" in content
    assert secrets["postgres_app_password"] in content  # the generated secret, not a default
    for unit in UNITS:
        unit_file = root.file(f"/etc/systemd/system/{unit}.service").content_string
        assert all(value not in unit_file for value in secrets.values() if len(value) >= 8)


def test_code_is_root_owned_and_not_writable_by_the_service_user(root, settings):
    venv = root.file(f"{RUNTIME_DIR}/venv")
    assert (venv.user, venv.mode & 0o022) == ("root", 0)
    out = root.run(f"sudo -u {settings.service_user} test -w {RUNTIME_DIR}/venv/bin/tgstack")
    assert out.rc == 1


def test_virtualenv_holds_exactly_the_locked_runtime(root):
    """The server's `pip freeze` equals the lock's runtime export, evaluated for its Python."""
    python = f"{RUNTIME_DIR}/venv/bin/python"
    probe = "import platform, sys; print('%d.%d.%d' % sys.version_info[:3], platform.machine())"
    version, machine = root.check_output(f"{python} -c {shlex.quote(probe)}").split()
    locked = json.loads(
        subprocess.run(
            [sys.executable, str(WHEELHOUSE), "--print-pins", "--requirements",
             str(REPO / "requirements" / "runtime.txt"), "--python-version", version,
             "--machine", machine],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    frozen = root.check_output(
        f"{python} -m pip freeze --disable-pip-version-check --exclude tgstack"
    )
    held = {}
    for line in frozen.splitlines():
        name, _, pinned = line.partition("==")
        assert pinned, f"not installed from a pinned wheel: {line}"
        held[re.sub(r"[-_.]+", "-", name).lower()] = pinned
    assert held == locked


def test_every_migration_is_applied(root, settings):
    out = root.run(f"sudo -u {settings.service_user} tgstack migrate --status --format json")
    assert out.rc == 0, out.stderr
    migrations = json.loads(out.stdout)
    assert len(migrations) > 5
    assert [m["name"] for m in migrations if m["applied_at"] is None] == []


# ----- ports and health ----------------------------------------------------------------------


@pytest.mark.parametrize(("unit", "port"), sorted(UNITS.items()))
def test_service_listens_on_loopback_only_and_is_healthy(root, unit, port):
    def healthy() -> None:
        status, body = http_get(root, port, "/health")
        assert status == 200, body

    retry(healthy, timeout=60)
    assert root.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not root.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not root.socket(f"tcp://:::{port}").is_listening
    status, metrics = http_get(root, port, "/metrics")
    assert status == 200
    assert "tgstack_" in metrics


def test_api_requires_its_token_and_answers_with_it(root, secrets):
    assert http_get(root, 4010, "/v1/channels")[0] == 401
    status, body = http_get(root, 4010, "/v1/channels", secrets["api_read_token"])
    assert status == 200, body


# ----- a sample channel through the deployed gateway ----------------------------------------


def _gateway_source(root: Any, settings: StackSettings) -> str:
    env = root.file(f"{settings.config_dir}/{ENV_FILE}").content_string
    match = re.search(r"^TGSTACK_GATEWAY_SOURCE=(\w+)$", env, re.MULTILINE)
    return match.group(1) if match else "telethon"


def _drop(root: Any, name: str, body: str, owner: str) -> None:
    """Write a spool file atomically (temporary name, then rename), as an operator would."""
    encoded = base64.b64encode(body.encode()).decode()
    temporary = f"{SPOOL_DIR}/.{name}.tmp"
    out = root.run(
        f"echo {encoded} | base64 -d > {temporary} && chown {owner} {temporary} "
        f"&& chmod 0640 {temporary} && mv {temporary} {SPOOL_DIR}/{name}"
    )
    assert out.rc == 0, out.stderr


def _channel_counts(root: Any, settings: StackSettings, channel: int) -> dict[str, int]:
    rows = psql(
        root,
        settings,
        "SELECT count(*),"
        " count(*) FILTER (WHERE processing_state IN ('pending', 'processing')),"
        " count(*) FILTER (WHERE coalesce((metadata->>'marks')::int, 0) <> 1),"
        " (SELECT count(*) FROM tp_capital.signals s WHERE s.channel_id = "
        f"{channel}) FROM telegram_gateway.messages WHERE channel_id = {channel}",
    )
    messages, unprocessed, not_marked_once, signals = (int(v) for v in rows[0])
    return {
        "messages": messages,
        "unprocessed": unprocessed,
        "not_marked_once": not_marked_once,
        "signals": signals,
    }


def _metric(root: Any, name: str) -> float:
    text = http_get(root, 4006, "/metrics")[1]
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from the gateway's /metrics"
    return float(match.group(1))


def test_sample_channel_through_the_deployed_gateway_ends_as_signals_exactly_once(root, settings):
    if _gateway_source(root, settings) != "spool":
        pytest.fail(
            "this server's gateway reads Telegram (source telethon): run this check on a "
            "sandbox (spool source) or deselect it with -k 'not sample_channel'"
        )
    from tgstack.signals import parse_signal

    # The committed sample on a channel of its own, fresh for this run: counts start at zero.
    channel = -1009000000000 - int(uuid.uuid4().int % 999_999_999)
    posts = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    expected_signals = sum(1 for p in posts if parse_signal(p["text"]) is not None)
    assert (len(posts), expected_signals) == (24, 14)
    body = "".join(json.dumps(p | {"channel_id": channel}) + "\n" for p in posts)
    owner = f"{settings.service_user}:{settings.service_user}"
    duplicates_before = _metric(root, "tgstack_gateway_duplicates_total")

    _drop(root, f"sample-{-channel}.jsonl", body, owner)

    def all_signals() -> dict[str, int]:
        counts = _channel_counts(root, settings, channel)
        assert counts == {
            "messages": len(posts),
            "unprocessed": 0,
            "not_marked_once": 0,
            "signals": expected_signals,
        }
        return counts

    retry(all_signals, timeout=120)

    # Dropped again under another name, and the first file replaced: still exactly once.
    _drop(root, f"sample-{-channel}-again.jsonl", body, owner)
    _drop(root, f"sample-{-channel}.jsonl", body, owner)

    def reread_twice() -> None:
        seen = _metric(root, "tgstack_gateway_duplicates_total") - duplicates_before
        assert seen >= 2 * len(posts)

    retry(reread_twice, timeout=60)
    time.sleep(3)  # anything the re-drops could have set off downstream has happened by now
    all_signals()
    root.run(f"rm -f {SPOOL_DIR}/sample-{-channel}.jsonl {SPOOL_DIR}/sample-{-channel}-again.jsonl")
