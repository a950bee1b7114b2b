"""The words the signal reader knows, in Portuguese and English, each with its roles. Data only.

A word has one or more roles, as bit flags: it may label a field (``ALVO`` labels a target),
stand between a label and its value (``de``, ``R$``), join the two ends of a range (``até``),
report an event (``atingido``), name what a stop moved to (``entrada``, ``breakeven``) and so on.
Several-word terms (``stop loss``, ``preço de entrada``, ``day trade``) are ``PHRASES``: the
scanner reads a phrase as its first word with the phrase's roles.

Invariant: the lexicon holds lower-case words after ``normalise`` (accents kept; the common
unaccented spellings are listed too). The readers decide what a role means in context; a
word's presence here never decides alone that a post is a signal or an event.
"""

from __future__ import annotations

from collections.abc import Iterable

# Token kinds (exactly one of these per token).
NUM = 1 << 0  # digits with . or , separators
WORD = 1 << 1  # letters, maybe digits after the first letter
NL = 1 << 2  # a line break
PUNCT = 1 << 3  # any other single character (punctuation, emoji, symbols)

# Words and symbols with a role.
TICKER = 1 << 4  # B3 ticker shape, written in capitals
TICKER_ANY = 1 << 5  # B3 ticker shape in any case (read after an asset or entry label)
ASSET_L = 1 << 6
ENTRY_L = 1 << 7
TARGET_L = 1 << 8
STOP_L = 1 << 9
TYPE_L = 1 << 10  # "Tipo:", "Type:", "Setup:"
WEAK_L = 1 << 11  # a label only when followed by ":" or its value (Gain:, Loss:, Stock:)
FILL = 1 << 12  # may stand between a label and its value
CONN = 1 << 13  # joins the two ends of a range
LIST = 1 << 14  # separates the prices of a list of targets
HIT = 1 << 15  # a target or stop was reached
MOVE = 1 << 16  # the stop was moved
CLOSE = 1 << 17  # the position was closed
CANCEL = 1 << 18  # the signal was cancelled
STOPPED = 1 << 19  # stopped out, whatever follows ("stopado")
STOPPED_W = 1 << 20  # stopped, when it is said of a trade ("stopped")
ENTRY_REF = 1 << 21  # the entry as a place a stop can go to ("entrada", "preço de entrada")
TRADE = 1 << 22  # a trade or signal as a noun ("operação", "posição", "signal")
GAIN = 1 << 23
LOSS = 1 << 24
COND = 1 << 25  # a condition: what follows has not happened ("se", "quando", "if")
FINAL = 1 << 26  # "final", "geral", "último": the last target
ORDINAL = 1 << 27  # "primeiro", "second": a target's number before its label
CHECK = 1 << 28  # ✅: a target ticked off
LINK = 1 << 29  # may come just before a label ("e", "and", "com", "with")
COLON = 1 << 30  # ":" or "=" after a label
SENT = 1 << 31  # ends a sentence
DEST = 1 << 32  # "para", "to", "na", "no": where a stop goes
PHRASE = 1 << 33  # first word of a several-word term
TYPE_W = 1 << 34  # names a signal type on its own line ("swing", "scalp", "position")
TYPE_P = 1 << 35  # names a signal type anywhere ("swing trade", "day trade", "scalping")
INDEXED = 1 << 36  # label and number in one word ("TP1", "alvo2")
DIRECTIVE = 1 << 37  # an instruction (infinitive or imperative), not a report
PLURAL = 1 << 38  # a label that lists several values ("alvos", "targets")
SUPPRESS = 1 << 39  # a term that looks like a label but is not one ("preço-alvo")
JOIN = 1 << 40  # a later word of a phrase: readers skip it
ARTICLE = 1 << 41  # articles and prepositions ("o", "the", "in"): skipped when pairing events
FIRST_PERSON = 1 << 42  # "we", "nós": the channel speaking of its own trade
BREAKEVEN = 1 << 43  # the stop at the entry price: "breakeven", "0x0", "BE"
AUX = 1 << 44  # "foi", "was", "hoje", "now": skipped when pairing an event with its subject
SYMBOL_L = 1 << 45  # an emoji label (🎯, 🛑): a price right after it; never an event subject
WAIT = 1 << 46  # the price comes later, or is the market's: "aguardando", "a definir", "TBA"
REPORTED = 1 << 47  # someone else's call: a source or a rating action ("segundo", "eleva", "UBS")
UNIT = 1 << 48  # a price's unit after it ("125.300 pts", "37,50 reais"): a label may follow
REMINDER = 1 << 49  # an open trade recalled, not a new call ("seguimos", "continua", "still")
# A buy the channel reports as done or doing ("compramos", "comprei", "entramos", "bought",
# "entrada feita"): an entry label only in a post that also labels a target or a stop.
BOUGHT = 1 << 50

