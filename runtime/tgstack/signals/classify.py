"""What a post is: a signal, a follow-up to one, a signal that needs review, or chatter. Pure.

``classify(text)`` is the entry point the poller calls for every post; ``parse_signal(text)``
is its signal, or None. The decision, in order:

1. The scanner reads the labelled fields and ``events`` the follow-up events.
2. A post with asset and entry price is a **signal** — unless it also *reports* an event
   (``alvo 1 atingido``, ``stopado``): a follow-up that repeats the signal's prices is still a
   follow-up. Instructions inside a signal (``após o alvo 1, mover o stop para a entrada``) are
   its plan, not events.
3. Otherwise a post with an event is that **follow-up**: the first of cancelled, stopped,
   closed, target_hit, stop_moved that it reports (``alvo 2 atingido, stop na entrada`` is a
   target_hit that also carries the new stop).
4. Otherwise a post that carries signal labels and an asset but cannot be completed (no entry
   price, say) **needs review**: an asset with an entry label, or with two of target, stop and
   type; or an entry price with a target or stop but no asset.
5. Anything else is **chatter** — including posts that name tickers and prices.

Invariant: ``classify`` never raises on any text and always returns exactly one kind.
"""

from __future__ import annotations

from typing import NamedTuple

from tgstack.signals.events import Event, find_events, summarise
from tgstack.signals.lexicon import EVENT_WORDS, STOP_L
from tgstack.signals.model import Classification, Signal
from tgstack.signals.scanner import Fields, Scan, read_fields, scan

CHATTER = Classification("chatter")


def _asset(s: Scan, fields: Fields) -> str | None:
    """The labelled asset, else the ticker written with the entry, else the first ticker."""
    if fields.asset is not None:
        return fields.asset
    if fields.entry_ticker is not None:
        return fields.entry_ticker
    return s.tokens[s.tickers[0]].upper() if s.tickers else None


def _signal(asset: str | None, fields: Fields) -> Signal | None:
    if asset is None or not fields.entries:
        return None
    targets = fields.targets
    final = fields.final
    if final is None and targets and max(targets) > 2:
        final = targets[max(targets)]
    entries = fields.entries
    low, high = (
        entries[0]
        if len(entries) == 1
        else (
            min(low for low, _ in entries),
            max(high for _, high in entries),
        )
    )
    return Signal(
        asset=asset,
        signal_type=fields.signal_type,
        buy_min=low,
        buy_max=high,
        target_1=targets.get(1),
        target_2=targets.get(2),
        target_final=final,
        stop=fields.stop,
    )


def _needs_review(asset: str | None, fields: Fields) -> Classification | None:
    labelled = fields.labelled
    if asset is not None:
        weight = len(labelled & {"entry", "target", "stop"}) + (fields.signal_type is not None)
        if "entry" in labelled or weight >= 2:
            return Classification("needs_review", asset, missing=("entry",))
    elif fields.entries and labelled & {"target", "stop"}:
        return Classification("needs_review", None, missing=("asset",))
    return None


class Analysis(NamedTuple):
    """``classify``'s answer with what it was decided on (``--explain`` shows it)."""

    classification: Classification
    scan: Scan | None = None
    fields: Fields | None = None
    events: list[Event] = []  # noqa: RUF012 - a NamedTuple default, never mutated


def analyse(text: str | None) -> Analysis:
    """Scan, read the fields and events, and decide; see the module docstring."""
    if not text:
        return Analysis(CHATTER)
    s = scan(text)
    fields = read_fields(s)
    asset = _asset(s, fields)
    signal = _signal(asset, fields)
    # Without an event word only verbless stop moves are possible, and those are instructions:
    # a complete signal with none is a signal whatever its stop line says.
    words = s.union & EVENT_WORDS
    events = find_events(s) if words or (signal is None and s.union & STOP_L) else []
    if events and (signal is None or not all(e.directive for e in events)):
        event = summarise(events)
        found = Classification(
            event.kind, asset, target=event.target, stop=event.stop, result=event.result
        )
        return Analysis(found, s, fields, events)
    if signal is not None:
        return Analysis(Classification("signal", signal.asset, signal), s, fields, events)
    return Analysis(_needs_review(asset, fields) or CHATTER, s, fields, events)


def classify(text: str | None) -> Classification:
    """What one post is; see the module docstring. Never raises."""
    return analyse(text).classification


def parse_signal(text: str | None) -> Signal | None:
    """The post's signal, or None when it is not one (chatter, a follow-up, incomplete)."""
    return classify(text).signal
