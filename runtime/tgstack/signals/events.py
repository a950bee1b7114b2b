"""Follow-ups: what a post reports happened to a signal — a target reached, the stop moved,
stopped out, closed, cancelled. Pure.

An event is an *event word* paired with its *subject* in the same sentence:

==============  =============================================  ==================================
event           event words (PT / EN, any form)                subject
==============  =============================================  ==================================
target_hit      atingido, batido, bateu, alcançou, acionou,     a target: ``alvo 2``, ``TP1``,
                hit, reached, done; ✅ right after the target   ``2º alvo``, ``alvo final``,
                                                               ``todos os alvos``, ``all targets``
                (no verb) a target alone in its sentence       —
                outside a template: ``ALVO FINAL EM VALE3``
stopped         the same words, levou, tomamos, deu            the stop: ``stop``, ``SL``
                stopado, stopou, stopped out                   none needed
                (no verb) the stop alone in its sentence:      —
                ``CYREW296 stop``, ``Stop ❌``; crossed off:
                ``Stop: 36 ❌``, ``…, VALE3 SL ❌, …``
stop_moved      movido, mover, subir, ajustado, novo, móvel,    the stop, then where it went: a
                move, trail, raised                            price, the entry, ``0x0``,
                                                               breakeven, a target
                (no verb) ``stop na entrada``, ``SL to BE``,   —
                ``stop para 37,50``, ``stop in breakeven``,
                ``SL @ entry``; ``com stop em 38,50`` only
                beside a target reached
closed          encerrado, zeramos, fechado, finalizado,        a trade or signal noun, a result
                saímos, vendemos, vendi, closed, close, exit,  (gain, loss, lucro), the ticker
                sold; realizamos without a target              after it, or nothing else in the
                                                               sentence (``Encerrado ✅``); the
                                                               channel's own close also its
                                                               price (``vendemos a 39``)
cancelled       cancelado, cancelar, desconsiderem, ignore,     a trade or signal noun, the
                cancelled, invalidated                         ticker, nothing else, or nothing
                                                               else in its clause when another
                                                               speaks of the entry (``Não
                                                               acionou, cancelado``)
==============  =============================================  ==================================

Between the event word and its subject there may be fillers, articles, numbers, tickers,
symbols and at most one other word for a target or stop (``o alvo 1 foi atingido``), none for a
trade (``fechamos a semana com lucro`` closes no trade). An event word in a question, or in a
condition (``se o alvo 1 for atingido, mover o stop``), reports nothing; ``12 alvos atingidos``
is a count, and an instruction to move the stop that does not say where (``move your stop only
in the direction of the trade``) is advice. Instructions (``mover``, ``encerrar``, ``cancel``),
✅ ticks, the verbless stop moves and whatever is said of what comes after (``após stopado,
aguardar``, ``after TP1 move SL``) are *directives*: inside a complete signal they are part of
the signal's plan, not events. ``novo``/``new`` moves only the stop right beside it (``novo
stop: 38``; not ``aguardar novo sinal``).

Invariant: the module only reads the scan; it never raises and never invents a price — a stop
moved to a price carries exactly the price the post wrote.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import NamedTuple

from tgstack.signals.lexicon import (
    ARTICLE,
    ASSET_L,
    AUX,
    BREAKEVEN,
    CANCEL,
    CHECK,
    CLOSE,
    COLON,
    COND,
    CONN,
    DEST,
    DIRECTIVE,
    ENTRY_L,
    ENTRY_REF,
    FILL,
    FINAL,
    FIRST_PERSON,
    GAIN,
    HIT,
    JOIN,
    LINK,
    LIST,
    LOSS,
    MOVE,
    NL,
    NUM,
    ORDINAL,
    PLURAL,
    PUNCT,
    SENT,
    STOP_L,
    STOPPED,
    STOPPED_W,
    SYMBOL_L,
    TARGET_L,
    TICKER_ANY,
    TRADE,
    TYPE_L,
    WEAK_L,
    WORD,
)
from tgstack.signals.model import EventKind, Result, StopLevel, Target
from tgstack.signals.scanner import BOUNDARY, Scan, label_index, price_at

# Never counted as "another word" between an event word and its subject.
_SKIP = FILL | ARTICLE | DEST | JOIN | FINAL | ORDINAL | TICKER_ANY | LINK | AUX | CHECK
# Words that label a field but are never an event's subject: "gain"/"loss" (results), 🎯/🛑.
_NOT_SUBJECT = WEAK_L | SYMBOL_L
# How many tokens away an event word's subject may be: "o alvo 1 (39,00) foi atingido" behind,
# "reached the first target" ahead.
_REACH_BACK = 7
_REACH_AHEAD = 4
_MOVES_TO = frozenset({"para", "pra", "to", "→", ">"})  # a stop "para 37,50" was moved there
_NOW = frozenset({"agora", "now"})
_WITH = frozenset({"com", "with"})
_NEXT = frozenset({"próximo", "proximo", "próxima", "proxima", "next"})
_NEW = frozenset({"novo", "nova", "new"})
_AFTER = frozenset({"após", "apos", "after", "depois"})
# "zeramos antes do alvo": closed short of the target, which says nothing of the result.
_SHORT_OF = frozenset({"antes", "before", "sem", "without"})
# A signed result: "+4,2%", "-150 pts" (the sign glued to the number, not a dash before it).
_SIGNED = re.compile(r"(?<![\w.,%)])([+-])\d+(?:[.,]\d+)*\s?(?:%|pts\b|pontos\b|pt\b)")

PRECEDENCE: tuple[EventKind, ...] = ("cancelled", "stopped", "closed", "target_hit", "stop_moved")


class Event(NamedTuple):
    """One event word paired with its subject (a NamedTuple: posts make many of them)."""

    kind: EventKind
    at: int  # the event word's position
    directive: bool  # an instruction, not a report
    subject: int | None = None  # the position of what it happened to (target, stop, trade)
    until: int | None = None  # the position of the last word that says it (a stop's level)
    target: Target | None = None
    stop: StopLevel | None = None
    result: Result | None = None


def _content(flags: int) -> bool:
    """A word that counts as "another word" between an event word and its subject."""
    return bool(flags & WORD) and not flags & _SKIP


def _search(
    s: Scan,
    at: int,
    wanted: int,
    *,
    gap: int,
    back: bool = True,
    ahead: bool = True,
    skip: int = 0,
    exclude: int = 0,
) -> int | None:
    """The nearest token with a ``wanted`` role in ``at``'s sentence, at most ``gap`` other
    words and a few tokens away; behind first (Portuguese puts the subject first: ``alvo 1
    atingido``; English after: ``hit target 1``)."""
    flags = s.flags
    for step, allowed, reach in ((-1, back, _REACH_BACK), (1, ahead, _REACH_AHEAD)):
        if not allowed:
            continue
        k, words = at + step, 0
        end = max(-1, at - reach - 1) if step < 0 else min(len(flags), at + reach + 1)
        while k != end and not flags[k] & BOUNDARY:
            f = flags[k]
            if f & wanted and not f & exclude:
                return k
            if _content(f) and not f & skip:
                words += 1
                if words > gap:
                    break
            k += step
    return None


def _alone(s: Scan, at: int) -> bool:
    """The event word is the only word of its sentence (``Encerrado ✅``, ``PETR4 zerada``)."""
    start, end = s.sentence_of(at)
    return not any(_content(s.flags[k]) for k in range(start, end) if k != at)


_CLAUSE_MARKS = frozenset(",—–")
_OF_A_TRADE = HIT | ENTRY_L | TRADE | TICKER_ANY
_CROSSES = frozenset("❌✖✗❎🔴")  # a stop ticked off as lost


def _alone_in_clause(s: Scan, at: int, *, of_a_trade: bool = True) -> bool:
    """The event word is the only word of its clause, and another clause of its sentence
    speaks of the trade — the entry, a trigger, the ticker: ``Não acionou, cancelado.``,
    ``Entry not triggered — cancelled`` (not ``Evento de amanhã, cancelado``)."""
    start, end = s.sentence_of(at)
    tokens, flags = s.tokens, s.flags
    first, last = start, end
    for k in range(at - 1, start - 1, -1):
        if tokens[k] in _CLAUSE_MARKS:
            first = k
            break
        if _content(flags[k]):
            return False
    for k in range(at + 1, end):
        if tokens[k] in _CLAUSE_MARKS:
            last = k
            break
        if _content(flags[k]):
            return False
    return not of_a_trade or any(
        flags[k] & _OF_A_TRADE for k in (*range(start, first), *range(last, end)) if k != at
    )


def _conditional(s: Scan, at: int, directive: bool) -> bool:
    """Is the event word inside a condition: ``se …``, ``quando …``, ``if …``, ``once …``?

    A directive anywhere after the condition word in its sentence is conditional (``se bater o
    alvo, mover o stop``); a report only inside the condition's own clause (``ao bater o alvo 1,
    subimos o stop`` reports the stop move).
    """
    flags, tokens = s.flags, s.tokens
    k = at - 1
    clause = True
    while k >= 0 and not flags[k] & BOUNDARY:
        if flags[k] & COND and (directive or clause):
            return True
        if tokens[k] == ",":
            clause = False
        k -= 1
    return False


def _after(s: Scan, at: int) -> bool:
    """``após stopado, …``, ``after TP1 …``: said of what comes after — a plan inside a signal,
    so a directive (outside one, still an event)."""
    flags, tokens = s.flags, s.tokens
    k = at - 1
    while k >= 0 and not flags[k] & BOUNDARY and tokens[k] != ",":
        if tokens[k].lower() in _AFTER:
            return True
        k -= 1
    return False


def _adjacent(s: Scan, at: int, wanted: int) -> int | None:
    """A token with a ``wanted`` role right before or after ``at`` (later words of a phrase
    skipped): ``novo stop``, ``stop novo``."""
    flags, n = s.flags, len(s.flags)
    k = at + 1
    while k < n and flags[k] & JOIN:
        k += 1
    if k < n and flags[k] & wanted and not flags[k] & _NOT_SUBJECT:
        return k
    k = at - 1
    while k >= 0 and flags[k] & JOIN:
        k -= 1
    if k >= 0 and flags[k] & wanted and not flags[k] & _NOT_SUBJECT:
        return k
    return None


def _target_of(s: Scan, ref: int) -> Target:
    """The target a reference names: its number (the highest of ``alvos 1 e 2``) or final."""
    index, j = label_index(s, ref)
    if index == "final":
        return "final"
    best = index if isinstance(index, int) else 1
    flags, tokens = s.flags, s.tokens
    while (
        j + 1 < len(tokens)
        and flags[j] & (LIST | CONN | LINK | PUNCT)
        and not flags[j] & (SENT | NL)
    ):
        if flags[j + 1] & NUM and tokens[j + 1].isdecimal() and len(tokens[j + 1]) == 1:
            best = max(best, int(tokens[j + 1]))
            j += 2
        else:
            break
    return best


def _level(s: Scan, k: int) -> StopLevel | None:
    """The stop level named at ``k``: the entry, a target, or a price."""
    f = s.flags[k]
    if f & (ENTRY_REF | BREAKEVEN):
        return "entry"
    if f & TARGET_L and not f & _NOT_SUBJECT:
        target = _target_of(s, k)
        return f"target_{target}"
    if f & NUM:
        return price_at(s, k)
    return None


def _destination(s: Scan, ref: int) -> tuple[StopLevel | None, int]:
    """Where the stop at ``ref`` went, read forward in its sentence (the verb may be between),
    and the position of the words that say it."""
    flags = s.flags
    words = 0
    for k in range(ref + 1, min(ref + 12, len(flags))):
        if flags[k] & BOUNDARY:
            break
        f = flags[k]
        if f & (ENTRY_REF | BREAKEVEN | NUM) or (f & TARGET_L and not f & _NOT_SUBJECT):
            return _level(s, k), k
        if _content(f) and not f & (MOVE | STOP_L | TRADE):
            words += 1
            if words > 1:
                break
    return None, ref


def _with_stop(s: Scan, ref: int) -> bool:
    """``… com stop em 38,50``, ``with SL at 38.50``: the stop at ``ref`` is where it is now."""
    return ref > 0 and s.low(ref - 1) in _WITH


def _verbless_move(s: Scan, ref: int) -> tuple[StopLevel | None, int]:
    """``stop na entrada``, ``stop no 0x0``, ``SL to BE``, ``stop para 37,50``, ``SL: BE``,
    ``stop in breakeven``, ``stop 0x0``, ``SL @ entry``:
    the level and its position."""
    flags, tokens, n = s.flags, s.tokens, len(s.tokens)
    k = ref + 1
    now = False  # "stop agora em 37,80": "now" says it changed
    while k < n and flags[k] & (JOIN | AUX | ARTICLE) and not flags[k] & DEST:
        now = now or tokens[k].lower() in _NOW
        k += 1
    if k < n and flags[k] & BREAKEVEN:
        return "entry", k  # "stop in breakeven", "stop 0x0", "SL BE"
    if k >= n or not flags[k] & (DEST | COLON):
        return None, ref
    # "para 37,50" says where it went; "com stop em 38,50" ("with the stop at") where it is now,
    # read beside a target reached only (find_events)
    moves_to = now or tokens[k].lower() in _MOVES_TO or _with_stop(s, ref)
    colon = bool(flags[k] & COLON)
    k += 1
    while k < n and flags[k] & (ARTICLE | FILL) and not flags[k] & (NUM | ENTRY_REF):
        k += 1
    if k >= n:
        return None, ref
    f = flags[k]
    if f & BREAKEVEN or (f & ENTRY_REF and not colon):
        return "entry", k
    if (f & TARGET_L and not colon) or (f & NUM and moves_to):
        return _level(s, k), k
    return None, ref


def _crossed_off(s: Scan, ref: int) -> int | None:
    """``Stop: 36 ❌``, ``SL 36 ❌``: the position of the cross after the stop's price."""
    flags, tokens, n = s.flags, s.tokens, len(s.tokens)
    k = ref + 1
    while k < n and flags[k] & (COLON | JOIN):
        k += 1
    if k + 1 < n and flags[k] & NUM and tokens[k + 1] in _CROSSES:
        return k + 1
    return None


