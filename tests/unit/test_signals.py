"""The signal parser over every documented format, and over text that is not a signal."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tgstack.gateway.synthetic import _price
from tgstack.signals import PriceError, Signal, parse_price, parse_signal

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
