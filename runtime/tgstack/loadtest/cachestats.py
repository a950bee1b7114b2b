"""The pollers' Redis recent-window hit rate, from their ``/metrics`` pages.

A poll asks the channel's recent window first (``MessageCache.get_unprocessed``): a *hit*
when Redis had the window and every body in it; a *miss* otherwise, with the reason of the
database fallback: ``empty`` (nothing in the window: nothing new to read, or a peer took it),
``expired`` (a body had expired), ``error`` (Redis failing). The hit rate is computed over the
difference of two scrapes, so the warm-up is left out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class CacheCounters:
    hits: float = 0.0
    misses: float = 0.0
    fallbacks: dict[str, float] | None = None

    def minus(self, earlier: CacheCounters) -> CacheCounters:
        reasons = dict(self.fallbacks or {})
        for reason, value in (earlier.fallbacks or {}).items():
            reasons[reason] = reasons.get(reason, 0.0) - value
        return CacheCounters(self.hits - earlier.hits, self.misses - earlier.misses, reasons)

    @property
    def reads(self) -> float:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.reads if self.reads else None

    @property
    def hit_rate_when_pending(self) -> float | None:
        """Hits over the reads that found the window non-empty: an empty window is Redis
        correctly saying "nothing new" (the database then answers the same)."""
        empty = (self.fallbacks or {}).get("empty", 0.0)
        useful = self.reads - empty
        return self.hits / useful if useful > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "reads": int(self.reads),
            "hits": int(self.hits),
            "misses": int(self.misses),
            "miss_reasons": {k: int(v) for k, v in sorted((self.fallbacks or {}).items())},
            "hit_rate": None if self.hit_rate is None else round(self.hit_rate, 4),
            "hit_rate_when_pending": None
            if self.hit_rate_when_pending is None
            else round(self.hit_rate_when_pending, 4),
        }


def parse(page: str) -> CacheCounters:
    hits = misses = 0.0
    reasons: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.labels.get("operation") != "get_unprocessed":
                continue
            if sample.name == "tgstack_cache_operations_total":
                if sample.labels.get("result") == "hit":
                    hits += sample.value
                elif sample.labels.get("result") in ("miss", "error"):
                    misses += sample.value
            elif sample.name == "tgstack_cache_fallbacks_total":
                reasons[sample.labels.get("reason", "?")] += sample.value
    return CacheCounters(hits, misses, dict(reasons))