def _result(s: Scan, at: int) -> Result | None:
    """gain / loss / breakeven, as the event's sentence (else the post) states it: a word
    (``com lucro``, ``at a loss``, ``no 0x0``), else a target in the closing sentence
    (``encerrado no alvo final`` is a gain), else the one sign of the post's signed
    percentages or points (``+4,2%``, ``-150 pts``)."""
    start, end = s.sentence_of(at)
    flags = s.flags
    for first, last in ((start, end), (0, len(flags))):
        for f in flags[first:last]:
            if f & GAIN:
                return "gain"
            if f & LOSS:
                return "loss"
            if f & BREAKEVEN:
                return "breakeven"
        if first == start and any(
            flags[k] & TARGET_L
            and not flags[k] & _NOT_SUBJECT
            and not any(s.low(b) in _SHORT_OF for b in range(max(start, k - 3), k))
            # not the target of a new call ("vendemos PETR4 a 39 e compramos VALE3 …, alvo 64")
            and not any(flags[b] & ENTRY_L for b in range(min(at, k), max(at, k)))
            for k in range(start, end)
        ):
            return "gain"
    signs = {match[0] for match in _SIGNED.findall(s.text)}
    if len(signs) == 1:
        return "gain" if "+" in signs else "loss"
    return None


# The channel's own close, which may name its price (not "PETR4 closed at 38.20", "fechado a
# 37,50": the market's close).
_SOLD = frozenset(
    {
        "vendemos",
        "vendi",
        "sold",
        "realizamos",
        "realizei",
        "zeramos",
        "zerei",
        "encerramos",
        "encerrei",
        "fechamos",
        "fechei",
        "saímos",
        "saimos",
        "liquidamos",
        "liquidei",
        "finalizamos",
        "finalizei",
        "exited",
    }
)