LABELS = ASSET_L | ENTRY_L | TARGET_L | STOP_L
EVENT_WORDS = HIT | MOVE | CLOSE | CANCEL | STOPPED | STOPPED_W | CHECK | GAIN | LOSS

SIGNAL_TYPES = {
    "swing trade": "swing_trade",
    "swingtrade": "swing_trade",
    "positiontrade": "position",
    "swing": "swing_trade",
    "day trade": "day_trade",
    "daytrade": "day_trade",
    "scalping": "scalping",
    "scalp": "scalping",
    "position": "position",
    "position trade": "position",
}

ORDINALS = {
    "primeiro": 1,
    "primeira": 1,
    "first": 1,
    "segundo": 2,
    "segunda": 2,
    "second": 2,
    "terceiro": 3,
    "terceira": 3,
    "third": 3,
    "quarto": 4,
    "quarta": 4,
    "fourth": 4,
    "quinto": 5,
    "quinta": 5,
    "fifth": 5,
}
# "1º alvo", "2nd target": the suffix after the number (º and ª are "o" and "a" after NFKC).
ORDINAL_SUFFIXES = frozenset({"o", "a", "st", "nd", "rd", "th", "°"})


def _w(words: str) -> list[str]:
    return words.split()


_WORDS: dict[int, Iterable[str]] = {
    ASSET_L: _w("ativo papel ticker asset ação acao symbol símbolo simbolo"),
    ASSET_L | WEAK_L: _w("stock par pair código codigo"),
    # the imperative too: "Compre ITUB4 em 32,10", "Comprem VALE3 na zona de 60,80"
    ENTRY_L: _w("compra comprar compre comprem entrada entrem buy entry long"),
    ENTRY_L | BOUGHT: _w("compramos comprei comprando entramos entrei entrando bought buying"),
    TARGET_L: _w("alvo target tp objetivo"),
    TARGET_L | PLURAL: _w("alvos targets tps objetivos"),
    TARGET_L | WEAK_L: ["gain"],
    STOP_L: _w("stop sl stoploss"),
    STOP_L | WEAK_L: ["loss"],
    TYPE_L: _w("tipo type setup modalidade estratégia estrategia strategy"),
    TYPE_W: _w("swing scalp position"),
    TYPE_P: _w("daytrade swingtrade scalping positiontrade"),
    FILL: _w(
        "de em entre na no a à at acima abaixo above below from of is preço preco price partir"
        " zona zone região regiao área area around próximo proximo perto torno near aprox"
        " approx approximately até ate up to do da the r us brl usd reais between on"
        # a label's qualifier: "Alvo sugerido: 40", "Stop inicial: 36", "Stop móvel em 38"
        " inicial sugerido sugerida móvel movel"
        # where a price stands: "na faixa de 10,50 a 10,80", "no patamar de", "at the level of"
        " faixa patamar nível nivel level taxa rate"
        # the instrument's kind before its ticker: "compra da call PETRJ380 a 0,95"
        " call put opção opcao option"
    ),
    CONN: _w("a à até ate e to and ou or ao"),
    LIST: _w("e and"),
    HIT: _w(
        "atingido atingida atingidos atingidas atingiu atingimos batido batida batidos"
        " batidas bateu batemos alcançado alcançada alcançados alcançou alcançamos alcancado"
        " alcancada alcancou acionado acionada acionou acionaram executado executada realizado"
        " realizada atingiram bateram alcançaram alcancaram tocou chegou chegamos pegou hit"
        " hits reached achieved done touched levou levei levaram tomou tomei tomamos tomaram"
        " deu"
        " triggered filled smashed"
    ),
    # a target reached ("realizamos 50% no alvo 1"), else a close ("realizamos lucro")
    HIT | CLOSE: _w("realizamos realizei"),
    # "realizem parcial no alvo 1", "parcial no alvo 1", "saída no alvo 2", "saída no stop"
    HIT | DIRECTIVE: _w("realizar realize realizem parcial saída saida"),
    MOVE: _w(
        "movido movida movemos moved moving ajustado ajustada ajustamos adjusted alterado"
        " alterada alteramos subimos subido subiu sobe subindo novo nova new trailing trailed"
        " raised levado levamos colocado colocamos reposicionado reposicionamos atualizado"
        " updated passa passou puxamos puxado"
    ),
    MOVE | DIRECTIVE: _w(
        "mover movam move mova subir suba subam ajustar ajuste ajustem alterar altere"
        " trail raise levar leve levem colocar coloque coloquem reposicionar atualizar"
        " update adjust puxar puxe passar móvel movel"
    ),
    CLOSE: _w(
        "encerrado encerrada encerrados encerradas encerramos fechado fechada fechados"
        " fechadas fechamos zerado zerada zerados zeradas zeramos finalizado finalizada"
        " finalizamos liquidado liquidada liquidamos saímos saimos closed exited zerei encerrei"
        " fechei finalizei liquidei"
        # a sale reported: "vendemos a 39", "sold at 39.20" (not "venda", a short signal)
        " vendemos vendi sold"
    ),
    CLOSE | DIRECTIVE: _w(
        "encerrar encerre encerrem encerrando fechar feche fechem zerar zere zerem zerando"
        " finalizar finalize liquidar sair saia saiam close closing exit"
    ),
    CANCEL: _w(
        "cancelado cancelada cancelados canceladas cancelamos cancelled canceled"
        " desconsiderado desconsiderada invalidado invalidada invalidated anulado anulada"
        " abortado abortada aborted ignored"
    ),
    CANCEL | DIRECTIVE: _w(
        "cancelar cancele cancelem cancel desconsiderar desconsiderem desconsidere ignore"
        " ignorar ignorem disregard anular abortar abort"
    ),
    STOPPED: _w("stopado stopada stopados stopadas stopou stopamos stopei estopado estopou"),
    STOPPED_W: ["stopped"],
    ENTRY_REF: _w("entrada entry"),
    BREAKEVEN: ["breakeven", "0x0"],
    AUX: _w(
        "foi foram fomos é está esta era será vai vão was were is are has have had been got"
        " getting já ja hoje agora ontem now today just finally finalmente aqui here"
        " manualmente manually deu went going"
    ),
    TRADE: _w(
        "operação operacao posição posicao trade position sinal signal call ordem order"
        " recomendação recomendacao montagem compra entrada entry setup opção opcao opções"
        " opcoes option options"
    ),
    GAIN: _w("gain gains ganho ganhos lucro lucros profit positivo positiva positive"),
    LOSS: _w("loss prejuízo prejuizo negativo negativa negative perda perdas"),
    COND: _w("se caso ao quando if when once"),
    FINAL: _w("final geral máximo maximo max máx último ultimo last"),
    ORDINAL: list(ORDINALS),
    LINK: _w("e and com with"),
    DEST: _w("para pra to na no em at"),
    ARTICLE: _w(
        "o a os as um uma the essa esta nossa nosso sua seu in on for by of our toda todo todas"
        " todos"
    ),
    FIRST_PERSON: _w("we nós i eu"),
    UNIT: _w("pts pt pontos points reais"),
    REMINDER: _w(
        "lembrete lembrando relembrando reminder still continua continuam seguimos mantemos"
        " mantendo permanecemos"
    ),
    WAIT: _w(
        "aguardando aguarde aguardem aguardar aguardamos esperando espere esperem definir"
        " breve mercado waiting wait tba tbd soon market later"
    ),
    # Reported calls: an attribution, a rating action, a research house (the names of brokers
    # and foreign banks that are not themselves the B3 stocks channels trade). "segundo" is an
    # ordinal too ("segundo alvo"): the classifier reads it as a source before an article only.
    REPORTED: _w(
        "segundo conforme according eleva elevou elevam elevaram corta cortou cortam rebaixa"
        " rebaixou reitera reiterou reiteram recomenda recomendam recomendou recomendação"
        " recomendacao recomendações recomendacoes cobertura analistas raises cuts lowers upgrades"
        " upgraded downgrades downgraded reiterates reiterated initiates coverage recommends"
        " recommendation analysts overweight underweight outperform underperform rating"
        " btg xp bba bbi safra genial goldman sachs morgan stanley jpmorgan ubs citi"
        " citigroup bofa merrill barclays hsbc nomura suisse"
    ),
}

