"""The native tgstack services on a deployed server (role tgstack_runtime), with testinfra.

Units active, enabled and hardened (systemd-analyze security <= 1.5 on the server itself), the
env file private, every port on loopback, migrations applied, and the gateway's source at work.
On a sandbox (tgstack_runtime_telegram_test_server), the telethon gateway is signed in to the
local Telegram test server, and the sample channel posted through that server over MTProto ends
in PostgreSQL as messages and TP Capital signals exactly once, also across a gateway restart
and a dropped connection. `tgstack replay` of a spool file twice stores its posts once.

Settings (environment of the test run): TGSTACK_RUNTIME_DIR (default tgstack_runtime_install_dir of
roles/tgstack/defaults/main.yml, /opt/tgstack/runtime).
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

from conftest import StackSettings, docker_exec, role_defaults

testinfra_hosts = ["ansible://tgstack"]

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "channel-sample.jsonl"
WHEELHOUSE = REPO / "roles" / "tgstack_runtime" / "files" / "wheelhouse.py"
DEFAULTS = role_defaults()
RUNTIME_DIR = os.environ.get("TGSTACK_RUNTIME_DIR", DEFAULTS["tgstack_runtime_install_dir"])
ENV_FILE = "tgstack.env"
MAX_EXPOSURE = 1.5

# The gateway is the template tgstack-gateway@, one instance per account (main by default).
UNITS = {
    "tgstack-gateway@main": int(DEFAULTS["tgstack_runtime_gateway_port"]),
    "tgstack-poller": int(DEFAULTS["tgstack_runtime_poller_port"]),
    "tgstack-api": int(DEFAULTS["tgstack_runtime_api_port"]),
}
# The sandbox's local Telegram test server (tgstack_runtime_telegram_test_* role defaults).
TEST_SERVER_UNIT = "tgstack-telegram-test"
TEST_SERVER_USER = "tgstack-telegram-test"
TEST_SERVER_DIR = "/opt/tgstack/telegram-test"
TEST_SERVER_STATE = "/var/lib/tgstack-telegram-test"
TEST_SERVER_PORTS = (4020, 4021)  # MTProto, control
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


def unit_file(unit: str) -> str:
    """The file of a unit, the template's for an instance (tgstack-gateway@main)."""
    name = unit.split("@", 1)[0] + "@" if "@" in unit else unit
    return f"/etc/systemd/system/{name}.service"


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
    props = unit_properties(root, "tgstack-gateway@main", "RestartPreventExitStatus")
    assert "78" in props["RestartPreventExitStatus"].split()


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_is_hardened_to_at_most_1_5_in_systemd_analyze_security(root, unit):
    path = unit_file(unit)
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
        text = root.file(unit_file(unit)).content_string
        assert all(value not in text for value in secrets.values() if len(value) >= 8)


def test_each_gateway_account_has_a_private_env_file_and_the_single_unit_is_gone(root, settings):
    account = root.file(f"{settings.config_dir}/gateway-main.env")
    assert (account.mode, account.user) == (0o600, settings.service_user)
    assert "TGSTACK_GATEWAY_ACCOUNT=main" in account.content_string
    assert f"TGSTACK_GATEWAY_PORT={UNITS['tgstack-gateway@main']}" in account.content_string
    assert not root.file("/etc/systemd/system/tgstack-gateway.service").exists
    health = http_get(root, UNITS["tgstack-gateway@main"], "/health")[1]
    assert json.loads(health)["account"] == "main"


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
    assert http_get(root, UNITS["tgstack-api"], "/v1/channels")[0] == 401
    status, body = http_get(root, UNITS["tgstack-api"], "/v1/channels", secrets["api_read_token"])
    assert status == 200, body


# ----- the sandbox's Telegram: the local test server ------------------------------------------


def _env(root: Any, settings: StackSettings) -> dict[str, str]:
    content = root.file(f"{settings.config_dir}/{ENV_FILE}").content_string
    return dict(
        line.split("=", 1) for line in content.splitlines() if "=" in line and line[0] != "#"
    )


def _test_server_env(root: Any, settings: StackSettings) -> dict[str, str]:
    env = _env(root, settings)
    if not env.get("TGSTACK_TELEGRAM_SERVER"):
        pytest.fail(
            "this server's gateway reads Telegram itself: run this check on a sandbox "
            "(tgstack_runtime_telegram_test_server: true) or deselect it with -k 'not test_server'"
        )
    return env


def _test_server(root: Any, *args: str, stdin: str | None = None) -> Any:
    """A control subcommand of the server's test server, through the role's root-only command."""
    feed = f"echo {base64.b64encode(stdin.encode()).decode()} | base64 -d | " if stdin else ""
    command = " ".join(shlex.quote(a) for a in args)
    out = root.run(f"{feed}tgstack-telegram-test {command}")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def test_test_server_runs_on_loopback_as_its_own_user_with_private_state(root, settings):
    _test_server_env(root, settings)
    service = root.service(TEST_SERVER_UNIT)
    assert service.is_running, root.run(f"journalctl -u {TEST_SERVER_UNIT} -n 30").stdout
    assert service.is_enabled
    main_pid = unit_properties(root, TEST_SERVER_UNIT, "MainPID")["MainPID"]
    assert root.check_output(f"ps -o user= -p {main_pid}").strip() == TEST_SERVER_USER
    for port in TEST_SERVER_PORTS:
        assert root.socket(f"tcp://127.0.0.1:{port}").is_listening
        assert not root.socket(f"tcp://0.0.0.0:{port}").is_listening
    state = root.file(f"{TEST_SERVER_STATE}/state.json")
    key = root.file(f"{TEST_SERVER_STATE}/server_public.pem")
    assert (state.user, state.mode) == (TEST_SERVER_USER, 0o600)  # it holds the auth keys
    assert key.mode == 0o644
    assert root.file(TEST_SERVER_DIR).user == "root"
    control = root.file("/usr/local/bin/tgstack-telegram-test")  # it can post and revoke
    assert (control.user, control.mode) == ("root", 0o750)