def _price_after(s: Scan, at: int) -> int | None:
    """The price a close word says it closed at: ``vendemos a 39``, ``sold at 39.20``,
    ``zeramos em R$ 38`` — after ``a``/``em``/``at``/``@`` (not ``fechamos 3 operações``)."""
    flags, n = s.flags, len(s.flags)
    k = at + 1
    while k < n and k <= at + 3 and flags[k] & (FILL | DEST) and not flags[k] & (NUM | NL):
        k += 1
    return k if k > at + 1 and price_at(s, k) is not None else None


def _bullet(s: Scan, at: int) -> bool:
    """The ✅ at ``at`` introduces the next field (``✅ Alvo: 39 ✅ Stop: 35``), not a tick."""
    k = at + 1
    while k < len(s.flags) and s.flags[k] & PUNCT and not s.flags[k] & BOUNDARY:
        k += 1
    return k < len(s.flags) and bool(s.flags[k] & (ASSET_L | ENTRY_L | STOP_L | TYPE_L))


def _counted(s: Scan, ref: int) -> bool:
    """``12 alvos atingidos``: a count of targets, not a target reached."""
    return ref > 0 and bool(s.flags[ref] & PLURAL) and bool(s.flags[ref - 1] & NUM)


def _priced(s: Scan, ref: int) -> bool:
    """A price follows the label at ``ref`` (``Alvo 1: 39,00``): it is a field, not a tick."""
    _, j = label_index(s, ref)
    while j < len(s.flags) and s.flags[j] & (COLON | FILL | JOIN) and not s.flags[j] & NUM:
        j += 1
    return j < len(s.flags) and bool(s.flags[j] & NUM)


