"""Metric names the alerts and dashboards may use from the tgstack services."""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase

from tgstack import metrics

# Metrics a tgstack service is to export but that runtime/tgstack/metrics.py does not define
# yet; alerts/panels on them evaluate to nothing until it does. Keep this list short and
# remove an entry as soon as metrics.py has it.
ANNOUNCED: dict[str, str] = {
    # issue 16: the poller's classification of each post and its unlinked follow-ups
    # (SignalsNeedReview, SignalEventsUnlinked), defined by the poller's half of the issue
    "tgstack_poller_posts_classified_total": "counter {kind}: signal, target_hit, stop_moved, "
    "stopped, closed, cancelled, needs_review, chatter",
    "tgstack_poller_signal_events_unlinked_total": "counter: follow-ups stored with no signal",
}

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
