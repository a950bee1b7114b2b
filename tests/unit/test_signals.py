"""The signal parser and follow-up classifier over every documented format, and over text that
is not a signal (the golden corpus is tests/unit/test_signal_corpus.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tgstack.gateway.synthetic import _price
from tgstack.signals import (
    KINDS,
    Classification,
    PriceError,
    Signal,
    classify,
    explain,
    parse_price,
    parse_signal,
)
from tgstack.signals.lexicon import LEXICON, PHRASES
from tgstack.signals.normalise import normalise
from tgstack.signals.scanner import scan
from tgstack.signals.tickers import ticker_shape

D = Decimal


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("36,50", D("36.50")),
        ("36.50", D("36.50")),
        ("1.250,50", D("1250.50")),
        ("1,250.50", D("1250.50")),
        ("1.234.567,89", D("1234567.89")),
        ("125.000", D("125000")),
        ("0.125", D("0.125")),
        ("5,5", D("5.5")),
        ("42", D("42")),
        ("12,", D("12")),
    ],
)
def test_prices_are_read_exactly(text: str, expected: Decimal) -> None:
    assert parse_price(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "0", "0,00", ",5"])
def test_non_prices_are_rejected(text: str) -> None:
    with pytest.raises(PriceError):
        parse_price(text)


@given(st.decimals(min_value=D("0.01"), max_value=D("9999999.99"), places=2))
def test_brazilian_formatted_price_round_trips(value: Decimal) -> None:
    assert parse_price(_price(value)) == value


SWING = """🟢Swing Trade
Ativo: PETR4
Compra: 36,50 a 37,20
Alvo 1: 39,00
Alvo 2: 41,50
Alvo final: 44,00
Stop: 34,80"""


def test_portuguese_swing_trade_with_range() -> None:
    assert parse_signal(SWING) == Signal(
        asset="PETR4",
        signal_type="swing_trade",
        buy_min=D("36.50"),
        buy_max=D("37.20"),
        target_1=D("39.00"),
        target_2=D("41.50"),
        target_final=D("44.00"),
        stop=D("34.80"),
    )


def test_day_trade_with_papel_entrada_ate_and_alvo_geral() -> None:
    text = (
        "🔵Day Trade\nPapel: vale3\nEntrada: 61,10 até 61,40\n"
        "Alvo 1: 62,00\nAlvo geral: 63,50\nStop: 60,20"
    )
    signal = parse_signal(text)
    assert signal is not None
    assert (signal.asset, signal.signal_type) == ("VALE3", "day_trade")
    assert (signal.buy_min, signal.buy_max) == (D("61.10"), D("61.40"))
    assert signal.target_2 is None
    assert signal.target_final == D("63.50")


def test_english_scalping_with_ticker_buy_tp_sl_and_dash_range() -> None:
    text = (
        "⚡️Scalping\nTicker: WINZ25\nBuy: 125.000 - 125.150\n"
        "TP1: 125.400\nTP2: 125.600\nSL: 124.800"
    )
    signal = parse_signal(text)
    assert signal == Signal(
        asset="WINZ25",
        signal_type="scalping",
        buy_min=D("125000"),
        buy_max=D("125150"),
        target_1=D("125400"),
        target_2=D("125600"),
        target_final=None,
        stop=D("124800"),
    )


def test_target_n_and_stop_loss_keywords_mixed_case_and_crlf() -> None:
    text = (
        "SWING TRADE\r\nATIVO: itub4\r\nCOMPRA: 1.250,50\r\n"
        "Target 1: 1.300,00\r\nstop loss: 1.200,00\r\n"
    )
    signal = parse_signal(text)
    assert signal is not None
    assert signal.asset == "ITUB4"
    assert signal.buy_min == signal.buy_max == D("1250.50")
    assert signal.target_1 == D("1300.00")
    assert signal.stop == D("1200.00")


def test_emoji_and_bullets_before_keywords_and_reversed_range() -> None:
    text = (
        "🟢Swing Trade\n📈 Ativo: BBAS3\n💰 Compra: 28,90 a 28,10\n🎯 Alvo 1: 30,00\n❌ Stop: 27,00"
    )
    signal = parse_signal(text)
    assert signal is not None
    assert (signal.buy_min, signal.buy_max) == (D("28.10"), D("28.90"))
    assert signal.target_1 == D("30.00")
    assert signal.stop == D("27.00")


def test_third_target_becomes_final_when_no_final_is_named() -> None:
    text = "Ativo: ABEV3\nCompra: 12,00\nAlvo 1: 12,50\nAlvo 2: 13,00\nAlvo 3: 13,80"
    signal = parse_signal(text)
    assert signal is not None
    assert signal.target_final == D("13.80")


def test_signal_type_is_optional() -> None:
    signal = parse_signal("Ativo: PRIO3\nCompra: 40,00")
    assert signal is not None
    assert signal.signal_type is None


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "Bom dia, pessoal! Mercado abrindo em alta hoje.",
        "🟢Swing Trade\nCompra: 36,50",  # no asset
        "🟢Swing Trade\nAtivo: PETR4\nAlvo 1: 39,00",  # no entry price
        "Ativo: PETR4\nCompra: amanhã",  # entry is not a price
        "Parcial realizada no alvo 1, stop no preço de entrada.",
    ],
)
def test_text_that_is_not_a_signal_gives_none(text: str | None) -> None:
    assert parse_signal(text) is None


@given(st.text())
def test_parser_never_raises_on_arbitrary_text(text: str) -> None:
    result = parse_signal(text)
    assert result is None or result.buy_min <= result.buy_max
    assert classify(text).kind in KINDS


def test_cli_prints_json_signal_or_null() -> None:
    def run(text: str) -> object:
        out = subprocess.run(
            [sys.executable, "-m", "tgstack", "signals", "parse"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        return json.loads(out)

    assert run(SWING) == {
        "asset": "PETR4",
        "signal_type": "swing_trade",
        "buy_min": 36.5,
        "buy_max": 37.2,
        "target_1": 39.0,
        "target_2": 41.5,
        "target_final": 44.0,
        "stop": 34.8,
    }
    assert run("só conversa") is None


# --- the forms the line-anchored parser missed ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # several labelled fields on one line
            "Ativo: PETR4 | Compra: 36,50 | Alvo: 38,90 | Stop: 34,80",
            ("PETR4", D("36.50"), D("36.50"), D("38.90"), D("34.80")),
        ),
        (  # labels followed by their values without a colon
            "Ativo VALE3\nCompra 60,80 a 61,20\nAlvo 1 63,50\nStop 58,90",
            ("VALE3", D("60.80"), D("61.20"), D("63.50"), D("58.90")),
        ),
        (  # a range in words
            "Papel: GGBR4\nCompra de 18,40 até 18,75\nAlvo: 19,60\nStop: 17,70",
            ("GGBR4", D("18.40"), D("18.75"), D("19.60"), D("17.70")),
        ),
        (  # the ticker before the entry label, a compact range
            "PETR4 compra 36,50/37,20 alvo 39 stop 34,80",
            ("PETR4", D("36.50"), D("37.20"), D("39"), D("34.80")),
        ),
        (  # mixed-case keywords on one line
            "SWING trade: ATIVO petr4 COMPRA 36,40 alvo 38,90 STOP 34,90",
            ("PETR4", D("36.40"), D("36.40"), D("38.90"), D("34.90")),
        ),
        (  # R$ everywhere
            "Ativo: VALE3 | Compra: R$61,10 a R$ 61,40 | Alvo: R$63,00 | Stop: R$ 59,40",
            ("VALE3", D("61.10"), D("61.40"), D("63.00"), D("59.40")),
        ),
    ],
)
def test_labelled_fields_are_found_anywhere(
    text: str, expected: tuple[str, Decimal, Decimal, Decimal, Decimal]
) -> None:
    signal = parse_signal(text)
    assert signal is not None
    assert (signal.asset, signal.buy_min, signal.buy_max, signal.target_1, signal.stop) == expected


def test_exported_post_takes_its_type_from_the_header_block() -> None:
    text = (
        "📅 12/11/2025 — 10:32\n📢 Canal: TP Capital | Sinais\n🏷️ Tipo: Day Trade\n"
        "━━━━━━━━━━━━━━\nAtivo: BBDC4\nCompra: 13,90 a 14,00\nAlvo 1: 14,35\nStop: 13,70"
    )
    signal = parse_signal(text)
    assert signal is not None
    assert (signal.asset, signal.signal_type, signal.buy_min) == ("BBDC4", "day_trade", D("13.90"))


def test_abbreviated_upper_end_of_a_range_shares_the_integer_part() -> None:
    signal = parse_signal("WEGE3 compra 38,50/70 alvo 39,40 stop 38,05")
    assert signal is not None
    assert (signal.buy_min, signal.buy_max) == (D("38.50"), D("38.70"))


def test_a_target_list_fills_the_numbered_targets_and_the_third_is_final() -> None:
    signal = parse_signal("Ativo: GGBR4\nCompra: 18,40\nAlvos: 19,60 / 20,40 / 21,30")
    assert signal is not None
    assert (signal.target_1, signal.target_2, signal.target_final) == (
        D("19.60"),
        D("20.40"),
        D("21.30"),
    )


@pytest.mark.parametrize(
    "text",
    [
        "Buy PETR4 at 36.50? Analysts are split.",  # a question gives no order
        "Hoje teve muita compra de BBDC4 em 13,90, fluxo estrangeiro forte.",  # a noun
        "BTG eleva preço-alvo de PETR4 para R$ 45,00 e mantém recomendação de compra.",
        "PETR4 subiu 3,2% hoje e fechou a 38,45, maior alta desde agosto.",
    ],
)
def test_chatter_with_tickers_and_prices_is_not_a_signal(text: str) -> None:
    assert classify(text).kind == "chatter"


# --- Unicode the channels use ------------------------------------------------------------


def _math_bold(text: str) -> str:
    def one(c: str) -> str:
        if "A" <= c <= "Z":
            return chr(0x1D400 + ord(c) - 65)
        if "0" <= c <= "9":
            return chr(0x1D7CE + ord(c) - 48)
        return c

    return "".join(one(c) for c in text)


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@pytest.mark.parametrize(
    ("dressed", "plain"),
    [
        (_math_bold("PETR4"), "PETR4"),
        ("\U0001d443\U0001d438\U0001d447\U0001d445" + "4", "PETR4"),  # mathematical italic
        ("36\u202450", "36.50"),  # ONE DOT LEADER
        ("Compra:\u00a036,50", "Compra: 36,50"),  # no-break space
        ("125\u2009300", "125300"),  # thin space between digit groups
        ("125\u202f300", "125300"),  # narrow no-break space between digit groups
        (_full_width("36,50"), "36,50"),
        ("Ati\u200bvo", "Ativo"),  # zero-width space
        ("**Ativo:** __PETR4__", "Ativo:   PETR4  "),
        ("stop-loss", "stop loss"),
        ("1\u00ba alvo", "1o alvo"),
    ],
)
def test_normalise_folds_the_unicode_tricks(dressed: str, plain: str) -> None:
    assert normalise(dressed) == plain


def test_a_post_in_mathematical_bold_with_one_dot_leader_prices_parses() -> None:
    text = f"Ativo: {_math_bold('PETR4')}\nCompra: 36\u202450\nStop: 34\u202480"
    signal = parse_signal(text)
    assert signal is not None
    assert (signal.asset, signal.buy_min, signal.stop) == ("PETR4", D("36.50"), D("34.80"))


# --- B3 tickers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "shape"),
    [
        ("PETR4", "stock"),
        ("VALE3", "stock"),
        ("B3SA3", "stock"),
        ("TAEE11", "unit"),
        ("BOVA11", "unit"),
        ("AAPL34", "bdr"),
        ("M1TA34", "bdr"),
        ("PETRJ290", "option"),
        ("BBASK45", "option"),
        ("VALEX65W2", "option"),
        ("BOVAW32", "option"),
        ("WINFUT", "future"),
        ("WDOFUT", "future"),
        ("WINZ25", "future"),
        ("DI1F27", "future"),
        ("IBOV", None),
        ("PETR", None),
        ("A1234", None),
        ("PETR4X", None),
    ],
)
def test_b3_ticker_shapes(word: str, shape: str | None) -> None:
    assert ticker_shape(word) == shape


@pytest.mark.parametrize(
    "ticker", ["PETRJ290", "BBASK45", "VALEX65W2", "WINFUT", "WDOFUT", "WIN", "WDO"]
)
def test_every_ticker_shape_is_read_without_a_label(ticker: str) -> None:
    signal = parse_signal(f"{ticker} compra 1,05 alvo 1,45 stop 0,80")
    assert signal is not None
    assert signal.asset == ticker


def test_the_current_contract_without_its_month_is_a_ticker_in_capitals_only() -> None:
    assert classify("WIN compra 125.300 alvo 125.800 stop 125.100").asset == "WIN"
    assert scan("we win some, WIN and Win, wdo WDO").tickers == [4, 9]


# --- follow-ups ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Alvo 1 atingido ✅", {"kind": "target_hit", "asset": None, "target": 1, "stop": None}),
        (
            "PETR4 — alvo final atingido 🚀",
            {
                "kind": "target_hit",
                "asset": "PETR4",
                "target": "final",
                "stop": None,
            },
        ),
        (
            "TP2 hit, SL moved to entry",
            {
                "kind": "target_hit",
                "asset": None,
                "target": 2,
                "stop": "entry",
            },
        ),
        ("Stop movido para 37,50", {"kind": "stop_moved", "asset": None, "stop": 37.5}),
        ("VALE3 — stop no 0x0", {"kind": "stop_moved", "asset": "VALE3", "stop": "entry"}),
        ("Move SL to breakeven", {"kind": "stop_moved", "asset": None, "stop": "entry"}),
        ("Stopado ❌", {"kind": "stopped", "asset": None}),
        ("SL hit on ITUB4", {"kind": "stopped", "asset": "ITUB4"}),
        ("Encerrado com gain ✅", {"kind": "closed", "asset": None, "result": "gain"}),
        (
            "We closed the ITUB4 position at a small loss.",
            {
                "kind": "closed",
                "asset": "ITUB4",
                "result": "loss",
            },
        ),
        ("Sinal de PETR4 cancelado", {"kind": "cancelled", "asset": "PETR4"}),
        ("Signal cancelled.", {"kind": "cancelled", "asset": None}),
    ],
)
def test_follow_ups_are_classified_with_their_fields(
    text: str, expected: dict[str, object]
) -> None:
    assert classify(text).to_dict() == expected


def test_a_follow_up_that_repeats_the_signals_prices_is_a_follow_up() -> None:
    text = "PETR4 ✅ Alvo 1 atingido! Entrada: 36,50 → alvo 39,00 (+6,8%)"
    assert classify(text).kind == "target_hit"
    assert parse_signal(text) is None


def test_instructions_inside_a_signal_are_its_plan_not_events() -> None:
    text = (
        "Ativo: PETR4\nCompra: 37,10\nAlvo: 37,80\nStop: 36,70\n"
        "Após atingir o alvo 1, mover o stop para o preço de entrada."
    )
    assert classify(text).kind == "signal"


def test_a_condition_reports_nothing() -> None:
    assert classify("Se o alvo 1 for atingido, mover o stop para a entrada.").kind == "chatter"


def test_labels_and_a_ticker_without_an_entry_price_need_review() -> None:
    found = classify("Ativo: VALE3\nCompra: a mercado\nAlvo: 62,50\nStop: 60,40")
    assert found == Classification("needs_review", "VALE3", missing=("entry",))
    assert classify("Compra: 36,50\nAlvo: 39,00\nStop: 34,80").missing == ("asset",)


def test_classification_of_a_signal_carries_the_signal() -> None:
    found = classify(SWING)
    assert found.kind == "signal"
    assert found.signal == parse_signal(SWING)
    assert found.to_dict() == {"kind": "signal", **found.signal.to_json_dict()}  # type: ignore[union-attr]


def test_explain_names_the_words_of_each_field() -> None:
    shown = explain("PETR4 compra 36,50/37,20 alvo 39 stop 34,80")
    assert {(m["field"], m["words"], m["value"]) for m in shown["matches"]} >= {
        ("asset", "PETR4", "PETR4"),
        ("entry", "compra 36,50/37,20", "36.50 to 37.20"),
        ("target_1", "alvo 39", "39"),
        ("stop", "stop 34,80", "34.80"),
    }


# --- calls without an entry label, calls that are not the channel's, summaries --------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # a ticker opening its line, then a compact range: the entry
            "PETR4 37,50/38,00 alvo 40 stop 36",
            ("PETR4", D("37.50"), D("38.00"), D("40"), D("36")),
        ),
        ("#PETR4 37,50 🎯 40 ⛔ 36", ("PETR4", D("37.50"), D("37.50"), D("40"), D("36"))),
        ("$VALE3: 61.50 TP 64 SL 60", ("VALE3", D("61.50"), D("61.50"), D("64"), D("60"))),
        (  # the direction alone on its line, the price on another
            "Tipo: Compra\nAtivo: PETR4\nPreço: 37,50\nAlvo: 40\nStop: 36",
            ("PETR4", D("37.50"), D("37.50"), D("40"), D("36")),
        ),
        (  # a Cornix numbered list
            "#VALE3\nEntry Targets:\n1) 61.80\n2) 61.20\nTake-Profit Targets:\n1) 63.00\n"
            "2) 64.50\nStop Targets:\n1) 59.90",
            ("VALE3", D("61.20"), D("61.80"), D("63.00"), D("59.90")),
        ),
    ],
)
def test_an_entry_without_an_entry_label(
    text: str, expected: tuple[str, Decimal, Decimal, Decimal, Decimal]
) -> None:
    signal = parse_signal(text)
    assert signal is not None
    assert (signal.asset, signal.buy_min, signal.buy_max, signal.target_1, signal.stop) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Compra PETR4 alvo 40",
        "COMPRA VALE3 stop 58",
        "PETR4 compra — aguardando preço",
        "Compra PETR4 a mercado",
        "Buy VALE3, TP 64, entry TBA",
    ],
)
def test_a_direction_and_a_ticker_without_a_price_need_review(text: str) -> None:
    found = classify(text)
    assert (found.kind, found.missing) == ("needs_review", ("entry",))


@pytest.mark.parametrize(
    "text",
    [
        "VALE3 alvo 70 segundo o Itaú BBA, recomendação compra",
        "Itaú eleva preço-alvo de PETR4 para R$ 45",
        "PETR4 37,50 (+2%) hoje, alvo dos analistas 40",
        "Segundo o BTG, compra de PETR4 em 36,50 com alvo 40",
        "Morgan Stanley: compra em WEGE3 a 38,00, alvo 45",
        "UBS: VALE3 61,50 alvo 75 stop 55",
        "Seguimos posicionados em PETR4 (entrada 36,50), alvo 40, stop 35.",
        "PETR4 37,50 ▲ alvo técnico 40 ▼ suporte 36",
        "VALE3 62,10 (+1,5%) | alvo 64",
    ],
)
def test_a_reported_or_recalled_call_is_chatter(text: str) -> None:
    assert classify(text).kind == "chatter"


def test_a_disclaimer_or_a_company_name_does_not_make_a_call_reported() -> None:
    disclaimer = "PETR4 compra 36,50/37,20 alvo 39 stop 34,80\nNão é recomendação de compra."
    assert classify(disclaimer).kind == "signal"
    assert classify("BTG Pactual (BPAC11) compra 30,50 alvo 33 stop 29").asset == "BPAC11"
    assert classify("Segundo alvo: 41,00\nAtivo: PETR4\nCompra 37,50").kind == "signal"


@pytest.mark.parametrize(
    "text",
    [
        "📊 Resumo do dia\nPETR4 ✅ alvo 1\nVALE3 ✅ alvo 2\nITUB4 ❌ stop",
        "Semana: 5 alvos atingidos, 1 stop. PETR4, VALE3 e ITUB4 no gain.",
        "Daily recap: PETR4 TP1 ✅, VALE3 SL ❌, ITUB4 still open",
    ],
)
def test_events_of_several_tickers_are_a_summary(text: str) -> None:
    assert classify(text).kind == "chatter"


@pytest.mark.parametrize(
    "text",
    [
        "PETR4 — entrada 36,50 — alvo 42 — stop 34\nVALE3 — entrada 60,00 — alvo 68 — stop 57",
        "PETR4\nCompra: 37,50\nAlvo: 40\nStop: 36\n\nVALE3\nCompra: 61,80\nAlvo: 64\nStop: 60",
        "Sinais do dia:\nPETR4 37,50 alvo 40 stop 36\nVALE3 61,80 alvo 64 stop 60",
    ],
)
def test_several_calls_in_one_post_need_review_without_an_asset(text: str) -> None:
    assert classify(text) == Classification("needs_review", None, missing=("asset",))


@pytest.mark.parametrize(
    "text",
    [
        "#WEGE3 📈 Compramos a 38.20, alvos 39.50 e 40.80, stop 37.40",
        "Comprei WEGE3 a 38,20, alvo 39,50, stop 37,40",
        "Entramos em WEGE3 a 38,20. Alvo: 39,50. Stop: 37,40",
        "Compre WEGE3 em 38,20 | Alvo 39,50 | Stop 37,40",
        "Bought WEGE3 at 38.20, TP 39.50, SL 37.40",
        "We just bought WEGE3 @ 38.20, TP 39.50, SL 37.40",
        "Entrada feita em WEGE3 a 38,20\nAlvo 1: 39,50\nStop: 37,40",
        "Acabamos de comprar WEGE3 a 38,20. Alvo 39,50 / stop 37,40",
        "Comprem! WEGE3 a 38,20 alvo 39,50 stop 37,40",
    ],
)
def test_a_buy_the_channel_reports_or_orders_is_the_entry_beside_a_target_or_stop(
    text: str,
) -> None:
    signal = parse_signal(text)
    assert signal is not None
    assert (signal.asset, signal.buy_min, signal.buy_max, signal.target_1, signal.stop) == (
        "WEGE3",
        D("38.20"),
        D("38.20"),
        D("39.50"),
        D("37.40"),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a fill without a plan, a recap, a reminder, a question: no new signal
        ("Comprei PETR4 a 37,50", {"kind": "chatter"}),
        ("Entrada executada em PETR4 a 37,60 ✅", {"kind": "chatter"}),
        ("Lembrando: compramos PETR4 a 37,50, alvo 40, stop 36.", {"kind": "chatter"}),
        ("Comprando PETR4 a 37,50? Alvo 40?", {"kind": "chatter"}),
        (
            "Compramos PETR4 a 37,50 e vendemos a 39 ✅",
            {"kind": "closed", "asset": "PETR4", "result": "gain"},
        ),
        (
            "Comprei VALE3 a 61,20 e vendi a 60,10",
            {"kind": "closed", "asset": "VALE3", "result": "loss"},
        ),
        (
            "Compramos PETR4 a 37,50 e vendemos a 37,50",
            {"kind": "closed", "asset": "PETR4", "result": "breakeven"},
        ),
        (
            "Compramos PETR4 a 37,50 e já bateu o alvo 1 ✅",
            {"kind": "target_hit", "asset": "PETR4", "target": 1, "stop": None},
        ),
        (
            "Resumo: compramos PETR4 a 37,50 e vendemos a 39; compramos VALE3 a 61 e vendemos a 60",
            {"kind": "chatter"},
        ),
        ("PETR4 closed at 38.20, up 2.1% on the day.", {"kind": "chatter"}),
    ],
)
def test_a_buy_reported_in_a_follow_up_or_recap_is_no_new_signal(
    text: str, expected: dict[str, object]
) -> None:
    assert classify(text).to_dict() == expected


@pytest.mark.parametrize(
    ("text", "asset"),
    [
        ("MGLU3 opção MGLUL420 compra 0,42 alvo 0,70 stop 0,25", "MGLUL420"),
        ("PETR4 (call PETRJ290) compra 1,20 alvo 1,80 stop 0,90", "PETRJ290"),
        ("Opção de VALE3: VALEX65W2 entrada 2,10 alvo 2,80 stop 1,60", "VALEX65W2"),
        ("Ativo: VALE3\nOpção: VALEF620\nCompra: 0,95\nAlvo: 1,60\nStop: 0,55", "VALEF620"),
        ("#BOVA11 👉 BOVAX130 compra 2,10 alvo 3 stop 1,50", "BOVAX130"),
        # the entry written with the stock is the stock's
        ("PETR4 compra 37,50 alvo 40 stop 36. Para quem opera opções: PETRJ380", "PETR4"),
    ],
)
def test_an_option_named_with_its_underlying_is_the_asset(text: str, asset: str) -> None:
    signal = parse_signal(text)
    assert signal is not None
    assert signal.asset == asset


@pytest.mark.parametrize(
    ("text", "kind", "asset"),
    [
        ("MGLUL420 (MGLU3) bateu o alvo", "target_hit", "MGLUL420"),
        ("PETRJ290 (PETR4) atingiu o alvo 1 ✅", "target_hit", "PETRJ290"),
        ("VALEX65W2 da VALE3 bateu alvo final 🎯", "target_hit", "VALEX65W2"),
        ("Stop na PETRJ290 (PETR4) ❌", "stopped", "PETRJ290"),
        ("Desconsiderem a call PETRJ290 de PETR4", "cancelled", "PETRJ290"),
        ("Encerramos a opção ITUBL330 de ITUB4 com lucro de 40%", "closed", "ITUBL330"),
    ],
)
def test_a_follow_up_naming_an_option_and_its_underlying_is_the_options(
    text: str, kind: str, asset: str
) -> None:
    found = classify(text)
    assert (found.kind, found.asset) == (kind, asset)


_ROOTS = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=4, max_size=4).filter(
    lambda root: root not in {"ALVO", "GAIN", "LOSS", "STOP"}
)


@given(
    _ROOTS,
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWX"),
    st.integers(min_value=1, max_value=999),
    st.decimals(min_value=D("0.05"), max_value=D("9.99"), places=2),
)
def test_any_option_named_beside_its_underlying_is_the_asset(
    root: str, series: str, strike: int, premium: Decimal
) -> None:
    option = f"{root}{series}{strike}"
    levels = f"compra {_price(premium)} alvo {_price(premium * 2)} stop {_price(premium / 2)}"
    text = f"{root}3 opção {option} {levels}"
    signal = parse_signal(text)
    assert signal is not None, text
    assert (signal.asset, signal.buy_min) == (option, premium), text


@given(
    st.sampled_from(
        [
            "Compramos",
            "Comprei",
            "Entramos em",
            "Entrei em",
            "Compre",
            "Comprem",
            "Bought",
            "We bought",
            "Entrada feita em",
            "Compra feita:",
        ]
    ),
    st.decimals(min_value=D("0.05"), max_value=D("9999.99"), places=2),
)
def test_any_reported_or_ordered_buy_with_a_plan_is_the_entry(verb: str, value: Decimal) -> None:
    written = _price(value)
    signal = parse_signal(f"{verb} PETR4 a {written}, alvo {_price(value * 2)}, stop {written}")
    assert signal is not None, (verb, written)
    assert (signal.asset, signal.buy_min, signal.stop) == ("PETR4", value, value)
    assert classify(f"{verb} PETR4 a {written}").kind == "chatter" or verb.startswith("Compre")


def test_a_follow_ups_asset_is_the_ticker_beside_its_event() -> None:
    assert classify("Bom dia! VALE3 segue firme. PETR4 stopou.").asset == "PETR4"


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ("Encerrado ITUB4 com ganho de 3,2%", "gain"),
        ("Encerrado ITUB4 com perda de 1,5%", "loss"),
        ("Trade encerrado no alvo final 🚀", "gain"),
        ("Zeramos WINZ25 +250 pts", "gain"),
        ("#VALE3 encerrada -1,8% ❌", "loss"),
        ("Zeramos PETR4 antes do alvo 1, o cenário mudou.", None),
        ("closed at a loss", "loss"),
        ("Closed PETR4 at breakeven", "breakeven"),
    ],
)
def test_a_close_carries_the_result_it_states(text: str, result: str | None) -> None:
    found = classify(text)
    assert (found.kind, found.result) == ("closed", result)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("stop in breakeven on BBAS3", "stop_moved"),
        ("PETR4 stop 0x0", "stop_moved"),
        ("Stop: 36 ❌ PETR4", "stopped"),
        ("Não acionou, cancelado.", "cancelled"),
        ("Entry not triggered, cancelled", "cancelled"),
        ("Evento de amanhã, cancelado.", "chatter"),
        ("🎯 ALVO FINAL EM VALE3 🎯", "target_hit"),
        ("Próximo alvo 🎯", "chatter"),
        ("#PETR4 All entry targets achieved\nAverage Entry Price: 37.75", "chatter"),
    ],
)
def test_follow_ups_said_in_few_words(text: str, kind: str) -> None:
    assert classify(text).kind == kind


# --- properties --------------------------------------------------------------------------------

_WORDS = sorted(
    {
        *LEXICON,
        *PHRASES,
        "PETR4",
        "WINZ25",
        "BOVAW32",
        "R$",
        "36,50",
        "1.250,50",
        "0,85",
        "125.000",
        "1",
        "2",
        "%",
        "\n",
        "?",
        ":",
        "✅",
        "❌",
        "🎯",
        "0x0",
        "WIN",
        ")",
        "+4,2%",
        "-150",
        "#",
        "|",
        "1️⃣",
    }
)


@given(st.lists(st.sampled_from(_WORDS), max_size=40).map(" ".join))
def test_classify_never_raises_on_posts_made_of_known_words(text: str) -> None:
    found = classify(text)
    assert found.kind in KINDS
    if found.signal is not None:
        assert 0 < found.signal.buy_min <= found.signal.buy_max
    explain(text)


def _formats(value: Decimal) -> list[str]:
    integer, _, fraction = f"{value:.2f}".partition(".")
    brazilian = _price(value)
    return [
        brazilian,  # 1.250,50
        f"{int(integer):,}.{fraction}",  # 1,250.50
        f"{integer}\u2024{fraction}",  # 1250․50
        _full_width(brazilian),
        _math_bold(brazilian),
        "R$ " + brazilian,
        "R$" + brazilian,
    ]


@given(st.decimals(min_value=D("0.01"), max_value=D("9999999.99"), places=2))
def test_prices_round_trip_through_a_signal_in_every_format(value: Decimal) -> None:
    for written in _formats(value):
        signal = parse_signal(f"Ativo: PETR4\nCompra: {written}\nStop: {written}")
        assert signal is not None, written
        assert (signal.buy_min, signal.stop) == (value, value), written


def test_cli_classify_prints_one_object_and_explain_lists_matches() -> None:
    def run(*args: str, text: str) -> object:
        out = subprocess.run(
            [sys.executable, "-m", "tgstack", "signals", *args],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        return json.loads(out)

    assert run("classify", text="TP1 hit ✅") == {
        "kind": "target_hit",
        "asset": None,
        "target": 1,
        "stop": None,
    }
    assert run("classify", text="só conversa") == {"kind": "chatter"}
    shown = run("parse", "--explain", text=SWING)
    assert isinstance(shown, dict)
    assert shown["signal"]["asset"] == "PETR4"
    assert {"field": "asset", "words": "Ativo: PETR4", "value": "PETR4"} in shown["matches"]
    shown = run("classify", "--explain", text="Alvo 2 atingido")
    assert isinstance(shown, dict)
    assert shown["classification"]["target"] == 2
    assert shown["matches"][0]["words"] == "Alvo 2 atingido"