def _named_alone(s: Scan, ref: int) -> bool:
    """A target label with no price, alone in its sentence (but for the ticker, its number,
    symbols), not asked about, not a condition: ``ALVO FINAL EM VALE3``, ``PETR4 alvo 2``."""
    f = s.flags[ref]
    if not f & TARGET_L or f & (_NOT_SUBJECT | PLURAL) or s.in_question(ref):
        return False
    if any(s.low(k) in _NEXT for k in range(max(0, ref - 2), ref)):
        return False  # "Próximo alvo 🎯": the one still ahead
    _, j = label_index(s, ref)
    if (j < len(s.flags) and s.flags[j] & COLON) or _priced(s, ref):
        return False
    return _alone(s, ref) and not _conditional(s, ref, True)


def _is_stop(f: int) -> bool:
    return bool(f & STOP_L) and not f & _NOT_SUBJECT


def find_events(s: Scan) -> list[Event]:
    """Every event the post reports or instructs, in order."""
    events: list[Event] = []
    moved: set[int] = set()
    for at in s.events:
        event = _event_at(s, at, moved)
        if event is not None:
            events.append(event)
    where = _label_events(s, events, moved)
    if where and any(e.kind == "target_hit" for e in events):
        events.extend(where)
    return events


def _event_at(s: Scan, at: int, moved: set[int]) -> Event | None:
    """The event the event word at ``at`` reports or instructs, if any; a stop it moves is
    added to ``moved``."""
    if s.in_question(at):
        return None
    f = s.flags[at]
    directive = bool(f & DIRECTIVE)
    if _conditional(s, at, directive):
        return None
    directive = directive or _after(s, at)
    hit = None
    if f & HIT:
        hit = _search(s, at, TARGET_L | STOP_L, gap=1, skip=TRADE, exclude=_NOT_SUBJECT)
    if f & HIT and (hit is not None or not f & CLOSE):
        # "realizamos" with no target or stop is a close: "Realizamos lucro em PETR4"
        return _hit_event(s, at, directive, hit)
    if f & CHECK:  # "TP1 ✅", "Alvo 1: 39,00 ✅", "✅ Alvo 1 — PETR4" (no price after)
        return _checked_event(s, at)
    if f & STOPPED:
        return Event("stopped", at, directive)
    if f & STOPPED_W:
        ref = _search(s, at, TICKER_ANY | TRADE | FIRST_PERSON, gap=0)
        return Event("stopped", at, directive, ref) if ref is not None or _alone(s, at) else None
    if f & MOVE:
        return _move_event(s, at, directive, moved)
    if f & CLOSE:
        return _close_event(s, at, directive)
    if f & (GAIN | LOSS) and not f & (CLOSE | CANCEL):
        return _result_event(s, at, directive)
    if f & CANCEL:
        ref = _search(s, at, TRADE | TICKER_ANY | ENTRY_L, gap=0)
        if ref is not None or _alone(s, at) or _alone_in_clause(s, at):
            return Event("cancelled", at, directive, ref)
    return None


