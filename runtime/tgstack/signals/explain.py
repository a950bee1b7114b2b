"""``--explain``: which words of a post gave which field or event. Pure.

Invariant: explaining never changes the answer — it runs the same ``analyse`` as ``classify``
and only maps token positions back to the (normalised) words.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

from tgstack.signals.classify import analyse
from tgstack.signals.scanner import TOKEN


def explain(text: str | None) -> dict[str, Any]:
    """``{"classification": …, "signal": …, "matches": [{field, words, value}, …]}``."""
    analysis = analyse(text)
    classification = analysis.classification
    out: dict[str, Any] = {
        "classification": classification.to_dict(),
        "signal": classification.signal.to_json_dict() if classification.signal else None,
        "matches": [],
    }
    s, fields = analysis.scan, analysis.fields
    if s is None or fields is None:
        return out
    spans = [m.span() for m in TOKEN.finditer(s.text)]

    def words(first: int, last: int) -> str:
        first, last = min(first, last), max(first, last)
        return " ".join(s.text[spans[first][0] : spans[last][1]].split())

    matches = list(fields.matches)
    if s.tickers and not any(name == "asset" for name, *_ in matches):
        first = s.tickers[0]  # no asset label: the first ticker written in capitals
        matches.insert(0, ("asset", first, first, s.tokens[first].upper()))
    for name, first, last, value in matches:
        shown = str(value)
        if name == "target":  # (its number, its price)
            number, price = cast(tuple[int, Decimal], value)
            name, shown = f"target_{number}", str(price)
        elif name == "entry":  # (low, high)
            low, high = cast(tuple[Decimal, Decimal], value)
            shown = str(low) if low == high else f"{low} to {high}"
        out["matches"].append({"field": name, "words": words(first, last), "value": shown})
    for event in analysis.events:
        said = {"target": event.target, "stop": event.stop, "result": event.result}
        values = {k: str(v) for k, v in said.items() if v is not None}
        said_at = [p for p in (event.at, event.subject, event.until) if p is not None]
        out["matches"].append(
            {
                "field": f"event:{event.kind}" + (" (instruction)" if event.directive else ""),
                "words": words(min(said_at), max(said_at)),
                "value": values or None,
            }
        )
    return out
