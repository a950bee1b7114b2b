"""The machine a run measured: its size, versions, load average and resource usage.

On a shared machine (two cores, other work running) figures are skewed; the load average
before and after each run goes into its result so a noisy run is visible.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tgstack import __version__
from tgstack.loadtest.stats import Sample
from tgstack.testing_tools import require_test_tooling


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where /proc is missing)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_total_mb() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return None


def _command_version(argv: list[str], pattern: str) -> str | None:
    try:
        output = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(pattern, output)
    return found.group(1) if found else None


def describe(server_versions: dict[str, str | None] | None = None) -> dict[str, Any]:
    """nproc, memory, CPU model, kernel, Python, tgstack and the servers' versions."""
    return {
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "memory_mb": _memory_total_mb(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tgstack": __version__,
        "servers": server_versions or {},
    }


def local_server_versions() -> dict[str, str | None]:
    """Versions of the server packages installed here (what ``--local`` starts)."""
    require_test_tooling("the versions of the local servers")
    from tgstack_testing.localstack import postgres_bin_dir

    postgres: str | None
    try:
        postgres = _command_version(
            [str(postgres_bin_dir() / "postgres"), "--version"], r"(\d+(?:\.\d+)*)"
        )
    except Exception:
        postgres = None
    return {
        "postgresql": postgres,
        "pgbouncer": _command_version(["pgbouncer", "--version"], r"PgBouncer (\S+)"),
        "redis": _command_version(["redis-server", "--version"], r"v=(\S+)"),
        "rabbitmq": _dpkg_version("rabbitmq-server"),
    }


def _dpkg_version(package: str) -> str | None:
    return _command_version(["dpkg-query", "-W", "-f=${Version}", package], r"^(\S+)")


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _memory_used_mb() -> float:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, rest = line.split(":", 1)
            values[name] = int(rest.split()[0])
    if "MemTotal" not in values or "MemAvailable" not in values:
        return 0.0
    return (values["MemTotal"] - values["MemAvailable"]) / 1024


def _sectors_written() -> int:
    """Sectors written by whole disks (not partitions) since boot."""
    total = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/diskstats").read_text().splitlines():
            parts = line.split()
            name = parts[2]
            if re.fullmatch(r"(sd[a-z]+|vd[a-z]+|xvd[a-z]+|nvme\d+n\d+)", name):
                total += int(parts[9])
    return total


class ResourceSampler:
    """CPU busy %, memory used and disk writes of the whole machine, once a second."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resources", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        previous_cpu = _cpu_times()
        previous_sectors = _sectors_written()
        previous_at = time.monotonic()
        while not self._stop.wait(self.interval):
            cpu = _cpu_times()
            sectors = _sectors_written()
            now = time.monotonic()
            busy = 0.0
            if cpu is not None and previous_cpu is not None and cpu[1] > previous_cpu[1]:
                busy = 100.0 * (cpu[0] - previous_cpu[0]) / (cpu[1] - previous_cpu[1])
            elapsed = max(1e-6, now - previous_at)
            written = (sectors - previous_sectors) * 512 / 1_048_576 / elapsed
            one_minute = loadavg()
            self.samples.append(
                Sample(
                    at=time.time(),
                    cpu_percent=round(busy, 1),
                    memory_used_mb=round(_memory_used_mb(), 1),
                    disk_write_mb_s=round(written, 2),
                    loadavg_1m=one_minute[0] if one_minute else 0.0,
                )
            )
            previous_cpu, previous_sectors, previous_at = cpu, sectors, now

    def summary(self) -> dict[str, float | None]:
        if not self.samples:
            return {"cpu_percent_mean": None, "cpu_percent_max": None, "memory_used_mb_max": None}
        cpu = [s.cpu_percent for s in self.samples]
        return {
            "cpu_percent_mean": round(sum(cpu) / len(cpu), 1),
            "cpu_percent_max": max(cpu),
            "memory_used_mb_max": max(s.memory_used_mb for s in self.samples),
            "disk_write_mb_s_mean": round(
                sum(s.disk_write_mb_s for s in self.samples) / len(self.samples), 2
            ),
        }


def stack_versions(settings: Any) -> dict[str, str | None]:
    """The versions the servers of ``settings`` report (best effort, None when unreachable)."""
    versions: dict[str, str | None] = {"postgresql": None, "redis": None, "rabbitmq": None}
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(
            settings.require_database_url(), autocommit=True, prepare_threshold=None
        ) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            versions["postgresql"] = str(row[0]) if row else None
    with contextlib.suppress(Exception):
        from tgstack.redis_client import close_redis_client, redis_client_from

        client = redis_client_from(settings)
        try:
            versions["redis"] = str(client.info("server").get("redis_version"))
        finally:
            close_redis_client(client)
    with contextlib.suppress(Exception):
        from amqpstorm.uri_connection import UriConnection

        connection = UriConnection(settings.require_amqp_url())
        try:
            raw = connection.server_properties.get("version")
            versions["rabbitmq"] = raw.decode() if isinstance(raw, bytes) else str(raw)
        finally:
            connection.close()
    return versions
