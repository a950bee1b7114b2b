"""The records the signal reader hands to the rest of tgstack: ``Signal`` and ``Classification``.

Invariant: plain frozen values with exact ``Decimal`` prices; ``to_json_dict``/``to_dict`` give
the JSON shapes of ``tgstack signals parse`` and ``tgstack signals classify`` (prices as JSON
numbers: a price has far fewer digits than a float keeps exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, get_args

Kind = Literal[
    "signal",
    "target_hit",
    "stop_moved",
    "stopped",
    "closed",
    "cancelled",
    "needs_review",
    "chatter",
]
KINDS: tuple[Kind, ...] = get_args(Kind)
EventKind = Literal["target_hit", "stop_moved", "stopped", "closed", "cancelled"]
EVENT_KINDS: frozenset[EventKind] = frozenset(get_args(EventKind))
# A target reached: its number, or "final" (the last one, or all of them).
Target = int | Literal["final"]
# Where a stop was moved: a price, "entry" (breakeven) or a target's price ("target_1", …).
StopLevel = Decimal | str
Result = Literal["gain", "loss", "breakeven"]

SIGNAL_FIELDS = (
    "asset",
    "signal_type",
    "buy_min",
    "buy_max",
    "target_1",
    "target_2",
    "target_final",
    "stop",
)


def _json_value(value: object) -> object:
    return float(value) if isinstance(value, Decimal) else value


@dataclass(frozen=True, slots=True)
class Signal:
    asset: str
    signal_type: str | None
    buy_min: Decimal
    buy_max: Decimal
    target_1: Decimal | None = None
    target_2: Decimal | None = None
    target_final: Decimal | None = None
    stop: Decimal | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The ``tgstack signals parse`` object: the eight fields, prices as JSON numbers."""
        return {name: _json_value(getattr(self, name)) for name in SIGNAL_FIELDS}


@dataclass(frozen=True, slots=True)
class Classification:
    """What one post is. ``kind`` decides which of the other fields apply:

    ==============  ===========================================================
    ``signal``      ``signal`` (and ``asset`` = ``signal.asset``)
    ``target_hit``  ``asset``, ``target`` (1, 2, … or ``"final"``), ``stop`` when the
                    same post also moved the stop
    ``stop_moved``  ``asset``, ``stop`` (a price, ``"entry"``, ``"target_N"``, or None
                    when the post does not say where)
    ``stopped``     ``asset``
    ``closed``      ``asset``, ``result`` (``gain``/``loss``/``breakeven`` when stated)
    ``cancelled``   ``asset``
    ``needs_review`` ``asset`` (may be None), ``missing`` (what a signal lacks)
    ``chatter``     nothing
    ==============  ===========================================================

    ``asset`` of a follow-up is the ticker the post names, or None: the poller then links it
    by ``reply_to_msg_id``.
    """

    kind: Kind
    asset: str | None = None
    signal: Signal | None = None
    target: Target | None = None
    stop: StopLevel | None = None
    result: Result | None = None
    missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The ``tgstack signals classify`` object: ``kind`` and the fields that apply."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "chatter":
            return out
        if self.kind == "signal" and self.signal is not None:
            out.update(self.signal.to_json_dict())
            return out
        out["asset"] = self.asset
        if self.kind == "target_hit":
            out["target"] = self.target
            out["stop"] = _json_value(self.stop)
        elif self.kind == "stop_moved":
            out["stop"] = _json_value(self.stop)
        elif self.kind == "closed":
            out["result"] = self.result
        elif self.kind == "needs_review":
            out["missing"] = list(self.missing)
        return out
