"""The label scanner: a post → tokens with roles → the labelled fields, wherever they stand. Pure.

The old parser matched one label at the start of each line. The scanner reads the post as a
stream of tokens instead, so a field is found wherever its label is: several on one line, a
label without a colon, ``de … até`` ranges, a ticker before the entry label, labels in any
case, a type line inside an exported header block.

How a field is read:

1. ``normalise`` folds the Unicode and Markdown tricks; the text is cut into tokens (numbers
   with their separators, words, line breaks, single symbols) and each token gets its roles from
   the lexicon (``tickers`` decides the B3 shapes); several-word terms become one token.
2. A label word counts as a label when it stands where a label stands — at the start of a line,
   after a symbol or emoji, a number, a ticker, another label or ``e``/``and``/``com``/``with`` —
   or when a colon follows it. In a question (``Buy PETR4 at 36.50?``) nothing is a label.
3. Its value follows, after at most a few fillers (``:``, ``R$``, ``de``, ``entre``, ``acima de``,
   an emoji; for the entry also the ticker), on the next line when the label ends its own: one
   price for a stop or a numbered target, a price or a range for the entry, a list of prices
   for ``Alvos:``/``Targets:`` — ``39 / 41 / 44``, or numbered, ``1) 39`` and ``2) 41`` on
   lines of their own. Anything else — another word, a percentage — and the label has no value.
   A buy the channel reports (``compramos``, ``bought``, ``entrada feita``: ``BOUGHT``) is read
   like an entry label but kept aside (``Fields.bought``): it becomes the entry only when the
   post also labels a target or a stop; the imperative (``compre``) is a label like ``compra``.
4. Without an entry label the classifier may still find the entry: ``ticker_entries`` (a ticker
   opening its line with a price after it) and ``price_line_entry`` (``Preço: 37,50`` on its
   own line) only point at it.

Invariant: reading never raises and never guesses a price — a label whose value is not a
clean price simply has no value, and a post is a signal only when the classifier says so. The
only state is a bounded memo of token roles: the same text always gives the same scan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal

from tgstack.signals.lexicon import (
    ASSET_L,
    AUX,
    BOUGHT,
    BREAKEVEN,
    CHECK,
    COLON,
    CONN,
    ENTRY_L,
    EVENT_WORDS,
    FILL,
    FINAL,
    FIRST_PERSON,
    INDEXED,
    JOIN,
    LABELS,
    LEXICON,
    LINK,
    LIST,
    NL,
    NUM,
    ORDINAL,
    ORDINAL_SUFFIXES,
    ORDINALS,
    PHRASE,
    PHRASES,
    PLURAL,
    PUNCT,
    REMINDER,
    REPORTED,
    SENT,
    SIGNAL_TYPES,
    STOP_L,
    SUPPRESS,
    SYMBOL_L,
    TARGET_L,
    TICKER,
    TICKER_ANY,
    TYPE_L,
    TYPE_P,
    TYPE_W,
    UNIT,
    WAIT,
    WEAK_L,
    WORD,
)
from tgstack.signals.normalise import normalise
from tgstack.signals.prices import number_token_price
from tgstack.signals.tickers import GENERIC_FUTURES, is_ticker

TOKEN = re.compile(
    r"\d+(?:[.,]\d+)*(?:[^\W\d_]\w*)?"  # a number (1.250,50), with letters glued: 1º, 0x0, 10h
    r"|[^\W\d_]\w*"  # a word: letters, then letters or digits (PETR4, TP1)
    r"|\n"
    r"|\S"  # any other character on its own: punctuation, a symbol, an emoji
)
# Label and number in one word: TP1, alvo2, target3, entrada1, T1.
_INDEXED = re.compile(r"(alvo|tp|target|objetivo|entrada|entry)(\d{1,2})|(t)([1-9])")
_INDEXED_ROLE = {
    "alvo": TARGET_L,
    "tp": TARGET_L,
    "target": TARGET_L,
    "objetivo": TARGET_L,
    "entrada": ENTRY_L,
    "entry": ENTRY_L,
    "t": TARGET_L,
}
# A number with letters glued to it: an ordinal (1º is "1o" after NFKC, 2nd), a price in
# points (125.400pts), or neither (10h30, 3T25, "38,2O" typed with a letter O).
_GLUED = re.compile(r"(\d+(?:[.,]\d+)*)([^\W\d_]\w*)")
_POINTS = frozenset({"pts", "pt", "pontos"})
# A generic asset after an asset label (the old parser's rule): AAPL, BTCUSDT.
_GENERIC_ASSET = re.compile(r"[a-z][a-z0-9]{1,11}")

# What may stand between a label and its value: fillers, and any symbol or emoji that neither
# ends a sentence nor separates fields.
_SKIP_BEFORE_VALUE = FILL | COLON
_HARD_STOP = SENT | LIST | CHECK
# What may come just before a word for it to stand where a label stands.
_LABEL_PRECEDERS = (
    NL | PUNCT | NUM | UNIT | TICKER_ANY | LABELS | TYPE_L | TYPE_P | TYPE_W | LINK | JOIN
)
BOUNDARY = NL | SENT
_MAX_SKIPPED = 6
_TARGET_OR_STOP = frozenset({"target", "stop"})
_NOW = frozenset({"agora", "now", "já", "ja", "hoje", "today"})
# What may stand before an entry verb where a label stands: "Hoje compramos", "We bought",
# "Just bought", "Acabamos de comprar", "Went long".
_BEFORE_VERB = AUX | FIRST_PERSON | JOIN
_BREAKEVEN_ABBREVIATION = "BE"  # in capitals only: "be" is a verb
_PERCENT = "%"
# An entry range is narrow. A second end outside _RANGE times the first is not a range end
# ("Compra: 36,50 - 2 lotes"); one outside _TIGHT_RANGE may be abbreviated: "36,50/70" is
# 36,50 to 36,70.
_RANGE = (Decimal("0.5"), Decimal("2"))
_TIGHT_RANGE = (Decimal("0.8"), Decimal("1.25"))


class _FlagCache(dict[str, int]):
    """Roles of the tokens seen lately: channels repeat the same words, and a dict lookup
    mapped over a post's tokens costs far less than working the roles out again. A token not
    seen yet is worked out on the lookup (``__missing__``); the cache empties when it grows
    large, so a stream of new prices and ids cannot grow it without bound."""

    def __missing__(self, token: str) -> int:
        if len(self) > _FLAGS_MAX:
            self.clear()
        flags = self[token] = token_flags(token)
        return flags


_FLAGS_MAX = 50_000
_FLAGS = _FlagCache()


def clear_token_cache() -> None:
    _FLAGS.clear()


def token_flags(token: str) -> int:
    """The roles of one token."""
    low = token.lower()
    known = LEXICON.get(low)
    if known is not None:
        return known
    first = token[0]
    if first == "\n":
        return NL
    if first.isdecimal():
        if low[-1].isdecimal():
            return NUM  # digits and separators only: letters would be glued at the end
        glued = _GLUED.fullmatch(low)
        if glued is None:
            return WORD
        number, suffix = glued.groups()
        if suffix in ORDINAL_SUFFIXES and number.isdecimal() and len(number) <= 2:
            return WORD | ORDINAL
        return NUM if suffix in _POINTS else WORD
    if not first.isalnum():
        return PUNCT
    flags = WORD | BREAKEVEN if token == _BREAKEVEN_ABBREVIATION else WORD
    if low.isalpha():
        if _undated_future(low):
            flags |= TICKER_ANY | (TICKER if token.isupper() else 0)
        elif token in GENERIC_FUTURES:
            flags |= TICKER_ANY | TICKER
        return flags
    match = _INDEXED.fullmatch(low)
    if match:
        return WORD | INDEXED | _INDEXED_ROLE[match.group(1) or match.group(3)]
    # every other B3 shape is 5 to 9 characters and ends in a digit
    if 4 < len(low) < 10 and low[-1].isdecimal() and is_ticker(low):
        flags |= TICKER_ANY | (TICKER if token.isupper() else 0)
    return flags


def _undated_future(low: str) -> bool:
    """WINFUT, WDOFUT, INDFUT: the one B3 shape without a digit."""
    return len(low) == 6 and low.endswith("fut") and is_ticker(low)


@dataclass(slots=True)
class Scan:
    """A post cut into tokens with their roles, and where the interesting ones are."""

    text: str  # the normalised text
    tokens: list[str]
    flags: list[int]
    canon: dict[int, str]  # several-word terms: head position → the term
    labels: list[int]  # positions of label words
    tickers: list[int]  # positions of tickers written in capitals
    types: list[tuple[int, str]]  # signal types named, in order
    events: list[int]  # positions of event words
    union: int  # every role of the label, ticker, type and event words, or-ed
    has_question: bool

    def low(self, i: int) -> str:
        return self.tokens[i].lower()

    def sentence_of(self, i: int) -> tuple[int, int]:
        """The token range [start, end) of the sentence around ``i`` (a line break or
        . ! ? ; ends a sentence; ``end`` is the position of that boundary, or the length)."""
        flags, n = self.flags, len(self.flags)
        start = i
        while start > 0 and not flags[start - 1] & BOUNDARY:
            start -= 1
        end = i + 1
        while end < n and not flags[end] & BOUNDARY:
            end += 1
        return start, end

    def in_question(self, i: int) -> bool:
        """Is the token at ``i`` in a sentence that ends with a question mark?"""
        if not self.has_question:
            return False
        end = self.sentence_of(i)[1]
        return end < len(self.tokens) and self.tokens[end] == "?"


# The words that may follow each phrase's first word: most heads ("stop") are not a phrase.
_SECOND_WORDS = frozenset(tail[0] for terms in PHRASES.values() for tail, _, _ in terms)


def _phrase(tokens: list[str], i: int) -> tuple[int, int, str] | None:
    """The several-word term starting at ``i``: (length, roles, the term), or None."""
    if i + 1 >= len(tokens):
        return None
    second = tokens[i + 1].lower()
    if second not in _SECOND_WORDS:
        return None
    for tail, roles, term in PHRASES[tokens[i].lower()]:
        if tail[0] != second:
            continue
        size = len(tail)
        if size == 1 or [t.lower() for t in tokens[i + 2 : i + 1 + size]] == list(tail[1:]):
            return size + 1, roles, term
    return None


def _names_type(tokens: list[str], flags: list[int], i: int) -> bool:
    """A lone type word (``Swing``) counts first on its line, after ``Tipo:`` on its line, or
    on its own in brackets, as a hashtag or after a pipe (``(swing)``, ``#swing``,
    ``B3 | SWING``)."""
    if i > 0 and tokens[i - 1] in _TYPE_BRACKETS:
        return True
    k = i - 1
    first = True
    while k >= 0 and not flags[k] & NL:
        f = flags[k]
        if f & TYPE_L:
            return True
        if f & (WORD | NUM) and not f & (FILL | JOIN):
            first = False
        k -= 1
    return first


_TYPE_BRACKETS = frozenset("(#[|")
_TARGET_OR_ENTRY = TARGET_L | ENTRY_L
_TICKER_LABELS = ENTRY_L | ASSET_L  # a ticker may stand between these labels and their value
_INDEX_MARKS = frozenset("-#")
_MARKED = LABELS | TYPE_L | TICKER | TYPE_P | TYPE_W | EVENT_WORDS | PHRASE | REPORTED | REMINDER


def scan(text: str) -> Scan:
    """Cut a post into tokens, give each its roles and note labels, tickers, types, events."""
    norm = normalise(text)
    tokens = TOKEN.findall(norm)
    flags = list(map(_FLAGS.__getitem__, tokens))
    canon: dict[int, str] = {}
    labels: list[int] = []
    tickers: list[int] = []
    types: list[tuple[int, str]] = []
    events: list[int] = []
    union = 0
    for i in [i for i, f in enumerate(flags) if f & _MARKED]:
        f = flags[i]
        if f & JOIN:
            continue  # a later word of a phrase read already
        if f & PHRASE and (found := _phrase(tokens, i)):
            step, roles, term = found
            f = flags[i] = (f & (WORD | PUNCT | NUM)) | roles
            for k in range(i + 1, i + step):
                flags[k] = JOIN
            canon[i] = term
        if f & (LABELS | TYPE_L) and not f & SUPPRESS:
            labels.append(i)
        if f & TICKER:
            tickers.append(i)
        if f & TYPE_P or (f & TYPE_W and _names_type(tokens, flags, i)):
            types.append((i, SIGNAL_TYPES[canon.get(i, tokens[i].lower())]))
        if f & EVENT_WORDS:
            events.append(i)
        union |= f
    return Scan(norm, tokens, flags, canon, labels, tickers, types, events, union, "?" in norm)


# --- reading the fields --------------------------------------------------------------------


@dataclass(slots=True)
class Fields:
    """The labelled fields of a post as the scanner read them (any may be missing)."""

    asset: str | None = None
    # a ticker written with the entry label: after it ("Compra PETR4 36,50") or just before
    # it ("PETR4 compra 36,50")
    entry_ticker: str | None = None
    entry_formal: bool = False  # an entry price read after "Label:" (a template, not prose)
    awaiting: bool = False  # an entry label without a price says the price comes later
    direction: bool = False  # an entry label without a price ("Tipo: Compra", "COMPRA PETR4")
    # positions of the unnumbered entry labels read with a price: more than one, each with its
    # own ticker, and the post holds several calls ("PETR4 — entrada 36,50 …⏎VALE3 — entrada …")
    priced_entries: list[int] = field(default_factory=list)
    # a buy reported as done ("Compramos PETR4 a 37,50"): the entry only when the post also
    # labels a target or a stop; else a fill or a recap, kept to tell a close's result
    bought: tuple[Decimal, Decimal] | None = None
    signal_type: str | None = None
    entries: list[tuple[Decimal, Decimal]] = field(default_factory=list)
    targets: dict[int, Decimal] = field(default_factory=dict)
    final: Decimal | None = None
    stop: Decimal | None = None
    labelled: set[str] = field(default_factory=set)  # fields with a colon or a value
    # for --explain: (field, first token, last token, value read)
    matches: list[tuple[str, int, int, object]] = field(default_factory=list)


def at_label_position(s: Scan, i: int) -> bool:
    """Does the word at ``i`` stand where a label stands (line start, after a symbol, …)?"""
    j = i - 1
    flags = s.flags
    if j >= 0 and (flags[j] & ORDINAL or s.tokens[j] == "°"):
        j -= 1  # "1º alvo", "segundo alvo", "1° alvo"
        if j >= 0 and flags[j] & NUM and s.tokens[j + 1] == "°":
            j -= 1
    while j >= 0 and flags[j] & FINAL:
        j -= 1  # "Final target:", "Último alvo"
    if flags[i] & ENTRY_L:
        while j >= 0 and flags[j] & _BEFORE_VERB:
            j -= 1  # "Hoje compramos", "We just bought", "Acabamos de comprar"
    return j < 0 or bool(flags[j] & _LABEL_PRECEDERS)


def label_index(s: Scan, i: int) -> tuple[int | str | None, int]:
    """The number (or ``"final"``) of the label at ``i``, and where its value may start.

    ``Alvo 2``, ``TP2``, ``2º alvo``, ``segundo alvo``, ``alvo final``, ``final target``,
    ``todos os alvos``: a number, ``"final"``, or None when the label carries none.
    """
    flags, tokens, n = s.flags, s.tokens, len(s.tokens)
    f = flags[i]
    j = i + 1
    while j < n and flags[j] & JOIN:
        j += 1
    if f & FINAL:  # "todos os alvos", "all targets"
        return "final", j
    if f & INDEXED:
        return int("".join(c for c in tokens[i] if c.isdecimal())), j
    # before the label: "1º alvo", "segundo alvo", "1° alvo", "último alvo"
    k = i - 1
    if k >= 0:
        if flags[k] & ORDINAL:
            return ordinal_value(s, k), j
        if flags[k] & FINAL:
            return "final", j
        if k >= 1 and tokens[k] == "°" and tokens[k - 1].isdecimal() and len(tokens[k - 1]) <= 2:
            return int(tokens[k - 1]), j
    # after the label: "alvo final", "alvo 2", "alvo 2:"
    if j < n:
        if flags[j] & FINAL:
            return "final", j + 1
        if tokens[j] in _INDEX_MARKS and j + 2 < n and flags[j + 2] & (COLON | NUM):
            j += 1  # "TP-1: 39", "Alvo #2 41"
        if flags[j] & NUM and tokens[j].isdecimal() and len(tokens[j]) <= 2:
            # "Alvo 2: 41", "Alvo 2 41,50", "Alvo 2 atingido" — but "Alvo 39" is a price
            nxt = flags[j + 1] if j + 1 < n else NL
            if nxt & COLON or (len(tokens[j]) == 1 and tokens[j] != "0"):
                return int(tokens[j]), j + 1
    return None, j


def price_at(s: Scan, j: int) -> Decimal | None:
    """The price token at ``j``, unless it is a percentage or not a clean price."""
    tokens = s.tokens
    if j >= len(tokens) or not s.flags[j] & NUM:
        return None
    if j + 1 < len(tokens) and tokens[j + 1] == _PERCENT:
        return None
    token = tokens[j]
    if not token[-1].isdecimal():  # 125.400pts
        token = token.rstrip("ptsonPTSON")
    return number_token_price(token)


def ordinal_value(s: Scan, k: int) -> int | None:
    """The number an ordinal at ``k`` names: ``segundo`` → 2, ``2º`` (``2o``) → 2, ``2nd``."""
    token = s.low(k)
    if token in ORDINALS:
        return ORDINALS[token]
    digits = "".join(c for c in token if c.isdecimal())
    return int(digits) if digits else None


def _skip_to_value(s: Scan, j: int, *, ticker_ok: bool, formal: bool) -> tuple[int, int | None]:
    """Skip the fillers between a label and its value; (value position, ticker position)."""
    flags, n = s.flags, len(s.tokens)
    ticker: int | None = None
    skipped = 0
    crossed_line = False
    while j < n and skipped < _MAX_SKIPPED:
        f = flags[j]
        if f & NUM:
            break
        # any symbol that neither ends a sentence nor closes a bracket; "|" only here, where
        # nothing was read yet ("🟢 COMPRA | VALE3 | 61,20")
        char = s.tokens[j]
        symbol = f & PUNCT and (not f & _HARD_STOP or char == "|") and char not in ")]"
        if f & (_SKIP_BEFORE_VALUE | JOIN) or symbol:
            pass
        elif ticker_ok and char.lower() in _NOW:
            pass  # "Buy ITUB4 now @ 32.40", "Compra agora 37,50"
        elif ticker_ok and f & TICKER_ANY and ticker is None:
            ticker = j
        elif f & NL and (formal or skipped == 0) and not crossed_line:
            # "Compra:" with the price on the next line, or a label ending its line
            # ("#PETR4 — COMPRA\n💵 37,50")
            crossed_line = True
        else:
            break
        j += 1
        skipped += 1
    return j, ticker


def _second_end(s: Scan, j: int) -> int | None:
    """After a price at ``j``: the position of a range's other end (``a``, ``até``, ``-``, …)."""
    flags, n = s.flags, len(s.tokens)
    k = j + 1
    if k < n and flags[k] & CONN:
        k += 1
        while k < n and flags[k] & FILL and not flags[k] & NUM and k <= j + 3:
            k += 1  # "até R$ 37,20"
        if k < n and flags[k] & NUM:
            return k
    return None


