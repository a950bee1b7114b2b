"""The failover drills, on a server converged with ansible/site.yml (the telethon gateway on the
sandbox's local Telegram test server).

Each drill posts thousands of synthetic posts through the test server while a component fails
(drill.py, run on the server, takes the times next to the services), then checks: posts sent =
rows stored = posts processed, signals stored = signals expected, no post stored or processed
twice, nothing left unpublished or dead-lettered. The credential rotation runs the real playbook
from the controller while posts flow. Figures are printed and collected in
artifacts/failover/drills.json.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.scenarios.conftest import (
    REPO,
    changed_tasks,
    ephemeral_dir,
    print_figure,
    run_playbook,
    sh,
)

testinfra_hosts = ["tgstack"]
# Drills and playbook runs take minutes (pyproject's default timeout is 300 s).
pytestmark = pytest.mark.timeout(1800)

PYTHON = "/opt/tgstack/runtime/venv/bin/python"
DRILL = "/usr/local/lib/tgstack-drill.py"
POSTS = 3000
RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def drill_tool(host: Any) -> None:
    """The drill program on the server; the services up, the gateway signed in."""
    host.ansible(
        "copy",
        f"src={Path(__file__).with_name('drill.py')} dest={DRILL} mode=0644",
        check=False,
        become=True,
    )
    for unit in ("tgstack-telegram-test", "tgstack-gateway@main", "tgstack-poller", "tgstack-api"):
        assert host.service(unit).is_running, unit
    assert host.file("/var/lib/tgstack/gateway.session").mode == 0o600


def run_drill(host: Any, drill: str, seed: int, **options: object) -> Any:
    flags = " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in options.items())
    out = sh(host, f"{PYTHON} {DRILL} {drill} --name {drill} --posts {POSTS} --seed {seed} {flags}")
    result = json.loads(out)
    RESULTS[drill] = result
    for key, value in result.items():
        if key not in ("counts",):
            print_figure(f"{drill} {key}", value)
    print_figure(f"{drill} counts", result["counts"])
    return result


def assert_nothing_lost_or_doubled(result: Any) -> None:
    counts = result["counts"]
    sent = result["posts_sent"]
    assert result["error"] is None, result["error"]
    assert counts["rows"] == sent, "posts sent = rows stored"
    assert counts["distinct_keys"] == sent, "no post stored twice"
    assert counts["message_keys"] == sent
    assert counts["processed"] == sent, "every post processed"
    assert counts["signals"] == result["signals_expected"], "signals stored = signals expected"
    assert counts["processed_twice"] == 0, "no post processed twice"
    assert counts["unpublished"] == 0, "nothing left in the outbox"
    assert result["dlq_depth"] == 0, "nothing dead-lettered"


def test_redis_master_stopped_replica_promoted_and_followed(host: Any) -> None:
    result = run_drill(host, "redis-master", 11)
    assert_nothing_lost_or_doubled(result)
    assert result["promotion_seconds"] <= 10, "a replica is promoted within 10 s"
    assert result["new_master"] != result["old_master"].split(" ")[0]
    assert result["gateway_follows_seconds"] is not None
    assert result["poller_follows_seconds"] is not None


def test_gateway_killed_restarted_by_systemd_and_backfilled(host: Any) -> None:
    result = run_drill(host, "kill-gateway", 12)
    assert_nothing_lost_or_doubled(result)
    assert result["restart_seconds"] <= 15, "systemd restarts the gateway within 15 s"
    assert result["new_pid"] != result["killed_pid"]
    assert result["session_auth_key_kept"] is True, "the Telegram session survives"
    assert result["handshakes_after_kill"] == 0, "no new auth key: the same session signs in"
    assert result["posts_while_down"] > 0, "posts were made while the gateway was down"


def test_database_restarted_pgbouncer_and_pools_recover(host: Any) -> None:
    result = run_drill(host, "restart-db", 13)
    assert_nothing_lost_or_doubled(result)
    assert result["pgbouncer_serving_seconds"] < 60
    assert result["poller_database_ok"] is True


def test_rabbitmq_restarted_outbox_relay_republishes(host: Any) -> None:
    result = run_drill(host, "restart-rabbitmq", 14)
    assert_nothing_lost_or_doubled(result)
    assert result["unpublished_peak"] > 0, "posts went unconfirmed while RabbitMQ was down"


def secrets_now() -> dict[str, str]:
    files = list((ephemeral_dir() / "secrets").glob("*.yml"))
    assert len(files) == 1, files
    return {str(k): str(v) for k, v in yaml.safe_load(files[0].read_text()).items()}


def test_credentials_rotated_while_posts_flow(host: Any) -> None:
    before = secrets_now()
    # A long feed in the background on the server: 6000 posts over about three minutes.
    sh(
        host,
        f"nohup {PYTHON} {DRILL} none --name rotation --posts 6000 --seed 15"
        " --bursts 60 --interval 3 --fault-after 1 --settle-timeout 600"
        " > /root/drill-rotation.json 2> /root/drill-rotation.err < /dev/null &",
    )
    time.sleep(20)  # posts are flowing when the rotation starts
    run = run_playbook("rotate-credentials.yml")
    print_figure("rotation playbook", f"{run.seconds:.0f} s, {run.changed} changes")
    assert run.rc == 0, run.tail(80)
    assert "old ones refused" in run.output
    after = secrets_now()
    rotated = ("postgres_superuser_password", "postgres_app_password", "pgbouncer_admin_password",
               "redis_password", "rabbitmq_password", "rabbitmq_monitor_password")  # fmt: skip
    for name in rotated:
        assert after[name] != before[name], name
    assert after["api_read_token"] == before["api_read_token"], "only the passwords rotate"

    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if sh(host, "test -s /root/drill-rotation.json && echo done || true") == "done":
            break
        time.sleep(5)
    result = json.loads(sh(host, "cat /root/drill-rotation.json"))
    result["rotation_playbook_seconds"] = round(run.seconds, 1)
    RESULTS["rotation"] = result
    print_figure("rotation feed", {k: v for k, v in result.items() if k != "counts"})
    print_figure("rotation counts", result["counts"])
    assert_nothing_lost_or_doubled(result)

    again = run_playbook("rotate-credentials.yml", "-e", "tgstack_rotation_generate=false")
    assert again.rc == 0, again.tail(80)
    print_figure("re-applying the rotated passwords", f"{again.changed} changes")
    assert again.changed == 0, changed_tasks(again)


def stored_posts(host: Any) -> int:
    return int(
        sh(
            host,
            "docker exec -u postgres tgstack-postgres psql -Atd telegram_gateway"
            " -c 'SELECT count(*) FROM telegram_gateway.messages'",
        )
    )


def test_stop_and_start_keep_every_post(host: Any) -> None:
    before = stored_posts(host)
    stop = run_playbook("stop.yml")
    assert stop.rc == 0, stop.tail()
    for unit in ("tgstack-gateway@main", "tgstack-poller", "tgstack-api"):
        assert not host.service(unit).is_running, unit
    states = set(sh(host, "docker ps -a --filter name=^tgstack- --format '{{.State}}'").split())
    assert states == {"exited"}, states
    assert "tgstack-data_postgres-data" in sh(host, "docker volume ls -q").split()
    start = run_playbook("start.yml")
    assert start.rc == 0, start.tail()
    after = stored_posts(host)
    assert after == before, "stop/start keeps every post"
    health = run_playbook("health.yml")
    assert health.rc == 0, health.tail()
    report = json.loads((REPO / "artifacts" / "health" / "server-failover.json").read_text())
    assert report["ok"] is True
    print_figure(
        "stop / start", f"{stop.seconds:.0f} s / {start.seconds:.0f} s, {after} posts kept"
    )


# A second Telegram account: the third test channel moves to it (the role's test-server defaults).
SECOND_ACCOUNT = {"tgstack_runtime_gateway_accounts": [
    {"name": "main", "port": 4006, "channels": [-1001649127710, -1001649127711]},
    {"name": "second", "port": 4016, "channels": [-1001649127712], "phone": "+15550100002"},
]}  # fmt: skip
ACCOUNT_TAGS = ("--tags", "tgstack_secrets,tgstack_monitoring,tgstack_runtime")


def channel_rows(host: Any, channel: int, text: str) -> int:
    return int(sh(
        host,
        "docker exec -u postgres tgstack-postgres psql -Atd telegram_gateway -c"
        f" \"SELECT count(*) FROM telegram_gateway.messages WHERE channel_id = {channel}"
        f" AND text = '{text}'\"",
    ))  # fmt: skip


def test_an_account_added_then_removed_converges_and_changes_nothing_twice(host: Any) -> None:
    """site.yml with a second account: its own unit, session and port; then without it again."""
    added = run_playbook("site.yml", *ACCOUNT_TAGS, "-e", json.dumps(SECOND_ACCOUNT))
    assert added.rc == 0, added.tail(80)
    again = run_playbook("site.yml", *ACCOUNT_TAGS, "-e", json.dumps(SECOND_ACCOUNT))
    assert again.rc == 0, again.tail(80)
    assert again.changed == 0, changed_tasks(again)
    assert host.service("tgstack-gateway@second").is_running
    assert host.file("/var/lib/tgstack/gateway-second.session").mode == 0o600
    second = json.loads(sh(host, "curl -s http://127.0.0.1:4016/health"))
    assert (second["account"], second["status"]) == ("second", "ok")
    targets = sh(host, "curl -s 'http://127.0.0.1:9090/api/v1/targets?state=active'")
    accounts = {t["labels"].get("account") for t in json.loads(targets)["data"]["activeTargets"]
                if t["labels"].get("job") == "tgstack-gateway"}  # fmt: skip
    assert accounts == {"main", "second"}
    sh(host, "tgstack-telegram-test post 1649127712 'to the second account'")
    deadline = time.monotonic() + 60
    while channel_rows(host, -1001649127712, "to the second account") == 0:
        assert time.monotonic() < deadline, "the second account's gateway did not store its post"
        time.sleep(1)

    removed = run_playbook("site.yml", *ACCOUNT_TAGS)
    assert removed.rc == 0, removed.tail(80)
    settled = run_playbook("site.yml", *ACCOUNT_TAGS)
    assert settled.rc == 0, settled.tail(80)
    assert settled.changed == 0, changed_tasks(settled)
    assert not host.service("tgstack-gateway@second").is_running
    assert not host.service("tgstack-gateway@second").is_enabled
    assert not host.file("/etc/tgstack/gateway-second.env").exists
    assert host.file("/var/lib/tgstack/gateway-second.session").exists, "a login is kept"
    print_figure(
        "accounts", f"added in {added.seconds:.0f} s ({added.changed} changes), removed in "
        f"{removed.seconds:.0f} s ({removed.changed} changes), re-runs 0 changes",
    )


def test_print_the_drill_figures() -> None:
    out = REPO / "artifacts" / "failover"
    out.mkdir(parents=True, exist_ok=True)
    (out / "drills.json").write_text(json.dumps(RESULTS, indent=2) + "\n")
    print("\n  drill               sent  stored  signals  recovery")
    keys = {
        "redis-master": "promotion_seconds",
        "kill-gateway": "restart_seconds",
        "restart-db": "pgbouncer_serving_seconds",
        "restart-rabbitmq": "outbox_drained_seconds",
        "rotation": "rotation_playbook_seconds",
    }
    for drill, result in RESULTS.items():
        counts = result["counts"]
        print(
            f"  {drill:18} {result['posts_sent']:5} {counts['rows']:7} {counts['signals']:8}"
            f"  {keys.get(drill, '')}={result.get(keys.get(drill, ''), '')}"
        )
    assert RESULTS, "no drill ran"
