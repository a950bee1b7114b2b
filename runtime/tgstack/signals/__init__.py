"""Trading signals from channel posts: the parser and the follow-up classifier. Pure, no I/O.

Reads Portuguese and English posts in the formats channels use, for example::

    🟢Swing Trade
    Ativo: PETR4
    Compra: 36,50 a 37,20
    Alvo 1: 39,00
    Alvo final: 44,00
    Stop: 34,80

or ``PETR4 compra 36,50/37,20 alvo 39 stop 34,80``, or ``PETR4 36,50/37,20 alvo 39 stop 34,80``,
or an exported post with a header block, a Cornix post with numbered lists, in mathematical bold
letters, with U+2024 as the decimal point. And the follow-ups: ``Alvo 1
atingido ✅``, ``Stop movido para a entrada``, ``Stopado``, ``Encerrado com gain``, ``Sinal
cancelado``, ``TP1 hit``, ``Move SL to breakeven``.

The package, one job per module (imports only go down this list):

* ``normalise`` — Unicode and Markdown presentation folded to plain text;
* ``prices`` — ``parse_price``: ``1.250,50``, ``1,250.50``, ``36.50`` → exact ``Decimal``;
* ``tickers`` — the B3 ticker shapes;
* ``lexicon`` — the words known and their roles;
* ``model`` — ``Signal`` and ``Classification``, the records handed out;
* ``scanner`` — tokens with roles, and the labelled fields wherever they stand;
* ``events`` — follow-up events: an event word paired with its subject;
* ``classify`` — the decision: ``classify(text) -> Classification``, ``parse_signal(text)``.
"""

from tgstack.signals.classify import analyse, classify, parse_signal
from tgstack.signals.explain import explain
from tgstack.signals.lexicon import SIGNAL_TYPES
from tgstack.signals.model import KINDS, Classification, Kind, Signal
from tgstack.signals.prices import PriceError, parse_price

__all__ = [
    "KINDS",
    "SIGNAL_TYPES",
    "Classification",
    "Kind",
    "PriceError",
    "Signal",
    "analyse",
    "classify",
    "explain",
    "parse_price",
    "parse_signal",
]