def test_test_server_gateway_is_telethon_signed_in_and_reaches_only_loopback(root, settings):
    env = _test_server_env(root, settings)
    session = root.file(env["TGSTACK_TELEGRAM_SESSION"])

    assert env["TGSTACK_GATEWAY_SOURCE"] == "telethon"
    assert env["TGSTACK_TELEGRAM_SERVER"] == f"127.0.0.1:{TEST_SERVER_PORTS[0]}"
    assert (session.user, session.mode) == (settings.service_user, 0o600)
    allowed = unit_properties(root, "tgstack-gateway@main", "IPAddressAllow")["IPAddressAllow"]
    assert sorted(allowed.split()) == ["127.0.0.0/8", "::1/128"]
    # Every configured channel is one the signed-in account reached through its dialogs.
    followed = {int(c) for c in env["TGSTACK_CHANNELS"].split(",")}
    channels = {-(10**12) - c["id"] for c in _test_server(root, "info")["channels"]}
    assert followed <= channels


def _counts(root: Any, settings: StackSettings, channel: int, ids: range) -> dict[str, int]:
    rows = psql(
        root,
        settings,
        "SELECT count(*),"
        " count(*) FILTER (WHERE processing_state IN ('pending', 'processing')),"
        " count(*) FILTER (WHERE coalesce((metadata->>'marks')::int, 0) <> 1),"
        " (SELECT count(*) FROM tp_capital.signals s WHERE s.channel_id = "
        f"{channel} AND s.message_id BETWEEN {ids.start} AND {ids.stop - 1})"
        f" FROM telegram_gateway.messages WHERE channel_id = {channel}"
        f" AND message_id BETWEEN {ids.start} AND {ids.stop - 1}",
    )
    messages, unprocessed, not_marked_once, signals = (int(v) for v in rows[0])
    return {
        "messages": messages,
        "unprocessed": unprocessed,
        "not_marked_once": not_marked_once,
        "signals": signals,
    }


def test_test_server_sample_posted_over_the_wire_ends_as_signals_exactly_once(root, settings):
    env = _test_server_env(root, settings)
    from tgstack.signals import parse_signal

    # The committed sample, posted as new posts to the last followed channel (ids are the
    # server's: the next ones of that channel, so every run counts its own range).
    channel = int(env["TGSTACK_CHANNELS"].split(",")[-1])
    bare = -channel - 10**12
    posts = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    expected_signals = sum(1 for p in posts if parse_signal(p["text"]) is not None)
    assert (len(posts), expected_signals) == (24, 14)

    posted = _test_server(root, "post-file", str(bare), "-", stdin=SAMPLE.read_text())
    ids = range(posted["first_id"], posted["last_id"] + 1)
    assert len(ids) == len(posts)
    expected = {"messages": len(posts), "unprocessed": 0, "not_marked_once": 0,
                "signals": expected_signals}  # fmt: skip

    def all_signals() -> None:
        assert _counts(root, settings, channel, ids) == expected

    retry(all_signals, timeout=120)

    # Its PETR4 trade is followed up: a partial at target 1 moving the stop to the entry, then
    # closed with a profit; both follow-ups name the asset and link to the signal.
    lifecycle = psql(
        root,
        settings,
        "SELECT s.status, s.current_stop, s.result, count(e.id)"
        " FROM tp_capital.signals s JOIN tp_capital.signal_events e ON e.signal_id = s.id"
        f" WHERE s.channel_id = {channel} AND s.message_id BETWEEN {ids.start} AND {ids.stop - 1}"
        " GROUP BY s.id",
    )
    assert [tuple(row) for row in lifecycle] == [("closed", "36.85", "gain", "2")]

    # The gateway restarted and its connection dropped: it catches up, and stores none twice.
    assert root.run("systemctl restart tgstack-gateway@main").rc == 0
    _test_server(root, "drop")
    probe = _test_server(root, "post", str(bare), "probe after the restart")["id"]

    def probe_stored() -> None:
        assert _counts(root, settings, channel, range(probe, probe + 1))["messages"] == 1

    retry(probe_stored, timeout=120)
    all_signals()


def test_replay_of_a_spool_file_stores_its_posts_once(root, settings):
    """The spool format stays for replays: `tgstack replay` of the same file twice."""
    channel = -1009000000000 - int(uuid.uuid4().int % 999_999_999)
    posts = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    body = "".join(json.dumps(p | {"channel_id": channel}) + "\n" for p in posts)
    path = root.check_output("mktemp --suffix=.jsonl").strip()
    encoded = base64.b64encode(body.encode()).decode()
    assert root.run(f"echo {encoded} | base64 -d > {path} && chmod 0644 {path}").rc == 0
    ids = range(min(p["message_id"] for p in posts), max(p["message_id"] for p in posts) + 1)

    replays = [
        root.run(f"sudo -u {settings.service_user} tgstack replay {path}") for _ in range(2)
    ]
    root.run(f"rm -f {path}")

    assert [r.rc for r in replays] == [0, 0], [r.stderr for r in replays]
    first, second = (json.loads(r.stdout) for r in replays)

    def stored_once() -> None:
        counts = _counts(root, settings, channel, ids)
        assert (counts["messages"], counts["not_marked_once"]) == (len(posts), 0)

    retry(stored_once, timeout=60)
    assert (first["read"], first["stored"], first["rejected"]) == (len(posts), len(posts), 0)
    assert (second["stored"], second["duplicates"]) == (0, len(posts))