_SYMBOLS: dict[int, str] = {
    COLON: ":=",
    FILL: ":=-–—>→@([#$~»➡•",
    CONN: "-–—/~",
    LIST: "/|-–—;,>→&•·",
    SENT: ".!?;",
    CHECK: "✅✔☑",
    TARGET_L | SYMBOL_L: "🎯",
    STOP_L | SYMBOL_L: "🛑⛔",
    DEST: "→>@",
}

# Several-word terms: first word → (the words after it, the term's roles, the term's value).
PHRASES: dict[str, tuple[tuple[tuple[str, ...], int, str], ...]] = {
    "stop": (
        (("loss",), STOP_L, "stop loss"),
        (("gain",), TARGET_L, "stop gain"),
        (("target",), STOP_L, "stop target"),
        (("targets",), STOP_L, "stop target"),  # Cornix: "Stop Targets:\n1) 36000"
        (("técnico",), STOP_L, "stop técnico"),
        (("tecnico",), STOP_L, "stop técnico"),
    ),
    # a chart's target is analysis, like "preço-alvo": "alvo técnico em 40", "alvo gráfico"
    "alvo": (
        (("técnico",), SUPPRESS, "alvo técnico"),
        (("tecnico",), SUPPRESS, "alvo técnico"),
        (("gráfico",), SUPPRESS, "alvo gráfico"),
        (("grafico",), SUPPRESS, "alvo gráfico"),
    ),
    "take": (
        (("profit", "targets"), TARGET_L | PLURAL, "take profit"),  # Cornix
        (("profit",), TARGET_L, "take profit"),
        (("profits",), TARGET_L | PLURAL, "take profit"),
    ),
    # Cornix reports where the entry orders filled on average: a level, not an entry to buy at
    "average": (
        (("entry", "price"), BREAKEVEN, "average entry price"),
        (("entry",), BREAKEVEN, "average entry price"),
        (("price",), BREAKEVEN, "average entry price"),
    ),
    "preço": (
        (("de", "entrada"), ENTRY_L | ENTRY_REF, "preço de entrada"),
        (("de", "compra"), ENTRY_L, "preço de compra"),
        (("médio",), BREAKEVEN, "preço médio"),
        (("alvo",), SUPPRESS, "preço-alvo"),
    ),
    "preco": (
        (("de", "entrada"), ENTRY_L | ENTRY_REF, "preço de entrada"),
        (("de", "compra"), ENTRY_L, "preço de compra"),
        (("medio",), BREAKEVEN, "preço médio"),
        (("alvo",), SUPPRESS, "preço-alvo"),
    ),
    "ponto": ((("de", "entrada"), ENTRY_L | ENTRY_REF, "ponto de entrada"),),
    "zona": (
        (("de", "compra"), ENTRY_L, "zona de compra"),
        (("de", "entrada"), ENTRY_L, "zona de entrada"),
    ),
    "região": ((("de", "compra"), ENTRY_L, "região de compra"),),
    "regiao": ((("de", "compra"), ENTRY_L, "região de compra"),),
    "buy": (
        (("zone",), ENTRY_L, "buy zone"),
        (("range",), ENTRY_L, "buy range"),
        (("price",), ENTRY_L, "buy price"),
    ),
    # a buy reported as done: "Entrada feita em BBAS3 a 27,80", "Entry filled on PETR4"
    "entrada": tuple(
        ((done,), ENTRY_L | BOUGHT, "entrada feita")
        for done in ("feita", "realizada", "executada", "efetuada")
    ),
    "compra": tuple(
        ((done,), ENTRY_L | BOUGHT, "compra feita")
        for done in ("feita", "realizada", "executada", "efetuada")
    ),
    "posição": ((("aberta",), ENTRY_L | BOUGHT, "posição aberta"),),
    "posicao": ((("aberta",), ENTRY_L | BOUGHT, "posição aberta"),),
    "abrimos": (
        (("posição",), ENTRY_L | BOUGHT, "abrimos posição"),
        (("posicao",), ENTRY_L | BOUGHT, "abrimos posição"),
    ),
    "montamos": (
        (("posição",), ENTRY_L | BOUGHT, "abrimos posição"),
        (("posicao",), ENTRY_L | BOUGHT, "abrimos posição"),
    ),
    # "acabamos de comprar": "just", before the verb
    "acabamos": ((("de",), AUX, "acabamos de"),),
    "acabei": ((("de",), AUX, "acabamos de"),),
    "entry": (
        (("filled",), ENTRY_L | BOUGHT, "entrada feita"),
        (("taken",), ENTRY_L | BOUGHT, "entrada feita"),
        (("targets",), ENTRY_L | ENTRY_REF, "entry targets"),  # Cornix: "Entry Targets:\n1) …"
        (("target",), ENTRY_L | ENTRY_REF, "entry targets"),  # Cornix: "Entry Target 1 ✅"
        (("zone",), ENTRY_L | ENTRY_REF, "entry zone"),
        (("range",), ENTRY_L | ENTRY_REF, "entry range"),
        (("price",), ENTRY_L | ENTRY_REF, "entry price"),
    ),
    "target": (
        (("price",), SUPPRESS, "target price"),
        (("prices",), SUPPRESS, "target price"),
    ),
    "price": (
        (("target",), SUPPRESS, "price target"),
        (("targets",), SUPPRESS, "price target"),
    ),
    "swing": ((("trade",), TYPE_P, "swing trade"),),
    "day": ((("trade",), TYPE_P, "day trade"),),
    "position": (
        (("trade",), TYPE_P, "position trade"),
        (("opened",), ENTRY_L | BOUGHT, "posição aberta"),
    ),
    "break": ((("even",), BREAKEVEN, "breakeven"),),
    "zero": ((("a", "zero"), BREAKEVEN, "0x0"), (("x", "zero"), BREAKEVEN, "0x0")),
    "0": ((("x", "0"), BREAKEVEN, "0x0"),),
    "stopped": ((("out",), STOPPED, "stopped out"),),
    "todos": ((("os", "alvos"), TARGET_L | FINAL, "todos os alvos"),),
    "all": (
        (("targets",), TARGET_L | FINAL, "all targets"),
        (("tps",), TARGET_L | FINAL, "all targets"),
        (("take", "profits"), TARGET_L | FINAL, "all targets"),
        (("take", "profit", "targets"), TARGET_L | FINAL, "all targets"),
    ),
}


def _build() -> dict[str, int]:
    table: dict[str, int] = {}
    for role, words in _WORDS.items():
        for word in words:
            table[word] = table.get(word, WORD) | role
    for role, symbols in _SYMBOLS.items():
        for symbol in symbols:
            table[symbol] = table.get(symbol, PUNCT) | role
    for head in PHRASES:
        table[head] = table.get(head, NUM if head.isdecimal() else WORD) | PHRASE
    return table


LEXICON: dict[str, int] = _build()