def _range_end(low_text: str, low: Decimal, high_text: str, high: Decimal) -> Decimal | None:
    """The other end of a range, or None when it cannot be one.

    ``36,50/70`` abbreviates 36,70: read whole, 70 is far from 36,50, and it has as many digits
    as 36,50's decimals.
    """
    lo, hi = _TIGHT_RANGE
    if lo * low <= high <= hi * low:
        return high
    sep = max(low_text.rfind(","), low_text.rfind("."))
    if high_text.isdecimal() and sep >= 0 and len(low_text) - sep - 1 == len(high_text):
        abbreviated = number_token_price(low_text[: sep + 1] + high_text)
        if abbreviated is not None and lo * low <= abbreviated <= hi * low:
            return abbreviated
    lo, hi = _RANGE
    return high if lo * low <= high <= hi * low else None


@dataclass(slots=True)
class _Reading:
    """What reading one label leaves for the next ones in the same post."""

    indexed_entries: bool = False  # a numbered entry ("Entrada 1: …") or an entry list was read
    next_target: int = 1  # the next free number for an unnumbered target
    bought: list[tuple[int, int]] = field(default_factory=list)  # (label, price's last token)


def read_fields(s: Scan) -> Fields:
    """Read every labelled field of a scanned post."""
    out = Fields()
    reading = _Reading()
    for i in s.labels:
        _read_label(s, out, reading, i)
    if reading.bought:
        _adopt_bought(out, reading.bought)
    if s.types:
        at, out.signal_type = s.types[0]
        out.matches.append(("signal_type", at, at, out.signal_type))
    return out


