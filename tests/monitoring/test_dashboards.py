"""Grafana dashboards: the six of seed §6.3, their panels, and every PromQL expression
evaluated against a real Prometheus scraping real tgstack /metrics endpoints."""

from __future__ import annotations

import json
import re

import yaml

from tests.monitoring.check_dashboards import (
    check,
    extract_queries,
    load_dashboards,
    metric_names,
)
from tests.monitoring.conftest import DASHBOARDS, LivePrometheus, Rendered
from tests.monitoring.names import ANNOUNCED, tgstack_sample_names

# seed §6.3: dashboard -> panels it must have (matched case-insensitively in panel titles)
SEED_PANELS = {
    "telegram-overview": [
        "message processing rate",
        "end-to-end latency (p50, p95, p99)",
        "queue depth",
        "error rate",
        "services up",
    ],
    "timescaledb-performance": [
        "query latency histogram",
        "connection pool",
        "cache hit rate",
        "lock waits",
        "table sizes",
        "index sizes",
    ],
    "redis-cluster": [
        "cache hit/miss rate",
        "memory usage",
        "eviction rate",
        "replication lag",
        "commands/sec",
    ],
    "rabbitmq-queue": [
        "messages ready / unacked",
        "publish / deliver rate",
        "consumer count",
        "queue depth",
    ],
    "mtproto-service": [
        "cpu usage",
        "ram usage",
        "network i/o",
        "connection status",
        "message reception rate",
    ],
    "slo-dashboard": [
        "availability slo",
        "latency slo",
        "error budget remaining",
        "incidents timeline",
    ],
}


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_the_six_seed_dashboards_exist_with_their_panels():
    dashboards = dict(load_dashboards([DASHBOARDS]))
    assert set(dashboards) == set(SEED_PANELS)
    for name, wanted in SEED_PANELS.items():
        titles = " | ".join(p.get("title", "").lower() for p in _panels(dashboards[name]))
        for panel in wanted:
            assert panel in titles, f"{name}: no panel '{panel}'"


def test_dashboards_are_valid_json_with_unique_uids_and_panel_ids():
    uids = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        uids.append(dashboard["uid"])
        ids = [p["id"] for p in _panels(dashboard)]
        assert len(ids) == len(set(ids)), path.name
        assert dashboard["editable"] is False, path.name  # provisioned: edit in git
    assert len(uids) == len(set(uids))


def test_dashboards_only_use_the_provisioned_datasources(rendered: Rendered):
    provisioned = yaml.safe_load(
        (rendered.dir / "grafana/provisioning/datasources/tgstack.yml").read_text()
    )
    uids = {ds["uid"] for ds in provisioned["datasources"]} | {"-- Grafana --"}
    for path in sorted(DASHBOARDS.glob("*.json")):
        used = set(re.findall(r'"uid":\s*"([^"]+)"', path.read_text()))
        used.discard(json.loads(path.read_text())["uid"])
        assert used <= uids, f"{path.name}: {used - uids}"


def test_dashboards_use_only_metrics_the_tgstack_services_export():
    known = tgstack_sample_names() | set(ANNOUNCED)
    for name, dashboard in load_dashboards([DASHBOARDS]):
        for query in extract_queries(dashboard, name):
            used = {n for n in metric_names(query.expr) if n.startswith("tgstack_")}
            assert used <= known, f"{name} / {query.where}: unknown {sorted(used - known)}"


def test_the_cache_hit_rate_panels_count_only_poll_window_hits_and_misses():
    for name, dashboard in load_dashboards([DASHBOARDS]):
        for query in extract_queries(dashboard, name):
            if "tgstack_cache_operations_total" in query.expr and 'result="hit"' in query.expr:
                assert (
                    'tgstack_cache_operations_total{operation="get_unprocessed",result=~"hit|miss"}'
                    in query.expr
                ), f"{name} / {query.where}"


def test_every_dashboard_query_evaluates_against_a_live_prometheus(
    live_prometheus: LivePrometheus,
):
    results = check(live_prometheus.url, [DASHBOARDS])
    assert len(results) > 60
    failures = [f"{r.query.dashboard} / {r.query.where}: {r.error}" for r in results if not r.ok]
    assert failures == []


def test_queries_over_exported_tgstack_metrics_return_series(live_prometheus: LivePrometheus):
    # Catches a wrong label name or value in a selector: an expression that only reads metrics
    # this Prometheus has (all tgstack series are touched) and filters nothing must return data.
    present = set(live_prometheus.api.get("/api/v1/label/__name__/values")["data"])
    checked = 0
    empty = []
    for result in check(live_prometheus.url, [DASHBOARDS]):
        names = metric_names(result.query.expr)
        if (
            not names
            or not any(n.startswith("tgstack_") for n in names)
            or not names <= present
            or re.search(r"[<>]|==|!=", result.query.expr.replace("=~", ""))
        ):
            continue
        checked += 1
        if result.series == 0:
            empty.append(f"{result.query.dashboard} / {result.query.where}: {result.query.expr}")
    assert checked > 30
    assert empty == []
