"""Monitoring on a deployed server (testinfra): run by Molecule's verifier, or by an operator
against any inventory:

    pytest tests/infra/test_monitoring.py --hosts=ansible://all \
        --ansible-inventory=inventories/production --connection=ansible

Settings (environment of the test run): TGSTACK_PROMETHEUS_URL (default
http://127.0.0.1:9090, as seen from the server), TGSTACK_MONITORING_DIR (default
/opt/tgstack/monitoring), TGSTACK_MONITORING_PROJECT (default tgstack-monitoring); the defaults
are the roles' (tgstack_bind_address, tgstack_monitoring_prometheus_port, _dir, _project_name in
roles/tgstack/defaults/main.yml).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import time
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from conftest import role_defaults

testinfra_hosts = ["ansible://tgstack"]

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "roles/tgstack_monitoring/files/prometheus/rules/tgstack-alerts.yml"
DASHBOARDS = REPO / "grafana/dashboards"
CHECKER = REPO / "tests/monitoring/check_dashboards.py"

DEFAULTS = role_defaults()
PROMETHEUS = os.environ.get(
    "TGSTACK_PROMETHEUS_URL",
    f"http://{DEFAULTS['tgstack_bind_address']}:{DEFAULTS['tgstack_monitoring_prometheus_port']}",
).rstrip("/")
MONITORING_DIR = os.environ.get("TGSTACK_MONITORING_DIR", DEFAULTS["tgstack_monitoring_dir"])
PROJECT = os.environ.get("TGSTACK_MONITORING_PROJECT", DEFAULTS["tgstack_monitoring_project_name"])

# Jobs prometheus.yml must scrape (grafana only where Grafana runs).
EXPECTED_JOBS = {
    "prometheus",
    "tgstack-gateway",
    "tgstack-poller",
    "tgstack-api",
    "node",
    "postgres",
    "pgbouncer",
    "redis",
    "redis-sentinel",
    "rabbitmq",
}

_GET = (
    "import json,sys,urllib.parse,urllib.request\n"
    "url=sys.argv[1]+sys.argv[2]+('?'+sys.argv[3] if sys.argv[3] else '')\n"
    "print(urllib.request.urlopen(url,timeout=20).read().decode())\n"
)


def prometheus_get(host: Any, path: str, **params: str) -> dict[str, Any]:
    """GET a Prometheus API path from the server itself (its Prometheus listens on loopback)."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    cmd = "python3 -c {} {} {} {}".format(*map(shlex.quote, (_GET, PROMETHEUS, path, query)))
    out = host.run(cmd)
    assert out.rc == 0, f"GET {PROMETHEUS}{path} on the server failed: {out.stderr}"
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _alert_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return sorted(rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule)


