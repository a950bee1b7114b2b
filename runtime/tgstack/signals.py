"""The trading-signal parser: channel post text → ``Signal`` or ``None``. Pure, no I/O.

Understands Portuguese and English posts such as::

    🟢Swing Trade
    Ativo: PETR4
    Compra: 36,50 a 37,20
    Alvo 1: 39,00
    Alvo final: 44,00
    Stop: 34,80

Keywords are case-insensitive and may follow emoji or bullets. Prices use a decimal comma
and thousands dot (``1.250,50``) or the English forms (``1,250.50``, ``36.50``). A post is a
signal only when it names an asset and an entry price.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

SIGNAL_TYPES = {
    "swing trade": "swing_trade",
    "swing": "swing_trade",
    "day trade": "day_trade",
    "daytrade": "day_trade",
    "scalping": "scalping",
    "scalp": "scalping",
    "position": "position",
}

_NUMBER = r"\d[\d.,]*"
_LABEL_SEPARATOR = r"\s*[:=\-–]?\s*"
_LEADING_NOISE = re.compile(r"^[^\w]+", re.UNICODE)

_ASSET = re.compile(
    r"^(?:ativo|papel|ticker|asset|a[cç][aã]o)"
    + _LABEL_SEPARATOR
    + r"[#$]?([A-Za-z][A-Za-z0-9]{1,11}(?:\.[A-Za-z]{1,3})?)\b",
    re.IGNORECASE,
)
_ENTRY = re.compile(
    r"^(?:compra|entrada|buy|entry|pre[cç]o de entrada)"
    + _LABEL_SEPARATOR
    + r"(?:entre\s+)?(?:R\$\s*)?("
    + _NUMBER
    + r")"
    + r"(?:\s*(?:a|at[eé]|-|–|e|to)\s*(?:R\$\s*)?("
    + _NUMBER
    + r"))?",
    re.IGNORECASE,
)
_TARGET = re.compile(
    r"^(?:alvo|tp|target|take profit)\s*(\d+|final|geral|max|m[aá]ximo)?"
    + _LABEL_SEPARATOR
    + r"(?:R\$\s*)?("
    + _NUMBER
    + r")",
    re.IGNORECASE,
)
_STOP = re.compile(
    r"^(?:stop loss|stop-loss|stoploss|stop|sl)"
    + _LABEL_SEPARATOR
    + r"(?:R\$\s*)?("
    + _NUMBER
    + r")",
    re.IGNORECASE,
)

_FINAL_WORDS = {"final", "geral", "max", "maximo", "máximo"}


class PriceError(ValueError):
    """A price could not be read as a number."""


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
        """Prices as JSON numbers (a price has far fewer digits than a float keeps exactly)."""
        return {
            key: float(value) if isinstance(value, Decimal) else value
            for key, value in asdict(self).items()
        }


def parse_price(text: str) -> Decimal:
    """Read ``1.250,50`` / ``1,250.50`` / ``36,5`` / ``36.50`` / ``125.000`` exactly.

    With both separators, the last one is the decimal mark. A lone comma is a decimal comma.
    A lone dot followed by exactly three digits is a thousands dot (``125.000`` is 125000),
    unless the integer part is 0 (``0.125``); any other lone dot is a decimal point.
    """
    raw = text.strip().rstrip(".,")
    if not raw or not re.fullmatch(r"\d[\d.,]*", raw):
        raise PriceError(f"not a price: {text!r}")
    if "," in raw and "." in raw:
        decimal_mark = "," if raw.rfind(",") > raw.rfind(".") else "."
        thousands = "." if decimal_mark == "," else ","
        normalized = raw.replace(thousands, "").replace(decimal_mark, ".")
    elif "," in raw:
        parts = raw.split(",")
        normalized = "".join(parts[:-1]) + "." + parts[-1] if len(parts) > 1 else raw
    elif raw.count(".") > 1:
        normalized = raw.replace(".", "")
    elif "." in raw:
        integer, fraction = raw.split(".")
        normalized = integer + fraction if len(fraction) == 3 and integer != "0" else raw
    else:
        normalized = raw
    try:
        value = Decimal(normalized)
    except InvalidOperation:
        raise PriceError(f"not a price: {text!r}") from None
    if not value.is_finite() or value <= 0:
        raise PriceError(f"price must be positive: {text!r}")
    return value


def _clean_line(line: str) -> str:
    line = unicodedata.normalize("NFKC", line).replace("*", "").replace("_", " ").strip()
    return _LEADING_NOISE.sub("", line).strip()


def _signal_type(line: str) -> str | None:
    words = re.sub(r"[^\w\s]", " ", line.lower())
    words = " ".join(words.split())
    for phrase, kind in SIGNAL_TYPES.items():
        if words == phrase or words.startswith(phrase + " "):
            return kind
    return None


def parse_signal(text: str | None) -> Signal | None:
    """Parse a post; ``None`` when it is not a signal (no asset or no entry price)."""
    if not text:
        return None
    asset: str | None = None
    signal_type: str | None = None
    entry: tuple[Decimal, Decimal] | None = None
    targets: dict[int, Decimal] = {}
    final: Decimal | None = None
    stop: Decimal | None = None
    for raw_line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = _clean_line(raw_line)
        if not line:
            continue
        try:
            if signal_type is None and (kind := _signal_type(line)):
                signal_type = kind
            elif asset is None and (match := _ASSET.match(line)):
                asset = match.group(1).upper()
            elif entry is None and (match := _ENTRY.match(line)):
                low = parse_price(match.group(1))
                high = parse_price(match.group(2)) if match.group(2) else low
                entry = (min(low, high), max(low, high))
            elif match := _TARGET.match(line):
                label, price = (match.group(1) or "1").lower(), parse_price(match.group(2))
                if label in _FINAL_WORDS:
                    final = price
                else:
                    targets.setdefault(int(label), price)
            elif stop is None and (match := _STOP.match(line)):
                stop = parse_price(match.group(1))
        except PriceError:
            continue  # a malformed price on one line does not void the rest of the post
    if asset is None or entry is None:
        return None
    if final is None and targets and max(targets) > 2:
        final = targets[max(targets)]
    return Signal(
        asset=asset,
        signal_type=signal_type,
        buy_min=entry[0],
        buy_max=entry[1],
        target_1=targets.get(1),
        target_2=targets.get(2),
        target_final=final,
        stop=stop,
    )