def _hit_event(s: Scan, at: int, directive: bool, ref: int | None) -> Event | None:
    """A target or stop reached: "alvo 1 atingido", "stop atingido"."""
    if ref is not None and _is_stop(s.flags[ref]):
        return Event("stopped", at, directive, ref)
    if ref is not None and not _counted(s, ref):
        return Event("target_hit", at, directive, ref, target=_target_of(s, ref))
    return None


def _checked_event(s: Scan, at: int) -> Event | None:
    """A target ticked off: "TP1 ✅", "✅ Alvo 1 — PETR4"; not a priced bullet."""
    ref = _search(s, at, TARGET_L, gap=0, ahead=False, exclude=_NOT_SUBJECT)
    if ref is not None and _priced(s, ref) and _bullet(s, at):
        ref = None  # "✅ Alvo: 39 ✅ Stop: 35": bullets; not "TP1 ✅ SL → BE"
    if ref is None:
        ref = _search(s, at, TARGET_L, gap=0, back=False, exclude=_NOT_SUBJECT)
        if ref is not None and _priced(s, ref):
            ref = None
    if ref is None:
        return None
    return Event("target_hit", at, True, ref, target=_target_of(s, ref))


def _move_event(s: Scan, at: int, directive: bool, moved: set[int]) -> Event | None:
    """The stop moved, to a level or to the entry; the stop's label is added to ``moved``."""
    if s.low(at) in _NEW:  # "novo stop", "New SL": the adjective's own noun only
        ref = _adjacent(s, at, STOP_L)
    else:
        ref = _search(s, at, STOP_L, gap=1, skip=TRADE, exclude=_NOT_SUBJECT)
    level, until = _destination(s, ref) if ref is not None else (None, at)
    if ref is not None and (level is not None or not directive):
        # an instruction says where ("subam o stop para 37,50"); a report may not
        # ("stop ajustado"); "move your stop only in the direction of the trade" is advice
        moved.add(ref)
        return Event("stop_moved", at, directive, ref, until, stop=level)
    if (ref := _search(s, at, BREAKEVEN, gap=1, back=False)) is not None:
        return Event("stop_moved", at, directive, ref, stop="entry")
    return None


