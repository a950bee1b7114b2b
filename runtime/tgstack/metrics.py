"""Prometheus metric definitions shared by every tgstack process.

Alerts and dashboards use these names; change them only together with `roles/` and `grafana/`.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CACHE_OPERATIONS = Counter(
    "tgstack_cache_operations_total",
    "Redis cache operations by operation and result (hit, miss, ok, error).",
    ["operation", "result"],
)
CACHE_FALLBACKS = Counter(
    "tgstack_cache_fallbacks_total",
    "Reads answered by PostgreSQL because Redis missed or failed.",
    ["operation", "reason"],
)
DB_OPERATION_SECONDS = Histogram(
    "tgstack_db_operation_seconds",
    "Time spent in database operations.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DB_ERRORS = Counter(
    "tgstack_db_errors_total",
    "Database operations that failed, by operation.",
    ["operation"],
)
