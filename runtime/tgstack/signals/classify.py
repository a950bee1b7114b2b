"""What a post is: a signal, a follow-up to one, a signal that needs review, or chatter. Pure.

``classify(text)`` is the entry point the poller calls for every post; ``parse_signal(text)``
is its signal, or None. The decision, in order:

1. The scanner reads the labelled fields and ``events`` the follow-up events.
2. A post with asset and entry price is a **signal** — unless it also *reports* an event
   (``alvo 1 atingido``, ``stopado``): a follow-up that repeats the signal's prices is still a
   follow-up. Instructions inside a signal (``após o alvo 1, mover o stop para a entrada``) are
   its plan, not events. Without an entry label, a ticker opening its line with a price or a
   range right after it (``PETR4 37,50/38,00 alvo 40 stop 36``, ``#PETR4 37,50 🎯 40``) is the
   entry when the post labels a target or a stop — not when a signed change follows the price
   (``VALE3 62,10 (+1,5%)``: a quote); so is ``Preço: 37,50`` on its own line when another
   line names the direction alone (``Tipo: Compra``). A buy the channel *reports*
   (``Compramos a 38.20``, ``Comprei PETR4 a 37,50``, ``Bought``, ``Entrada feita em``) is the
   entry only in a post that also labels a target or a stop: alone it is a fill, and in a
   recap (``Compramos PETR4 a 37,50 e vendemos a 39 ✅``) the event wins — a close, its result
   the sale against the buy. An option named beside its underlying is the asset (``MGLU3
   opção MGLUL420 compra 0,42``: the price is the option's), unless the entry is written with
   the stock itself (``PETR4 compra 37,50 …``).
3. Otherwise a post with an event is that **follow-up**: the first of cancelled, stopped,
   closed, target_hit, stop_moved that it reports (``alvo 2 atingido, stop na entrada`` is a
   target_hit that also carries the new stop). Its asset is the labelled one, else the ticker
   nearest its event on the event's line (``VALE3 segue firme. PETR4 stopou.`` is PETR4),
   else the post's first; an option and its underlying are one trade, the option's
   (``MGLUL420 (MGLU3) bateu o alvo``). A follow-up has no ticker at all when it replies to
   its signal (``Alvo 1 ✅``): the poller links it by ``reply_to_msg_id``. **Summaries** are
   chatter: when the events of a post are said of two or more different tickers (``PETR4 ✅
   alvo 1`` and ``ITUB4 ❌ stop`` on two lines, ``PETR4, VALE3 e ITUB4 no gain``), it reports
   the day, not one trade, and no single signal can take it.
4. Otherwise a post that carries signal labels and an asset but cannot be completed (no entry
   price, say) **needs review**: an asset with an entry label, or with two of target, stop and
   type; a direction word with its ticker (``Compra PETR4``, ``PETR4 compra``, ``Buy VALE3``)
   and a labelled target or stop, or a word saying the price comes later or is the market's
   (``aguardando preço``, ``a mercado``, ``TBA``); or an entry price with a target or stop but
   no asset. A direction and a ticker alone (``Compra PETR4``) are too little. Several calls
   in one post — entries at two or more entry labels (or ticker lines) in a post naming two or
   more tickers, a weekly list — need review with ``missing: ["asset"]``: no single signal can
   hold them (with events on two tickers the post is a summary, chatter).
5. Anything else is **chatter** — including posts that name tickers and prices.

**The channel's own call, or someone else's?** A post that *reports* a call — an attribution
(``segundo o BTG``, ``according to``, ``analistas``), a rating action (``eleva``, ``corta``,
``reitera``, ``recomenda``, ``upgrades``), ``recomendação``, ``preço-alvo``/``price target``,
``cobertura``, or a research house by name (``XP``, ``Itaú BBA``, ``UBS``, ``Goldman``,
``Morgan Stanley``) — is news: it never needs review, its ticker and price are never an
unlabelled entry, and a signal written as prose (``compra de PETR4 em 36,50``, no ``Label:``)
in it is no signal. So is a post that *recalls* an open trade (``seguimos posicionados em
PETR4 (entrada 36,50), alvo 40``, ``continua``, ``mantemos``, ``lembrete``, ``still open``),
and a chart's target (``alvo técnico``, ``alvo gráfico``) is analysis, like ``preço-alvo``.
A channel's template (``Ativo: … Compra: 36,50``) stays a signal whatever else the post says,
and a negated word is a disclaimer, not a source (``não é recomendação de investimento``); a
name with its own ticker is the company (``BTG Pactual (BPAC11)``).

Invariant: ``classify`` never raises on any text and always returns exactly one kind.
"""