def _retry(check: Any, timeout: float = 120, interval: float = 5) -> Any:
    """Run ``check`` until it returns without AssertionError (targets need a scrape or two)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


def test_every_prometheus_target_is_up(host):
    def all_up() -> None:
        targets = prometheus_get(host, "/api/v1/targets", state="active")["data"]["activeTargets"]
        jobs = {t["labels"]["job"] for t in targets}
        assert jobs >= EXPECTED_JOBS, f"jobs missing: {sorted(EXPECTED_JOBS - jobs)}"
        down = [
            f"{t['labels']['job']} {t['labels']['instance']}: {t['health']} {t.get('lastError')}"
            for t in targets
            if t["health"] != "up"
        ]
        assert down == []

    _retry(all_up)


def test_every_alert_rule_is_loaded_and_evaluates_without_error(host):
    def loaded() -> None:
        groups = prometheus_get(host, "/api/v1/rules", type="alert")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert sorted(r["name"] for r in rules) == _alert_names()
        assert all(r.get("lastEvaluation", "").startswith("20") for r in rules), "not evaluated yet"
        broken = {r["name"]: r.get("lastError") for r in rules if r.get("health") != "ok"}
        assert broken == {}

    _retry(loaded, timeout=60)


def test_prometheus_labels_everything_with_the_cluster(host):
    config = yaml.safe_load(prometheus_get(host, "/api/v1/status/config")["data"]["yaml"])
    assert config["global"]["external_labels"] == {"cluster": "telegram-stack"}


def test_the_deployed_rules_and_dashboards_are_the_repository_files(host):
    pairs = [(RULES, f"{MONITORING_DIR}/prometheus/rules/{RULES.name}")]
    pairs += [
        (p, f"{MONITORING_DIR}/grafana/dashboards/{p.name}") for p in DASHBOARDS.glob("*.json")
    ]
    for local, remote in pairs:
        deployed = host.file(remote)
        assert deployed.is_file, remote
        assert deployed.sha256sum == hashlib.sha256(local.read_bytes()).hexdigest(), remote


def test_every_dashboard_query_evaluates_on_the_servers_prometheus(host):
    script = base64.b64encode(CHECKER.read_bytes()).decode()
    cmd = (
        f"echo {script} | base64 -d > /tmp/tgstack-check-dashboards.py && "
        f"python3 /tmp/tgstack-check-dashboards.py --json --prometheus {shlex.quote(PROMETHEUS)} "
        f"{shlex.quote(MONITORING_DIR + '/grafana/dashboards')}; "
        "rc=$?; rm -f /tmp/tgstack-check-dashboards.py; exit $rc"
    )
    out = host.run(cmd)
    assert out.stdout.strip(), f"checker printed nothing: {out.stderr}"
    results = json.loads(out.stdout)
    assert len(results) > 60
    failed = [f"{r['dashboard']} / {r['where']}: {r['error']}" for r in results if not r["ok"]]
    assert failed == []
    assert out.rc == 0, out.stderr


def test_every_scraped_port_listens_on_loopback_only(host):
    # Prometheus, the exporters, RabbitMQ's plugin and the native services: all on 127.0.0.1.
    targets = prometheus_get(host, "/api/v1/targets", state="active")["data"]["activeTargets"]
    ports = {urllib.parse.urlsplit(t["scrapeUrl"]).port for t in targets}
    assert len(ports) >= 8
    for port in sorted(p for p in ports if p):
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening, port
        assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening, port
        assert not host.socket(f"tcp://:::{port}").is_listening, port


def _as_root(host: Any) -> Any:
    return contextlib.nullcontext() if host.user().name == "root" else host.sudo()


def _containers(host: Any) -> list[dict[str, Any]]:
    with _as_root(host):
        out = host.check_output(f"docker compose -p {shlex.quote(PROJECT)} ps --all --format json")
    text = out.strip()
    if text.startswith("["):  # compose < 2.21 prints one array, later one object per line
        return json.loads(text)  # type: ignore[no-any-return]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_monitoring_containers_run_and_are_healthy(host):
    def healthy() -> None:
        states = {c["Service"]: (c["State"], c.get("Health", "")) for c in _containers(host)}
        expected = {
            "prometheus",
            "node-exporter",
            "postgres-exporter",
            "pgbouncer-exporter",
            "redis-exporter",
        }
        assert set(states) >= expected
        assert {s: v for s, v in states.items() if v != ("running", "healthy")} == {}

    _retry(healthy, timeout=90)


def test_grafana_is_healthy_or_at_least_provisioned(host):
    provisioning = [
        f"{MONITORING_DIR}/grafana/provisioning/datasources/tgstack.yml",
        f"{MONITORING_DIR}/grafana/provisioning/dashboards/tgstack.yml",
    ]
    for path in provisioning:
        assert host.file(path).is_file, path
    if "grafana" in {c["Service"] for c in _containers(host)}:
        out = host.check_output(
            "python3 -c {}".format(
                shlex.quote(
                    "import urllib.request;"
                    "print(urllib.request.urlopen('http://127.0.0.1:3100/api/health',timeout=10)"
                    ".read().decode())"
                )
            )
        )
        assert json.loads(out)["database"] == "ok"
        assert host.socket("tcp://127.0.0.1:3100").is_listening


def test_files_holding_passwords_are_private(host):
    with _as_root(host):
        for name in ("postgres-exporter", "pgbouncer-exporter", "grafana"):
            env = host.file(f"{MONITORING_DIR}/env/{name}.env")
            assert env.is_file, name
            assert env.mode == 0o600, name
            assert env.user == "root", name
        passwords = host.file(f"{MONITORING_DIR}/redis-exporter/passwords.json")
        assert passwords.mode == 0o400
        assert passwords.uid == 65534
        compose = host.file(f"{MONITORING_DIR}/compose.yml").content_string
    # passwords reach the containers through those files only
    assert not re.search(
        r"(PGPASSWORD|DATA_SOURCE_PASS|ADMIN_PASSWORD|REDIS_PASSWORD)\s*[:=]", compose
    )