def _read_label(s: Scan, out: Fields, reading: _Reading, i: int) -> None:
    """Read the label at ``i`` and its value into ``out``."""
    flags, tokens, n = s.flags, s.tokens, len(s.tokens)
    f = flags[i]
    if f & TYPE_L or (s.has_question and s.in_question(i)):
        return  # the type after "Tipo:" is noted by scan()
    if f & _TARGET_OR_ENTRY:
        index, j = label_index(s, i)
    else:
        index, j = None, i + 1
        while j < n and flags[j] & JOIN:
            j += 1
    formal = j < n and bool(flags[j] & COLON)
    if not formal and (f & WEAK_L or not at_label_position(s, i)):
        return
    ticker = None
    if formal and j + 1 < n and flags[j + 1] & NUM:
        j += 1  # the common "Label: 12,34", without the general skip
    elif j >= n or not flags[j] & NUM:
        j, ticker = _skip_to_value(s, j, ticker_ok=bool(f & _TICKER_LABELS), formal=formal)
    if f & ASSET_L:
        _read_asset(s, out, i, j, ticker, formal=formal)
        return
    if index is None and j < n and tokens[j] == "1" and (items := _list_items(s, j)):
        _read_items(out, i, f, items, formal=formal)
        if f & ENTRY_L:
            reading.indexed_entries = True
        return
    price = price_at(s, j) if j < n and flags[j] & NUM else None
    if f & ENTRY_L:
        _read_entry(s, out, reading, i, j, index, ticker, price, formal=formal)
    elif f & TARGET_L:
        _read_target(s, out, reading, i, j, index, price, formal=formal)
    elif f & STOP_L:
        if formal or price is not None:
            out.labelled.add("stop")
        if price is not None and out.stop is None:
            out.stop = price
            out.matches.append(("stop", i, j, price))


