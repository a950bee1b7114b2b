"""What to do with one message: a pure decision, no I/O.

Every post is classified (``tgstack.signals.classify``) and ends as one result for
``tp_capital.apply_processing_results`` (sql/061):

* a **signal** — processed, with the signal's fields;
* a **follow-up** (target_hit, stop_moved, stopped, closed, cancelled) — processed, with the
  event; the database links it to its signal and re-derives the signal's status;
* **needs_review** (signal labels and a ticker, but incomplete) — processed, with a review row,
  so it is listed rather than silently dropped;
* **chatter** — ignored.

Whatever a post was before, the result replaces it: an edit that makes a signal chatter
retires the signal, an edit that completes a review retires the review.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, Literal

from tgstack.models import MessageKey, StoredMessage
from tgstack.signals import Classification, Kind, Signal, classify
from tgstack.signals.model import EVENT_KINDS

ResultState = Literal["processed", "ignored", "failed"]
# How far back a follow-up that names only its asset looks for its signal (sql/061; the
# setting TGSTACK_POLLER_SIGNAL_LINK_WINDOW_HOURS overrides it in the service).
DEFAULT_LINK_WINDOW = timedelta(days=14)


def _exact(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class ProcessingResult:
    key: MessageKey
    state: ResultState
    signal: Signal | None = None
    error: str | None = None
    classification: Classification | None = None

    @property
    def kind(self) -> Kind | None:
        """The post's kind, or None for a failure."""
        return None if self.classification is None else self.classification.kind

    def to_json(self) -> dict[str, Any]:
        """The form tp_capital.apply_processing_results takes; prices as exact strings."""
        signal = None
        if self.signal is not None:
            signal = {
                name: str(value) if isinstance(value, Decimal) else value
                for name, value in (
                    ("asset", self.signal.asset),
                    ("signal_type", self.signal.signal_type),
                    ("buy_min", self.signal.buy_min),
                    ("buy_max", self.signal.buy_max),
                    ("target_1", self.signal.target_1),
                    ("target_2", self.signal.target_2),
                    ("target_final", self.signal.target_final),
                    ("stop", self.signal.stop),
                )
            }
        return {
            "channel_id": self.key.channel_id,
            "message_id": self.key.message_id,
            "state": self.state,
            "error": self.error,
            "signal": signal,
            "event": self._event_json(),
            "review": self._review_json(),
        }

    def _event_json(self) -> dict[str, Any] | None:
        found = self.classification
        if self.state != "processed" or found is None or found.kind not in EVENT_KINDS:
            return None
        stop = found.stop
        return {
            "kind": found.kind,
            "asset": found.asset,
            "target": None if found.target is None else str(found.target),
            "stop": _exact(stop) if isinstance(stop, Decimal) else None,
            "stop_ref": stop if isinstance(stop, str) else None,
            "result": found.result,
        }

    def _review_json(self) -> dict[str, Any] | None:
        found = self.classification
        if self.state != "processed" or found is None or found.kind != "needs_review":
            return None
        return {"asset": found.asset, "missing": list(found.missing)}


def decide(message: StoredMessage) -> ProcessingResult:
    """Signals, follow-ups and posts to review are processed; chatter is ignored."""
    found = classify(message.record.body)
    if found.kind == "chatter":
        return ProcessingResult(message.key, "ignored", classification=found)
    return ProcessingResult(message.key, "processed", found.signal, classification=found)


def failed(key: MessageKey, error: str) -> ProcessingResult:
    return ProcessingResult(key, "failed", error=error[:2000])
