"""B3 ticker shapes. Pure.

=========================  ==========================================  ======================
shape                      rule                                        examples
=========================  ==========================================  ======================
stock                      root + 1–2 digits                           PETR4, VALE3, B3SA3
unit / ETF / FII           root + 11                                   TAEE11, BOVA11, HGLG11
BDR                        root + 32–35 (39: BDR of an ETF)            AAPL34, M1TA34
option                     root + series letter A–X + 1–3 digits,      PETRJ290, BBASK45,
                           optional weekly suffix W1–W5                VALEX65W2
mini / full future         3 letters + FUT, or + month code + 2        WINFUT, WDOFUT, WINZ25,
                           digits (DI1: 2 letters + 1)                 DOLF26, DI1F27
=========================  ==========================================  ======================

A root is four characters, a letter first and at least three letters in all (``B3SA``,
``M1TA``). Day-trade channels also name the current mini or full index and dollar contract
without its month — ``WIN``, ``WDO``, ``IND``, ``DOL`` — read as tickers in capitals only
(``GENERIC_FUTURES``; ``win`` is a word).

An option and its underlying share the root: ``MGLUL420`` and ``VALEX65W2`` are options on
``MGLU3`` and ``VALE3`` (``option_on``), ``BOVAX130`` on ``BOVA11``.

Invariant: ``ticker_shape`` says only whether a word *looks like* a B3 ticker; it never
consults a list of listed companies, so a ticker listed tomorrow is read today.
"""

from __future__ import annotations

import re

_ROOT = r"[a-z](?:[a-z]{3}|\d[a-z]{2}|[a-z]\d[a-z]|[a-z]{2}\d)"
_MONTH = r"[fghjkmnquvxz]"
_SHAPES = (
    ("unit", rf"{_ROOT}11"),
    ("bdr", rf"{_ROOT}3[2-59]"),
    ("future", rf"[a-z]{{3}}(?:fut|{_MONTH}\d\d)|[a-z]{{2}}1{_MONTH}\d\d"),
    ("stock", rf"{_ROOT}\d{{1,2}}"),
    ("option", rf"{_ROOT}[a-x]\d{{1,3}}(?:w[1-5])?"),
)
# The current contract, as day-trade channels write it: "WIN compra 125.300".
GENERIC_FUTURES = frozenset({"WIN", "WDO", "IND", "DOL"})
_TICKER = re.compile("|".join(f"(?P<{name}>{rule})" for name, rule in _SHAPES))


def ticker_shape(word: str) -> str | None:
    """``"stock"``, ``"unit"``, ``"bdr"``, ``"option"``, ``"future"``, or None (any case)."""
    match = _TICKER.fullmatch(word.lower())
    return match.lastgroup if match else None


def is_ticker(word: str) -> bool:
    return _TICKER.fullmatch(word.lower()) is not None


def option_on(word: str, underlying: str) -> bool:
    """Is ``word`` an option on ``underlying`` — another ticker with the same four-character
    root (``MGLUL420`` on ``MGLU3``, ``BOVAX130`` on ``BOVA11``; not ``PETRJ290`` on itself)?"""
    return (
        len(word) > 5
        and word[:4].lower() == underlying[:4].lower()
        and ticker_shape(word) == "option"
        and ticker_shape(underlying) not in (None, "option", "future")
    )