def _read_entry(
    s: Scan,
    out: Fields,
    reading: _Reading,
    i: int,
    j: int,
    index: int | str | None,
    ticker: int | None,
    price: Decimal | None,
    *,
    formal: bool,
) -> None:
    """An entry label: its ticker, its price or range, or a buy reported as done."""
    f = s.flags[i]
    if (formal or price is not None) and not f & BOUGHT:
        out.labelled.add("entry")
    if ticker is None:
        ticker = _ticker_before(s, i)
    if ticker is not None and out.entry_ticker is None:
        out.entry_ticker = s.tokens[ticker].upper()
        out.matches.append(("asset", ticker, ticker, out.entry_ticker))
    if price is None:
        out.direction = True
        out.awaiting = out.awaiting or _says_later(s, i)
    numbered = isinstance(index, int)
    if price is not None and f & BOUGHT:
        low, high, end = _price_or_range(s, j, price)
        reading.bought.append((i, end))
        if out.bought is None:
            out.bought = (low, high)
        return
    if price is not None and not numbered:
        out.priced_entries.append(i)
    if price is None or (out.entries and not (numbered and reading.indexed_entries)):
        return  # the first entry, or every numbered one ("Entrada 2: 35,80")
    low, high, end = _price_or_range(s, j, price)
    reading.indexed_entries = reading.indexed_entries or numbered
    out.entry_formal = out.entry_formal or formal
    out.entries.append((low, high))
    out.matches.append(("entry", i, end, (low, high)))


