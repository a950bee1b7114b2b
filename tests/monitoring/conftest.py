"""Fixtures for the monitoring checks: promtool, the role's rendered files, a real Prometheus.

Prometheus and promtool come from the Debian package `prometheus`; when they are missing the
fixture installs the package (root or sudo) and fails with a clear message if it cannot —
nothing is skipped. The Prometheus under test runs the configuration and rules rendered by
role tgstack_monitoring itself (tests/monitoring/render.yml), with the three native tgstack
jobs pointed at `/metrics` endpoints served from this test process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import start_http_server

from tgstack_testing.localstack import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "tgstack_monitoring"
RULES_FILE = ROLE / "files" / "prometheus" / "rules" / "tgstack-alerts.yml"
RULE_TESTS = sorted((REPO / "tests" / "monitoring" / "rules").glob("*.test.yml"))
DASHBOARDS = REPO / "grafana" / "dashboards"
RENDER_PLAYBOOK = REPO / "tests" / "monitoring" / "render.yml"


def _install_prometheus_package() -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    try:
        if not policy.exists() and os.geteuid() == 0:
            # The package must not start a system Prometheus on :9090.
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            made_policy = True
        for cmd in (
            [*sudo, "apt-get", "update", "-qq"],
            [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
        ):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                pytest.fail(
                    "promtool/prometheus are missing and `apt-get install prometheus` failed "
                    f"({' '.join(cmd)}): {done.stderr.strip()[-500:]}"
                )
    finally:
        if made_policy:
            policy.unlink()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _install_prometheus_package()
        path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found after installing the Debian package `prometheus`")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return _binary("prometheus")


def _ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        pytest.fail("ansible-playbook not found: run make venv (the locked dev environment)")
    return found


def render_role(dest: Path, overrides: dict[str, Any]) -> Path:
    """Render role tgstack_monitoring's files into ``dest`` (nothing is started)."""
    extra = dest.parent / f"{dest.name}-vars.json"
    extra.write_text(json.dumps({"tgstack_monitoring_dir": str(dest), **overrides}))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
    }
    done = subprocess.run(
        [_ansible_playbook(), str(RENDER_PLAYBOOK), "-e", f"@{extra}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"rendering the role failed:\n{done.stdout[-4000:]}"
    return dest


def _owner_overrides() -> dict[str, Any]:
    if os.geteuid() == 0:
        return {}
    import grp
    import pwd

    return {
        "tgstack_monitoring_owner": pwd.getpwuid(os.getuid()).pw_name,
        "tgstack_monitoring_group": grp.getgrgid(os.getgid()).gr_name,
        "tgstack_monitoring_container_uid": os.getuid(),
    }


@dataclass(frozen=True)
class NativeServices:
    ports: dict[str, int]


def touch_tgstack_metrics() -> None:
    """Give every tgstack metric (and every label value the dashboards filter on) a series."""
    from tgstack import metrics as m

    for operation in ("cache_message", "is_duplicate", "mark_processed", "cleanup_expired"):
        m.CACHE_OPERATIONS.labels(operation, "ok").inc()
        m.CACHE_OPERATIONS.labels(operation, "error").inc(0)
    for result in ("hit", "miss", "error"):
        m.CACHE_OPERATIONS.labels("get_unprocessed", result).inc()
    for reason in ("error", "empty", "expired", "all_channels"):
        m.CACHE_FALLBACKS.labels("get_unprocessed", reason).inc()
    m.CACHE_FALLBACKS.labels("is_duplicate", "error").inc()
    for operation in ("fetch_unprocessed", "claim_unprocessed", "bulk_upsert", "mark_processed"):
        m.DB_OPERATION_SECONDS.labels(operation).observe(0.004)
        m.DB_ERRORS.labels(operation).inc(0)
        m.DB_RETRIES.labels(operation).inc(0)
    for kind in ("new", "edit", "delete"):
        m.GATEWAY_EVENTS.labels(kind, "user_client").inc()
    m.GATEWAY_STORED.inc()
    m.GATEWAY_DUPLICATES.inc()
    m.GATEWAY_EDITS.inc()
    m.GATEWAY_DELETES.inc()
    m.GATEWAY_REJECTED.labels("replay").inc()
    for path in ("pipeline", "outbox"):
        for result in ("ok", "failed"):
            m.GATEWAY_PUBLISH.labels(path, result).inc()
    m.GATEWAY_OUTBOX_DEPTH.set(3)
    m.GATEWAY_DB_RETRIES.inc()
    m.GATEWAY_PENDING_EVENTS.set(1)
    m.GATEWAY_BACKFILL.labels("-1001649127710").inc()
    m.GATEWAY_FLOOD_WAIT_SECONDS.inc(0)
    m.GATEWAY_CONNECTED.set(1)
    m.GATEWAY_LAST_MESSAGE.labels("-1001649127710").set(time.time())
    m.GATEWAY_INGEST_LATENCY.observe(0.02)
    m.GATEWAY_BATCH_SIZE.observe(10)
    for result in ("processed", "ignored", "failed", "stale"):
        m.POLLER_MESSAGES.labels(result).inc()
    m.POLLER_SIGNALS.inc()
    m.POLLER_SIGNALS_RETIRED.inc(0)
    m.POLLER_LAG_SECONDS.set(2)
    m.POLLER_POLL_SECONDS.observe(0.004)
    for outcome in ("acked", "requeued", "dead_lettered"):
        m.POLLER_DELIVERIES.labels(outcome).inc()
    m.POLLER_QUEUE_DEPTH.set(0)
    m.POLLER_DLQ_DEPTH.set(0)
    for status in ("200", "404", "503"):
        m.API_REQUESTS.labels("/messages", "GET", status).inc()
    m.API_REQUEST_SECONDS.labels("/messages", "GET").observe(0.003)
    for result in ("hit", "miss", "error"):
        m.API_CACHE.labels(result).inc()


@pytest.fixture(scope="session")
def native_services() -> NativeServices:
    """Three /metrics endpoints (gateway, poller, API) serving tgstack.metrics."""
    touch_tgstack_metrics()
    ports = {}
    for job in ("gateway", "poller", "api"):
        port = free_port()
        start_http_server(port, addr="127.0.0.1")
        ports[job] = port
    return NativeServices(ports)


@dataclass(frozen=True)
class Rendered:
    """The role's files rendered for the test Prometheus (official images: Grafana enabled)."""

    dir: Path
    prometheus_port: int


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory, native_services: NativeServices) -> Rendered:
    port = free_port()
    overrides = {
        **_owner_overrides(),
        "tgstack_monitoring_bind_address": "127.0.0.1",
        "tgstack_monitoring_prometheus_port": port,
        "tgstack_monitoring_gateway_metrics_port": native_services.ports["gateway"],
        "tgstack_monitoring_poller_metrics_port": native_services.ports["poller"],
        "tgstack_monitoring_api_metrics_port": native_services.ports["api"],
        "tgstack_monitoring_scrape_interval": "1s",
        "tgstack_monitoring_scrape_timeout": "1s",
        "tgstack_monitoring_evaluation_interval": "1s",
    }
    dest = render_role(tmp_path_factory.mktemp("render") / "monitoring", overrides)
    return Rendered(dest, port)


class PrometheusAPI:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:  # noqa: S310
            return json.loads(response.read().decode())

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]  # type: ignore[no-any-return]


@dataclass
class LivePrometheus:
    url: str
    api: PrometheusAPI
    config_dir: Path
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def live_prometheus(
    tmp_path_factory: pytest.TempPathFactory, prometheus_binary: str, rendered: Rendered
) -> Iterator[LivePrometheus]:
    """Debian's prometheus running the role's rendered config and alert rules."""
    port = rendered.prometheus_port
    base = tmp_path_factory.mktemp("prometheus")
    config_dir = rendered.dir / "prometheus"
    log = (base / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={config_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={base / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    api = PrometheusAPI(url)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def scraped_twice() -> bool:
        # rate() needs two samples of every tgstack job, and the rules a first evaluation.
        got = api.query('count_over_time(up{job=~"tgstack-.*"}[1m]) >= 3')
        return len(got) == 3

    try:
        wait_until(ready, 60, "Prometheus /-/ready", interval=0.2)
        wait_until(scraped_twice, 60, "three scrapes of the tgstack jobs", interval=0.5)
        yield LivePrometheus(url, api, config_dir, process)
    except Exception:
        print((base / "prometheus.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