from __future__ import annotations

from typing import NamedTuple

from tgstack.signals.events import Event, find_events, summarise
from tgstack.signals.lexicon import (
    ARTICLE,
    EVENT_WORDS,
    LINK,
    LIST,
    NL,
    NUM,
    PUNCT,
    REMINDER,
    REPORTED,
    SENT,
    STOP_L,
    SUPPRESS,
    TARGET_L,
    TICKER_ANY,
)
from tgstack.signals.model import Classification, Result, Signal
from tgstack.signals.scanner import (
    Fields,
    Scan,
    price_at,
    price_line_entry,
    read_fields,
    scan,
    ticker_entries,
)
from tgstack.signals.tickers import option_on

CHATTER = Classification("chatter")
_TARGET_OR_STOP = frozenset({"target", "stop"})
_VERBLESS = STOP_L | TARGET_L
_ASSET = ("asset",)
# "não é recomendação de investimento", "not a recommendation": a disclaimer, not a source
_NEGATIONS = frozenset({"não", "nao", "not", "no", "nem", "nenhuma", "nenhum", "sem"})


def _reported(s: Scan) -> bool:
    """Does the post report someone else's call — a source, a rating action, a price target —
    or recall an open one (``seguimos``, ``continua``, ``mantemos``, ``lembrete``, ``still``)?

    ``segundo o BTG``, ``de acordo com``/``according to``, ``analistas``, ``eleva``/``corta``/
    ``reitera``/``recomenda``/``upgrades``, ``recomendação``, ``preço-alvo``/``price target``,
    ``cobertura``, and research houses by name (``XP``, ``Itaú BBA``, ``UBS``, ``Goldman``).
    Not ``segundo alvo`` (an ordinal), not a word negated just before it (``não é
    recomendação``), not a name followed by its own ticker (``BTG Pactual (BPAC11)``)."""
    if not s.union & (REPORTED | SUPPRESS | REMINDER):
        return False
    flags, tokens, n = s.flags, s.tokens, len(s.tokens)
    for k, f in enumerate(flags):
        if f & SUPPRESS:
            return True
        if not f & (REPORTED | REMINDER):
            continue
        if tokens[k].lower() == "segundo" and not (k + 1 < n and flags[k + 1] & ARTICLE):
            continue
        if any(tokens[b].lower() in _NEGATIONS for b in range(max(0, k - 3), k)):
            continue
        if any(
            tokens[b] == "(" and flags[b + 1] & TICKER_ANY for b in range(k + 1, min(k + 4, n - 1))
        ):
            continue
        return True
    return False


def _asset(s: Scan, fields: Fields) -> str | None:
    """The labelled asset, else the ticker written with the entry, else the first ticker."""
    if fields.asset is not None:
        return fields.asset
    if fields.entry_ticker is not None:
        return fields.entry_ticker
    return s.tokens[s.tickers[0]].upper() if s.tickers else None


def _on_option(s: Scan, fields: Fields, asset: str | None) -> str | None:
    """The option the post names on ``asset``, else ``asset``: in ``MGLU3 opção MGLUL420
    compra 0,42``, ``PETR4 (call PETRJ290) compra 1,20`` or ``MGLUL420 (MGLU3) bateu o alvo``
    the price is the option's, and the stock only says what it is an option on."""
    if asset is None or (len(s.tickers) < 2 and fields.asset is None):
        return asset
    if fields.entry_ticker == asset:
        return asset  # "PETR4 compra 37,50 …": the entry written with the stock is the stock's
    for t in s.tickers:
        if option_on(word := s.tokens[t].upper(), asset):
            if (match := ("asset", t, t, word)) not in fields.matches:
                fields.matches.append(match)
            return word
    return asset


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


