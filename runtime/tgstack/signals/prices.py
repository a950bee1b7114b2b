"""Prices as channels write them → exact ``Decimal``. Pure.

Invariant: a price is read exactly or not at all — never rounded, never guessed, never
negative or zero. ``PriceError`` is the one failure, and the scanner treats a label whose
value raises it as a label without a value.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_PRICE = re.compile(r"\d[\d.,]*")
# Long enough for any price on any market (and for index points); longer digit runs are ids,
# phone numbers or noise, and would not survive the trip through a JSON float either.
MAX_PRICE_CHARS = 20


class PriceError(ValueError):
    """A price could not be read as a number."""


def parse_price(text: str) -> Decimal:
    """Read ``1.250,50`` / ``1,250.50`` / ``36,5`` / ``36.50`` / ``125.000`` exactly.

    With both separators, the last one is the decimal mark. A lone comma is a decimal comma.
    A lone dot followed by exactly three digits is a thousands dot (``125.000`` is 125000),
    unless the integer part is 0 (``0.125``); any other lone dot is a decimal point. Several
    of the same separator are thousands separators (``1.234.567``).
    """
    raw = text.strip().rstrip(".,")
    if not raw or len(raw) > MAX_PRICE_CHARS or not _PRICE.fullmatch(raw):
        raise PriceError(f"not a price: {text!r}")
    value = number_token_price(raw)
    if value is None:
        raise PriceError(f"not a positive price: {text!r}")
    return value


def number_token_price(raw: str) -> Decimal | None:
    """``parse_price`` for a number token as the scanner cuts it (digits with single ``.``/``,``
    between them, never at either end): the price, or None for zero or an absurd length."""
    if len(raw) > MAX_PRICE_CHARS:
        return None
    comma = raw.count(",")
    if "." not in raw:
        if comma == 0:
            normalized = raw
        elif comma == 1:
            normalized = raw.replace(",", ".")  # 36,50: the common case first
        else:  # 1,234,567 or 1,234,56: the last comma is the decimal mark
            integer, _, fraction = raw.rpartition(",")
            normalized = integer.replace(",", "") + "." + fraction
    elif comma:
        if raw.rfind(",") > raw.rfind("."):
            normalized = raw.replace(".", "").replace(",", ".")
        else:
            normalized = raw.replace(",", "")
    elif raw.count(".") > 1:
        normalized = raw.replace(".", "")
    else:
        integer, _, fraction = raw.partition(".")
        normalized = integer + fraction if len(fraction) == 3 and integer != "0" else raw
    try:
        value = Decimal(normalized)
    except InvalidOperation:
        return None
    return value if value > 0 else None