def _read_target(
    s: Scan,
    out: Fields,
    reading: _Reading,
    i: int,
    j: int,
    index: int | str | None,
    price: Decimal | None,
    *,
    formal: bool,
) -> None:
    """A target label: numbered, final, or unnumbered (the next free numbers)."""
    if price is None and isinstance(index, int) and _bare_index(s, i, j):
        price, j, index = Decimal(index), j - 1, None  # "alvo 3 stop 1,50": a price
    if formal or price is not None:
        out.labelled.add("target")
    if price is None:
        return
    if index == "final":
        if out.final is None:
            out.final = price
            out.matches.append(("target_final", i, j, price))
    elif isinstance(index, int):
        if index not in out.targets:
            out.targets[index] = price
            out.matches.append(("target", i, j, (index, price)))
    else:  # unnumbered: the next free numbers ("Alvos: 39 / 41 / 44")
        for value, at in [(price, j), *_more_prices(s, j)]:
            if value in out.targets.values():
                continue  # the same target again ("Resumo: … alvo 40")
            while reading.next_target in out.targets:
                reading.next_target += 1
            out.targets[reading.next_target] = value
            out.matches.append(("target", i, at, (reading.next_target, value)))


def _adopt_bought(out: Fields, bought: list[tuple[int, int]]) -> None:
    """The channel's buy with its plan ("Compramos PETR4 a 37,50, alvo 40, stop 36") is the
    entry when the post names no other entry and labels a target or a stop."""
    if out.bought is None or out.entries or not out.labelled & _TARGET_OR_STOP:
        return
    out.labelled.add("entry")
    out.entries.append(out.bought)
    out.priced_entries.extend(i for i, _ in bought)
    out.matches.append(("entry", bought[0][0], bought[0][1], out.bought))
    out.matches.sort(key=lambda match: match[1])


