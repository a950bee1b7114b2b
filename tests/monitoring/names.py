"""Metric names the alerts and dashboards may use from the tgstack services."""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase

from tgstack import metrics

# Metrics a tgstack service is to export but that runtime/tgstack/metrics.py does not define
# yet; alerts/panels on them evaluate to nothing until it does. Keep this list short and
# remove an entry as soon as metrics.py has it.
ANNOUNCED: dict[str, str] = {}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "enum": ("",),
}


def tgstack_sample_names() -> set[str]:
    """Every sample name runtime/tgstack/metrics.py can expose."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names