def _needs_review(s: Scan, asset: str | None, fields: Fields) -> Classification | None:
    labelled = fields.labelled
    found = None
    if asset is not None:
        weight = len(labelled & {"entry", "target", "stop"}) + (fields.signal_type is not None)
        called = fields.entry_ticker is not None and bool(
            labelled & _TARGET_OR_STOP or fields.awaiting
        )
        if "entry" in labelled or weight >= 2 or called:
            found = Classification("needs_review", asset, missing=("entry",))
    elif fields.entries and labelled & _TARGET_OR_STOP:
        found = Classification("needs_review", None, missing=_ASSET)
    return None if found is None or _reported(s) else found


def _unlabelled_entry(s: Scan, fields: Fields, asset: str | None) -> Signal | None:
    """The entry without an entry label, when the post reports no one else's call:
    ``PETR4 37,50/38,00 alvo 40 stop 36`` — a ticker opening its line with a price or range
    right after it, when the post labels a target or a stop; or ``Tipo: Compra`` … ``Preço:
    37,50`` — a line naming the price after a line naming the direction alone."""
    found = None
    # "Comprem! PETR4 a 37,50 …": after a direction alone, a ticker may open its sentence
    if (
        s.tickers
        and fields.labelled & _TARGET_OR_STOP
        and (every := ticker_entries(s, sentence=fields.direction))
    ):
        found = every[0]
        if len({s.tokens[t].upper() for t, *_ in every}) > 1:
            fields.priced_entries.extend(t for t, *_ in every)  # one call a line: several
    if found is None and fields.direction and asset is not None:
        found = price_line_entry(s)
        if found is not None:
            at, low, high, end = found
            fields.entries.append((low, high))
            fields.matches.append(("entry", at, end, (low, high)))
            fields.matches.sort(key=lambda match: match[1])
            return None if _reported(s) else _signal(asset, fields)
    if found is None or _reported(s):
        return None
    at, low, high, end = found
    fields.entries.append((low, high))
    fields.matches.append(("entry", at, end, (low, high)))
    fields.matches.sort(key=lambda match: match[1])  # --explain lists them in reading order
    return _signal(_on_option(s, fields, fields.asset or s.tokens[at].upper()), fields)


def _line_of(s: Scan, at: int) -> tuple[int, int]:
    flags, n = s.flags, len(s.flags)
    start = at
    while start > 0 and not flags[start - 1] & NL:
        start -= 1
    end = at + 1
    while end < n and not flags[end] & NL:
        end += 1
    return start, end


def _nearest_ticker(s: Scan, at: int) -> int | None:
    """The ticker nearest ``at`` on its line (before it on a tie), or None."""
    start, end = _line_of(s, at)
    on_line = [t for t in s.tickers if start <= t < end]
    return min(on_line, key=lambda t: (abs(t - at), t > at)) if on_line else None


def _several_calls(s: Scan, fields: Fields) -> bool:
    """Entries read at two or more entry labels in a post naming two or more tickers: several
    calls in one post (a weekly list, ``PETR4 — entrada 36,50 …`` and ``VALE3 — entrada 60,00
    …`` on lines of their own), which no single signal can hold."""
    if len(fields.priced_entries) < 2 or len(s.tickers) < 2:
        return False
    return len({s.tokens[t].upper() for t in s.tickers}) > 1