def _price_or_range(s: Scan, j: int, price: Decimal) -> tuple[Decimal, Decimal, int]:
    """The price at ``j`` or the range it opens: (low, high, last token)."""
    low = high = price
    end = j
    if (k := _second_end(s, j)) is not None and (second := price_at(s, k)):
        other = _range_end(s.tokens[j], price, s.tokens[k], second)
        if other is not None:
            end = k
            low, high = (price, other) if price <= other else (other, price)
    return low, high, end


def _bare_index(s: Scan, i: int, j: int) -> bool:
    """``alvo 3 stop 1,50``: the one digit after the target label at ``i`` (ending at ``j``)
    is its price, not its number — no colon, no price after it, and the next field's label (or
    a separator and that label) comes next."""
    flags, n = s.flags, len(s.flags)
    if flags[i] & (INDEXED | PLURAL) or j - 1 <= i or not flags[j - 1] & NUM:
        return False
    if j < n and flags[j] & PUNCT and not flags[j] & (NL | COLON | CHECK):
        j += 1
    return j < n and bool(flags[j] & LABELS) and not flags[j] & (WEAK_L | SYMBOL_L)


# After an item's number: "1) 39.00", "1. 39.00". Without a mark only first on its line
# ("1️⃣ 39,00": the keycap folds away).
_ITEM_MARKS = frozenset(").")


