"""Prometheus configuration and alert rules of role tgstack_monitoring, checked by promtool and
by a real Prometheus running them."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import yaml

from tests.monitoring.check_dashboards import metric_names
from tests.monitoring.conftest import REPO, RULE_TESTS, RULES_FILE, LivePrometheus, Rendered
from tests.monitoring.names import ANNOUNCED, tgstack_sample_names

# The seed's eight alerts (DESIGN.md, reference values): name -> `for`.
SEED_ALERTS = {
    "TelegramGatewayDown": "2m",
    "HighPollingLag": "5m",
    "RedisClusterDown": "1m",
    "DatabaseConnectionPoolExhausted": "2m",
    "MessageQueueBuilding": "10m",
    "LowCacheHitRate": "15m",
    "DiskSpaceLow": "5m",
    "HighMemoryUsage": "5m",
}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_promtool_accepts_the_rendered_prometheus_config(promtool: str, rendered: Rendered):
    done = _run([promtool, "check", "config", str(rendered.dir / "prometheus/prometheus.yml")])
    assert done.returncode == 0, done.stdout + done.stderr
    # the rule files are found relative to the config and checked with it
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout + done.stderr


def test_promtool_accepts_the_alert_rules(promtool: str):
    done = _run([promtool, "check", "rules", str(RULES_FILE)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rule_unit_tests_pass(promtool: str):
    assert RULE_TESTS, "no tests/monitoring/rules/*.test.yml"
    done = _run([promtool, "test", "rules", *map(str, RULE_TESTS)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_quiet():
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group["alert_rule_test"]:
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"


def test_the_seed_alerts_exist_with_their_durations():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for name, duration in SEED_ALERTS.items():
        assert name in rules, name
        assert rules[name].get("for") == duration, name


def test_every_alert_has_severity_summary_description_and_a_documented_runbook():
    docs = (REPO / "docs" / "monitoring.md").read_text()
    anchors = {m.lower() for m in re.findall(r"^#{2,4} +([A-Za-z]+)\s*$", docs, re.M)}
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["labels"].get("service"), name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key), f"{name}: no {key}"
        assert rule["annotations"]["runbook"].startswith(f"docs/monitoring.md#{name.lower()}"), name
        assert name.lower() in anchors, f"docs/monitoring.md has no section '{name}'"


def test_alert_rules_use_only_metrics_the_tgstack_services_export():
    known = tgstack_sample_names() | set(ANNOUNCED)
    for rule in alert_rules():
        used = {n for n in metric_names(rule["expr"]) if n.startswith("tgstack_")}
        assert used <= known, f"{rule['alert']}: unknown {sorted(used - known)}"


def test_low_cache_hit_rate_counts_only_poll_window_hits_and_misses():
    rule = next(r for r in alert_rules() if r["alert"] == "LowCacheHitRate")
    expr = " ".join(rule["expr"].split())
    assert 'tgstack_cache_operations_total{operation="get_unprocessed",result=~"hit|miss"}' in expr
    assert 'tgstack_cache_operations_total{operation="get_unprocessed",result="hit"}' in expr
    assert expr.endswith("< 0.5")


def test_live_prometheus_loads_every_alert_rule_and_evaluates_it_without_error(
    live_prometheus: LivePrometheus,
):
    answer = live_prometheus.api.get("/api/v1/rules", type="alert")
    rules = [rule for group in answer["data"]["groups"] for rule in group["rules"]]
    assert sorted(r["name"] for r in rules) == sorted(r["alert"] for r in alert_rules())
    broken = {r["name"]: r.get("lastError") for r in rules if r.get("health") == "err"}
    assert broken == {}


def test_live_prometheus_scrapes_the_three_tgstack_services_with_the_cluster_label(
    live_prometheus: LivePrometheus,
):
    up = live_prometheus.api.query('up{job=~"tgstack-.*"}')
    assert sorted((s["metric"]["job"], s["value"][1]) for s in up) == [
        ("tgstack-api", "1"),
        ("tgstack-gateway", "1"),
        ("tgstack-poller", "1"),
    ]
    config = live_prometheus.api.get("/api/v1/status/config")["data"]["yaml"]
    assert yaml.safe_load(config)["global"]["external_labels"] == {"cluster": "telegram-stack"}


def test_absent_exporters_raise_their_down_alerts_in_the_live_prometheus(
    live_prometheus: LivePrometheus,
):
    # No exporter runs next to this Prometheus: the "down" rules see it (pending or firing).
    alerts = {
        a["labels"]["alertname"]
        for a in live_prometheus.api.get("/api/v1/alerts")["data"]["alerts"]
    }
    assert {"PostgresDown", "PgBouncerDown", "RabbitMQDown", "RedisClusterDown"} <= alerts
    assert "TelegramGatewayDown" not in alerts