def _event_tickers(s: Scan, at: int) -> set[str]:
    """The ticker the event word at ``at`` is said of: the nearest on its line (before on a
    tie) — with the tickers listed beside it (``PETR4, VALE3 e ITUB4 no gain``, ``#PETR4
    #VALE3``), which make the event one of several trades."""
    flags, tokens = s.flags, s.tokens
    nearest = _nearest_ticker(s, at)
    if nearest is None:
        return set()
    start, end = _line_of(s, at)
    on_line = [t for t in s.tickers if start <= t < end]
    named = {tokens[nearest].upper()}
    for step in (-1, 1):
        k = nearest + step
        while start <= k < end and (flags[k] & (PUNCT | LINK | LIST) or k in on_line):
            if flags[k] & SENT:
                break
            if k in on_line:
                named.add(tokens[k].upper())
            k += step
    return named


def _instruments(s: Scan) -> set[str]:
    """The tickers the post names but an option's underlying (``PETRJ290 (PETR4)`` is one)."""
    names = {s.tokens[t].upper() for t in s.tickers}
    if len(names) < 2:
        return names
    return {name for name in names if not any(option_on(other, name) for other in names)}


def _sold_at(s: Scan, fields: Fields, subject: int | None) -> Result | None:
    """A close at a price against the post's buy: ``Compramos a 37,50 e vendemos a 39`` is a
    gain, ``… e vendi a 36`` a loss, the same price breakeven; None without both prices."""
    sold = price_at(s, subject) if subject is not None and s.flags[subject] & NUM else None
    bought = fields.bought or (fields.entries[0] if fields.entries else None)
    if sold is None or bought is None or len(_instruments(s)) > 1:
        return None  # "Vendemos PETR4 a 39 e compramos VALE3 a 61": not the same trade
    low, high = bought
    return "gain" if sold > high else "loss" if sold < low else "breakeven"


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
    asset = _on_option(s, fields, _asset(s, fields))
    signal = _signal(asset, fields)
    if signal is not None and not fields.entry_formal and _reported(s):
        signal = None  # "Segundo o BTG, compra de PETR4 em 36,50": news, not a call
    elif signal is None and not fields.entries:
        signal = _unlabelled_entry(s, fields, asset)
        asset = signal.asset if signal is not None else asset
    # Without an event word only verbless stop moves and targets named alone are possible, and
    # those are instructions: a complete signal with none is a signal whatever its lines say.
    words = s.union & EVENT_WORDS
    events = find_events(s) if words or (signal is None and s.union & _VERBLESS) else []
    named = set()
    if events and len(s.tickers) > 1:
        named = {name for e in events for name in _event_tickers(s, e.at)}
        if len(named) > 1:  # "MGLUL420 (MGLU3) bateu o alvo": one trade, on the option
            named = {_on_option(s, fields, name) or name for name in named}
    if signal is not None and _several_calls(s, fields):
        if len(named) > 1:  # "PETR4 37,50 alvo 40 ✅ / VALE3 61,80 stop 59 ❌": a summary
            return Analysis(CHATTER, s, fields, events)
        several = None if _reported(s) else Classification("needs_review", None, missing=_ASSET)
        return Analysis(several or CHATTER, s, fields, events)
    if events and (signal is None or not all(e.directive for e in events)):
        event = summarise(events)
        if fields.asset is None and named:
            if len(named) > 1:  # "PETR4 ✅ alvo 1 / ITUB4 ❌ stop": a summary of the day
                return Analysis(CHATTER, s, fields, events)
            asset = _on_option(s, fields, named.pop())
        result = event.result
        if event.kind == "closed" and result is None:
            result = _sold_at(s, fields, event.subject)
        found = Classification(
            event.kind, asset, target=event.target, stop=event.stop, result=result
        )
        return Analysis(found, s, fields, events)
    if signal is not None:
        return Analysis(Classification("signal", signal.asset, signal), s, fields, events)
    return Analysis(_needs_review(s, asset, fields) or CHATTER, s, fields, events)


def classify(text: str | None) -> Classification:
    """What one post is; see the module docstring. Never raises."""
    return analyse(text).classification


def parse_signal(text: str | None) -> Signal | None:
    """The post's signal, or None when it is not one (chatter, a follow-up, incomplete)."""
    return classify(text).signal