def _item(s: Scan, j: int, number: int) -> tuple[Decimal, int] | None:
    """The price of list item ``number`` starting at ``j`` and its position, or None."""
    tokens, flags, n = s.tokens, s.flags, len(s.tokens)
    if j >= n or tokens[j] != str(number):
        return None
    k = j + 1
    if k < n and tokens[k] in _ITEM_MARKS:
        k += 1
    elif j > 0 and not flags[j - 1] & NL:
        return None
    price = price_at(s, k)
    return None if price is None else (price, k)


def _list_items(s: Scan, j: int) -> list[tuple[int, Decimal, int]]:
    """A numbered list starting at ``j`` with item 1, one item a line or several on one:
    ``Take-Profit Targets:\n1) 39.00\n2) 40.00``, ``Alvos: 1) 39 2) 40``. (number, price,
    price position) for each item, in order; empty when ``j`` starts no such list."""
    flags, n = s.flags, len(s.tokens)
    items: list[tuple[int, Decimal, int]] = []
    number = 1
    while (found := _item(s, j, number)) is not None:
        price, k = found
        items.append((number, price, k))
        number += 1
        j = k + 1
        while j < n and flags[j] & PUNCT and not flags[j] & NL:
            j += 1  # "1) 39 | 2) 40", "1) 39 (+2.6%)" stops at the "+2.6"
        if j < n and _item(s, j, number) is None:
            line_end = j
            while line_end < n and line_end < k + 8 and not flags[line_end] & NL:
                line_end += 1
            j = line_end + 1
    return items


def _read_items(
    out: Fields, i: int, f: int, items: list[tuple[int, Decimal, int]], *, formal: bool
) -> None:
    """The fields of a numbered list after the label at ``i``: every item a target, an entry
    (the range they span) or — the first — the stop."""
    if f & TARGET_L:
        out.labelled.add("target")
        for number, price, at in items:
            if number not in out.targets:
                out.targets[number] = price
                out.matches.append(("target", i, at, (number, price)))
    elif f & ENTRY_L:
        out.labelled.add("entry")
        if out.entries:
            return
        out.entry_formal = out.entry_formal or formal
        for _, price, at in items:
            out.entries.append((price, price))
            out.matches.append(("entry", i, at, (price, price)))
    elif f & STOP_L:
        out.labelled.add("stop")
        if out.stop is None:
            _, out.stop, at = items[0]
            out.matches.append(("stop", i, at, out.stop))


def _ticker_before(s: Scan, i: int) -> int | None:
    """The ticker just before the entry label at ``i`` that opens its line (``PETR4 compra``,
    ``#VALE3 — Buy``; not ``Gráfico de PETR4: entrada do canal …``)."""
    flags = s.flags
    k = i - 1
    if k >= 0 and flags[k] & PUNCT and not flags[k] & _HARD_STOP:
        k -= 1  # "PETR4: compra", "PETR4 — compra"
    if k < 0 or not flags[k] & TICKER_ANY:
        return None
    b = k - 1
    while b >= 0 and flags[b] & PUNCT and not flags[b] & (NL | _HARD_STOP):
        b -= 1
    return k if b < 0 or flags[b] & NL else None


def _says_later(s: Scan, i: int) -> bool:
    """The sentence of the entry label at ``i`` says its price comes later or is the
    market's: ``aguardando preço``, ``a definir``, ``a mercado``, ``TBA``."""
    start, end = s.sentence_of(i)
    return any(s.flags[k] & WAIT for k in range(start, end))


