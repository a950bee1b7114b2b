"""The poller's decision for one post, and the result it hands to the database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tgstack.models import MessageRecord, StoredMessage
from tgstack.poller.processing import decide, failed
from tgstack.signals.model import EVENT_KINDS

CHANNEL = -1001649127710
WHEN = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def stored(text: str) -> StoredMessage:
    record = MessageRecord.create(CHANNEL, 7, WHEN, text=text)
    return StoredMessage(record=record, status="published", processing_state="processing")


def test_a_signal_is_processed_with_its_exact_prices() -> None:
    result = decide(stored("Ativo: PETR4\nCompra: 36,50 a 37,20\nAlvo 1: 39,00\nStop: 34,80"))
    payload = result.to_json()
    assert (result.state, result.kind) == ("processed", "signal")
    assert payload["signal"]["buy_min"] == "36.50"
    assert payload["signal"]["stop"] == "34.80"
    assert (payload["event"], payload["review"]) == (None, None)


@pytest.mark.parametrize(
    ("text", "event"),
    [
        (
            "PETR4 alvo 2 atingido ✅",
            {
                "kind": "target_hit",
                "asset": "PETR4",
                "target": "2",
                "stop": None,
                "stop_ref": None,
                "result": None,
            },
        ),
        (
            "Stop movido para a entrada",
            {
                "kind": "stop_moved",
                "asset": None,
                "target": None,
                "stop": None,
                "stop_ref": "entry",
                "result": None,
            },
        ),
        (
            "PETR4: stop ajustado para 38,20",
            {
                "kind": "stop_moved",
                "asset": "PETR4",
                "target": None,
                "stop": "38.20",
                "stop_ref": None,
                "result": None,
            },
        ),
        (
            "VALE3 - encerrada com prejuízo de 2%",
            {
                "kind": "closed",
                "asset": "VALE3",
                "target": None,
                "stop": None,
                "stop_ref": None,
                "result": "loss",
            },
        ),
    ],
)
def test_a_follow_up_is_processed_with_its_event(text: str, event: dict[str, object]) -> None:
    result = decide(stored(text))
    payload = result.to_json()
    assert result.state == "processed"
    assert result.signal is None
    assert payload["event"] == event
    assert payload["review"] is None


def test_a_post_without_a_price_is_processed_for_review() -> None:
    payload = decide(stored("Ativo: PETR4\nEntrada: \nAlvo: 40\nStop: 36")).to_json()
    assert payload["state"] == "processed"
    assert payload["review"] == {"asset": "PETR4", "missing": ["entry"]}
    assert (payload["signal"], payload["event"]) == (None, None)


def test_chatter_is_ignored_with_nothing_to_store() -> None:
    payload = decide(stored("PETR4 sobe 3% hoje com o petróleo")).to_json()
    assert payload["state"] == "ignored"
    assert (payload["signal"], payload["event"], payload["review"]) == (None, None, None)


def test_a_failure_carries_no_classification() -> None:
    result = failed(stored("x").key, "boom" * 1000)
    assert result.kind is None
    assert len(result.to_json()["error"]) == 2000


@given(st.text(max_size=400))
def test_every_post_gets_exactly_one_consistent_result(text: str) -> None:
    result = decide(stored(text))
    payload = result.to_json()
    filled = [name for name in ("signal", "event", "review") if payload[name] is not None]
    if result.state == "ignored":
        assert (result.kind, filled) == ("chatter", [])
    else:
        assert len(filled) == 1
        kinds = {"signal": {"signal"}, "review": {"needs_review"}, "event": EVENT_KINDS}
        assert result.kind in kinds[filled[0]]