def _close_event(s: Scan, at: int, directive: bool) -> Event | None:
    """The trade closed ("encerramos PETR4", "vendemos a 39"), or stopped when the word names
    the stop."""
    ref = _search(s, at, STOP_L | TARGET_L | TRADE | GAIN | LOSS | BREAKEVEN, gap=0)
    if ref is not None and _is_stop(s.flags[ref]):
        return Event("stopped", at, directive, ref)
    if ref is None:
        ref = _search(s, at, TICKER_ANY, gap=0, back=False)
    if ref is None and s.low(at) in _SOLD:
        ref = _price_after(s, at)  # "vendemos a 39", "sold at 39.20", "zerei em 38"
    if ref is not None or _alone(s, at):
        return Event("closed", at, directive, ref, result=_result(s, at))
    return None


def _result_event(s: Scan, at: int, directive: bool) -> Event | None:
    """A result alone ("PETR4 — GAIN ✅ +6%", "❌ LOSS VALE3"), not a "Gain: 39" label."""
    f = s.flags[at]
    nxt = s.flags[at + 1] if at + 1 < len(s.flags) else NL
    if not nxt & (COLON | NUM) and _alone(s, at):
        result: Result = "gain" if f & GAIN else "loss"
        return Event("closed", at, directive, None, result=result)
    return None