def ticker_entries(s: Scan, *, sentence: bool = False) -> list[tuple[int, Decimal, Decimal, int]]:
    """Every ticker that opens its line (after symbols: ``#PETR4``, ``$VALE3``, a bullet) — or,
    with ``sentence``, its sentence (``Comprem! PETR4 a 37,50``) — followed directly by a price
    or a range, with no entry label: ``PETR4 37,50/38,00 alvo 40``. (ticker position, low, high,
    last token of the price) each; the caller decides whether the post's other labels make one
    an entry."""
    flags, n = s.flags, len(s.tokens)
    found: list[tuple[int, Decimal, Decimal, int]] = []
    opens = NL | SENT if sentence else NL
    for t in s.tickers:
        k = t - 1
        while k >= 0 and flags[k] & PUNCT and not flags[k] & (NL | _HARD_STOP):
            k -= 1
        if k >= 0 and not flags[k] & opens:
            continue
        j = t + 1  # "PETR4 37,50", "PETR4: 37,50", "PETR4 @ 37.50", "PETR4 | R$ 37,50"
        while j < n and j <= t + 3 and not flags[j] & (NUM | NL | SENT | CHECK):
            if not flags[j] & (FILL | COLON | PUNCT):
                break
            j += 1
        price = price_at(s, j)
        if price is None:
            continue
        low, high, end = _price_or_range(s, j, price)
        if _quoted_change(s, end + 1):
            continue  # "VALE3 62,10 (+1,5%)": a quote and the day's change, not an entry
        found.append((t, low, high, end))
    return found


_PRICE_WORDS = frozenset({"preço", "preco", "price"})


def price_line_entry(s: Scan) -> tuple[int, Decimal, Decimal, int] | None:
    """``Preço: 37,50`` opening its line (after symbols): (position, low, high, last token of
    the price) — the entry when another line names the direction alone (``Tipo: Compra``)."""
    flags, tokens, n = s.flags, s.tokens, len(s.tokens)
    for i in range(n - 2):
        if tokens[i].lower() not in _PRICE_WORDS or not flags[i + 1] & COLON:
            continue
        k = i - 1
        while k >= 0 and flags[k] & PUNCT and not flags[k] & (NL | _HARD_STOP):
            k -= 1
        if k >= 0 and not flags[k] & NL:
            continue
        j, _ = _skip_to_value(s, i + 1, ticker_ok=False, formal=False)
        price = price_at(s, j)
        if price is None:
            continue
        low, high, end = _price_or_range(s, j, price)
        return i, low, high, end
    return None


def _quoted_change(s: Scan, k: int) -> bool:
    """A signed percentage at ``k`` (``+1,5%``, ``(-0,8%)``): a price's change on the day."""
    tokens, n = s.tokens, len(s.tokens)
    if k < n and tokens[k] == "(":
        k += 1
    return k + 2 < n and tokens[k] in "+-" and bool(s.flags[k + 1] & NUM) and tokens[k + 2] == "%"


def _more_prices(s: Scan, j: int) -> list[tuple[Decimal, int]]:
    """The prices after the one at ``j`` in a list: ``39 / 41 / 44``, ``39, 41 e 44``."""
    flags, n = s.flags, len(s.tokens)
    found: list[tuple[Decimal, int]] = []
    while j + 2 < n and flags[j + 1] & (LIST | CONN) and not flags[j + 1] & NL:
        k = j + 2
        while k < n and flags[k] & FILL and not flags[k] & NUM and k <= j + 3:
            k += 1
        price = price_at(s, k)
        if price is None:
            break
        found.append((price, k))
        j = k
    return found


def _read_asset(s: Scan, out: Fields, i: int, j: int, ticker: int | None, *, formal: bool) -> None:
    """The asset after an asset label: a ticker, else — after ``Label:`` only — the old
    parser's generic word (``Ativo: AAPL``; not ``…, papel abriu em gap``)."""
    if out.asset is not None:
        return
    flags, tokens, n = s.flags, s.tokens, len(s.tokens)
    at = ticker
    if at is None and j < n and flags[j] & WORD and not flags[j] & (LABELS | EVENT_WORDS):
        # "Ativo: Petrobras (PETR4)": the ticker in brackets beats the company's name
        at = next((k for k in range(j + 1, min(j + 4, n)) if flags[k] & TICKER_ANY), None)
        if at is None and formal and _GENERIC_ASSET.fullmatch(s.low(j)) and tokens[j].isascii():
            at = j
    if at is not None:
        out.asset = tokens[at].upper()
        out.labelled.add("asset")
        out.matches.append(("asset", i, at, out.asset))
