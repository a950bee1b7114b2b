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
retires the signal, an edit that completes a review retires the review. The result itself
(``ProcessingResult``, and the link window ``DEFAULT_LINK_WINDOW``) is a record of
``tgstack.models``: the database layer stores it.
"""

from __future__ import annotations

from tgstack.models import MessageKey, ProcessingResult, StoredMessage
from tgstack.signals import classify


def decide(message: StoredMessage) -> ProcessingResult:
    """Signals, follow-ups and posts to review are processed; chatter is ignored."""
    found = classify(message.record.body)
    if found.kind == "chatter":
        return ProcessingResult(message.key, "ignored", classification=found)
    return ProcessingResult(message.key, "processed", found.signal, classification=found)


def failed(key: MessageKey, error: str) -> ProcessingResult:
    return ProcessingResult(key, "failed", error=error[:2000])