def _label_events(s: Scan, events: list[Event], moved: set[int]) -> list[Event]:
    """The events a target or stop label reports with no event word: appended to ``events``;
    the stop moves said only beside a target reached ("com stop em 38,50") are returned."""
    flags = s.flags
    template = bool(s.union & (ASSET_L | ENTRY_L)) or bool(s.types)
    where: list[Event] = []
    subjects = {e.subject for e in events}
    for ref in s.labels:
        if not template and ref not in subjects and _named_alone(s, ref):
            # "🎯 ALVO FINAL EM VALE3 🎯", "LRENW150 ALVO 2": a target, and nothing else said
            events.append(Event("target_hit", ref, True, ref, target=_target_of(s, ref)))
            continue
        if ref in moved or not _is_stop(flags[ref]) or s.in_question(ref):
            continue
        if (crossed := _crossed_off(s, ref)) is not None:
            # "Stop: 36 ❌": the stop at its price, crossed off
            events.append(Event("stopped", ref, True, ref, crossed))
            continue
        level, until = _verbless_move(s, ref)
        if level is not None and not _conditional(s, ref, True):
            event = Event("stop_moved", ref, True, ref, until, stop=level)
            if isinstance(level, Decimal) and _with_stop(s, ref):
                where.append(event)  # "com stop em 38,50": a move only beside a target reached
            else:
                events.append(event)
        elif _stop_alone(s, ref):
            # "CYREW296 stop", "Stop ❌", "…, VALE3 SL ❌, …": the stop, and nothing else said of it
            events.append(Event("stopped", ref, True, ref))
    return where


def _stop_alone(s: Scan, ref: int) -> bool:
    """A stop label with no price or colon after it, alone, or crossed off in its clause."""
    flags = s.flags
    if ref + 1 < len(flags) and flags[ref + 1] & (COLON | NUM):
        return False
    return _alone(s, ref) or (
        ref + 1 < len(flags)
        and s.tokens[ref + 1] in _CROSSES
        and _alone_in_clause(s, ref, of_a_trade=False)
    )


def summarise(events: list[Event]) -> Event:
    """The one event a post reports: the first kind in ``PRECEDENCE``, with the highest target
    reached and the stop's new level when the same post moved it."""
    kinds = {e.kind for e in events}
    kind = next(k for k in PRECEDENCE if k in kinds)
    mine = [e for e in events if e.kind == kind]
    first = mine[0]
    if len(mine) == 1 and kind != "target_hit":
        return first
    directive = all(e.directive for e in mine)
    if kind == "target_hit":
        targets = [e.target for e in mine]
        target: Target = (
            "final"
            if "final" in targets
            else max((t for t in targets if isinstance(t, int)), default=1)
        )
        stop = next((e.stop for e in events if e.kind == "stop_moved" and e.stop), None)
        return first._replace(directive=directive, target=target, stop=stop)
    if kind == "stop_moved":
        stop = next((e.stop for e in mine if e.stop is not None), None)
        return first._replace(directive=directive, stop=stop)
    if kind == "closed":
        result = next((e.result for e in mine if e.result), None)
        return first._replace(directive=directive, result=result)
    return first._replace(directive=directive)
