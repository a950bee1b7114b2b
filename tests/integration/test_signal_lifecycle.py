"""Follow-ups linked to their signal and the status they add up to, against real PostgreSQL.

The poller classifies every post; ``tp_capital.apply_processing_results`` (sql/061) stores a
follow-up in ``tp_capital.signal_events`` linked by the post it replies to, else by channel and
asset to the most recent signal still open, and re-derives the signal's status, current stop
and result. Posts that look like a signal but lack a price are stored for review.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import TestDatabase
from tgstack.db import Database, DatabaseUnavailable
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.pipeline import IngestPipeline
from tgstack.models import MessageRecord
from tgstack.poller.worker import SignalWorker

CHANNEL = -1001649127710
OTHER = -1001000000042
T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
PETR4 = (
    "🟢Swing Trade\nAtivo: PETR4\nCompra: 36,50 a 37,20\nAlvo 1: 39,00\nAlvo 2: 41,00\nStop: 34,80"
)
VALE3 = "Ativo: VALE3\nEntrada: 61,20\nAlvo 1: 63,00\nStop: 59,90"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def database(db: TestDatabase) -> Iterator[Database]:
    with Database(db.app_dsn, max_size=8) as database:
        yield database


@pytest.fixture
def worker(database: Database) -> SignalWorker:
    return SignalWorker(database, consumer="lifecycle")


def post(
    database: Database,
    message_id: int,
    text: str,
    when: datetime,
    *,
    reply_to: int | None = None,
    channel: int = CHANNEL,
) -> None:
    record = MessageRecord.create(channel, message_id, when, text=text, reply_to_msg_id=reply_to)
    IngestPipeline(store=database, transient_errors=(DatabaseUnavailable,)).process_batch(
        [MessageEvent.new(record)]
    )


def edit(database: Database, message_id: int, text: str, when: datetime) -> None:
    assert database.apply_edit(
        MessageRecord.create(CHANNEL, message_id, when, text=text, edit_date=when)
    )


def rows(db: TestDatabase, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        return conn.execute(sql, params).fetchall()


def signal_state(db: TestDatabase, message_id: int) -> tuple[Any, ...]:
    found = rows(
        db,
        "SELECT status, current_stop, result FROM tp_capital.signals"
        " WHERE channel_id = %s AND message_id = %s",
        (CHANNEL, message_id),
    )
    assert len(found) == 1
    return found[0]


def event_link(db: TestDatabase, message_id: int) -> tuple[Any, ...]:
    found = rows(
        db,
        "SELECT e.kind, s.message_id, e.linked_by, e.retired_at IS NOT NULL"
        " FROM tp_capital.signal_events e LEFT JOIN tp_capital.signals s ON s.id = e.signal_id"
        " WHERE e.channel_id = %s AND e.message_id = %s",
        (CHANNEL, message_id),
    )
    assert len(found) == 1
    return found[0]


def test_a_reply_links_the_follow_up_to_the_signal_it_answers(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    post(database, 1, PETR4, at(0))
    post(database, 2, PETR4.replace("36,50", "36,00"), at(1))  # a newer PETR4 signal
    post(database, 3, "Alvo 1 atingido ✅", at(30), reply_to=1)
    worker.drain()

    assert event_link(db, 3) == ("target_hit", 1, "reply", False)
    assert signal_state(db, 1) == ("target_1", Decimal("34.80"), None)
    assert signal_state(db, 2) == ("open", Decimal("34.80"), None)


def test_a_reply_to_a_follow_up_reaches_the_same_signal(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    post(database, 1, PETR4, at(0))
    post(database, 2, "Alvo 1 atingido ✅", at(30), reply_to=1)
    post(database, 3, "Stop movido para a entrada", at(31), reply_to=2)
    worker.drain()

    assert event_link(db, 3) == ("stop_moved", 1, "reply", False)
    # entry is the middle of the entry range, 36,50 a 37,20
    assert signal_state(db, 1) == ("target_1", Decimal("36.85"), None)


def test_without_a_reply_the_most_recent_open_signal_of_the_asset_is_chosen(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    post(database, 1, PETR4, at(0))
    post(database, 2, VALE3, at(1))
    post(database, 3, PETR4.replace("Alvo 2: 41,00", "Alvo 2: 42,00"), at(2))
    post(database, 4, "PETR4 stopado ❌", at(10))
    post(database, 5, "PETR4: alvo 1 atingido!", at(20))  # the newest is stopped: the older one
    post(database, 6, "VALE3 alvo 1 batido", at(21), channel=OTHER)  # another channel
    worker.drain()

    assert event_link(db, 4) == ("stopped", 3, "asset", False)
    assert event_link(db, 5) == ("target_hit", 1, "asset", False)
    assert signal_state(db, 3) == ("stopped", Decimal("34.80"), None)
    assert signal_state(db, 1) == ("target_1", Decimal("34.80"), None)
    assert signal_state(db, 2) == ("open", Decimal("59.90"), None)
    other = rows(
        db,
        "SELECT signal_id, linked_by FROM tp_capital.signal_events WHERE channel_id = %s",
        (OTHER,),
    )
    assert other == [(None, None)]


def test_a_signal_older_than_the_window_is_not_linked(db: TestDatabase, database: Database) -> None:
    worker = SignalWorker(database, consumer="lifecycle", link_window=timedelta(hours=24))
    post(database, 1, PETR4, at(0))
    post(database, 2, "PETR4 stopado", at(25 * 60))
    worker.drain()

    assert event_link(db, 2) == ("stopped", None, None, False)
    assert signal_state(db, 1) == ("open", Decimal("34.80"), None)
    assert database.unlinked_signal_events() == 0  # posted long before the last 24 hours


def test_the_status_follows_the_events_in_post_order(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    post(database, 1, PETR4, at(0))
    post(database, 2, "PETR4 alvo 2 atingido 🎯🎯", at(40))
    post(database, 3, "PETR4 alvo 1 atingido 🎯", at(30))  # processed after, posted before
    post(database, 4, "PETR4: stop ajustado para 38,20", at(41))
    worker.drain()
    assert signal_state(db, 1) == ("target_2", Decimal("38.20"), None)

    post(database, 5, "Encerramos PETR4 com lucro", at(50))
    post(database, 6, "PETR4 stopado", at(60))  # after the close: kept, changes nothing
    worker.drain()
    assert signal_state(db, 1) == ("closed", Decimal("38.20"), "gain")
    events = rows(
        db,
        "SELECT message_id FROM tp_capital.signal_events e"
        " WHERE signal_id = (SELECT id FROM tp_capital.signals WHERE message_id = 1)"
        " ORDER BY telegram_date",
    )
    assert events == [(3,), (2,), (4,), (5,)]  # 6 found no open PETR4 signal
    assert event_link(db, 6) == ("stopped", None, None, False)


def test_a_follow_up_processed_before_its_signal_is_linked_when_the_signal_arrives(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    post(database, 2, "Alvo 1 atingido ✅", at(30), reply_to=1)
    post(database, 3, "PETR4 cancelado", at(31))
    worker.drain()
    assert event_link(db, 2) == ("target_hit", None, None, False)
    assert database.unlinked_signal_events() == 0  # T0 is not in the last 24 hours

    post(database, 1, PETR4, at(0))
    worker.drain()
    assert event_link(db, 2) == ("target_hit", 1, "reply", False)
    assert event_link(db, 3) == ("cancelled", 1, "asset", False)
    assert signal_state(db, 1) == ("cancelled", Decimal("34.80"), None)


def test_edits_re_derive_and_a_deleted_follow_up_is_retired(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    post(database, 1, PETR4, at(0))
    post(database, 2, "PETR4 stopado", at(30))
    worker.drain()
    assert signal_state(db, 1)[0] == "stopped"

    edit(database, 2, "PETR4 alvo 1 atingido ✅", at(31))  # the channel corrects itself
    worker.drain()
    assert event_link(db, 2) == ("target_hit", 1, "asset", False)
    assert signal_state(db, 1)[0] == "target_1"

    edit(database, 1, PETR4.replace("Stop: 34,80", "Stop: 35,10"), at(32))
    worker.drain()
    assert signal_state(db, 1) == ("target_1", Decimal("35.10"), None)

    database.soft_delete(CHANNEL, [2])
    worker.poll_once()
    assert event_link(db, 2) == ("target_hit", 1, "asset", True)
    assert signal_state(db, 1) == ("open", Decimal("35.10"), None)

    edit(database, 1, "Bom dia, pessoal! Hoje sem operações.", at(33))  # no longer a signal
    worker.drain()
    retired = rows(db, "SELECT retired_at IS NOT NULL FROM tp_capital.signals")
    assert retired == [(True,)]


def test_an_edit_that_turns_a_follow_up_into_chatter_retires_its_event(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    post(database, 1, PETR4, at(0))
    post(database, 2, "PETR4 cancelado", at(30))
    worker.drain()
    assert signal_state(db, 1)[0] == "cancelled"

    edit(database, 2, "Bom dia a todos 👋", at(31))
    worker.drain()
    assert event_link(db, 2) == ("cancelled", 1, "asset", True)
    assert signal_state(db, 1) == ("open", Decimal("34.80"), None)


def test_a_post_that_lacks_a_price_is_kept_for_review_until_an_edit_completes_it(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    post(database, 1, "Ativo: PETR4\nEntrada: \nAlvo: 40\nStop: 36", at(0))
    stats = worker.drain()
    assert (stats.processed, stats.signals) == (1, 0)
    review = rows(db, "SELECT asset, missing, retired_at IS NULL FROM tp_capital.signal_reviews")
    assert review == [("PETR4", ["entry"], True)]

    edit(database, 1, "Ativo: PETR4\nEntrada: 37,50\nAlvo: 40\nStop: 36", at(5))
    worker.drain()
    assert rows(db, "SELECT retired_at IS NULL FROM tp_capital.signal_reviews") == [(False,)]
    assert signal_state(db, 1) == ("open", Decimal("36"), None)


def test_replaying_a_batch_changes_nothing(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    post(database, 1, PETR4, at(0))
    post(database, 2, "PETR4 alvo 1 atingido", at(30))
    post(database, 3, "Ativo: VALE3 alvo 70 stop 60", at(31))
    worker.drain()
    query = "SELECT " + ", ".join(
        f"(SELECT array_agg(to_jsonb(t) - 'updated_at' ORDER BY id) FROM tp_capital.{table} t)"
        for table in ("signals", "signal_events", "signal_reviews")
    )
    before = rows(db, query)
    with psycopg.connect(db.direct_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE telegram_gateway.messages SET processing_state = 'pending',"
            " claimed_by = NULL, claim_expires_at = NULL"
        )
    assert worker.drain().processed == 3
    assert rows(db, query) == before


def test_pollers_racing_on_one_channel_link_every_follow_up(
    db: TestDatabase, database: Database
) -> None:
    """Signals and their follow-ups spread over 4 pollers: every follow-up ends linked."""
    assets = ["PETR4", "VALE3", "ITUB4", "BBAS3", "WEGE3", "ABEV3", "MGLU3", "B3SA3"]
    message_id = 0
    for minute, asset in enumerate(assets * 5):
        message_id += 1
        post(database, message_id, PETR4.replace("PETR4", asset), at(minute * 10))
        message_id += 1
        post(database, message_id, f"{asset} alvo 1 atingido ✅", at(minute * 10 + 1))
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            with Database(db.app_dsn, max_size=2) as own:
                SignalWorker(own, consumer=name, batch_size=7).drain()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"racer-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    unlinked = rows(db, "SELECT count(*) FROM tp_capital.signal_events WHERE signal_id IS NULL")
    assert unlinked == [(0,)]
    # each follow-up belongs to the signal posted a minute before it
    wrong = rows(
        db,
        "SELECT count(*) FROM tp_capital.signal_events e JOIN tp_capital.signals s"
        " ON s.id = e.signal_id WHERE s.message_id <> e.message_id - 1",
    )
    assert wrong == [(0,)]
    statuses = rows(db, "SELECT status, count(*) FROM tp_capital.signals GROUP BY 1")
    assert statuses == [("target_1", 40)]


def test_the_sample_channel_ends_with_its_petr4_trade_closed_in_gain(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    """samples/channel-sample.jsonl (what `make demo` posts): a PETR4 signal, a partial at
    target 1 with the stop moved to the entry, then a close with a profit."""
    sample = Path(__file__).resolve().parents[2] / "samples" / "channel-sample.jsonl"
    for line in sample.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        when = datetime.fromisoformat(item["date"]).astimezone(UTC)
        post(database, item["message_id"], item["text"], when, channel=item["channel_id"])
    worker.drain()

    trades = rows(
        db,
        "SELECT s.message_id, s.status, s.current_stop, s.result,"
        " array_agg(e.message_id ORDER BY e.telegram_date)"
        " FROM tp_capital.signals s JOIN tp_capital.signal_events e ON e.signal_id = s.id"
        " GROUP BY s.id",
    )
    assert trades == [(1002, "closed", Decimal("36.85"), "gain", [1007, 1019])]
    assert str(trades[0][2]) == "36.85"  # the middle of 36,50 a 37,20, as the API shows it


def test_deleting_the_follow_up_that_ended_a_signal_gives_it_back_its_later_follow_ups(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    post(database, 1, PETR4, at(0))
    post(database, 2, PETR4.replace("36,50", "36,00"), at(1))
    post(database, 3, "PETR4 stopado", at(10))
    post(database, 4, "PETR4 alvo 1 atingido", at(20))
    worker.drain()
    assert (event_link(db, 3)[1], event_link(db, 4)[1]) == (2, 1)

    database.soft_delete(CHANNEL, [3])
    worker.poll_once()
    assert event_link(db, 4) == ("target_hit", 2, "asset", False)
    assert signal_state(db, 2)[0] == "target_1"
    assert signal_state(db, 1)[0] == "open"


def test_a_reply_chain_processed_backwards_ends_linked_to_its_signal(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    post(database, 3, "Stop na entrada", at(31), reply_to=2)
    worker.drain()
    post(database, 2, "Alvo 1 atingido ✅", at(30), reply_to=1)
    worker.drain()
    assert (event_link(db, 2)[1], event_link(db, 3)[1]) == (None, None)

    post(database, 1, PETR4, at(0))
    worker.drain()
    assert event_link(db, 2) == ("target_hit", 1, "reply", False)
    assert event_link(db, 3) == ("stop_moved", 1, "reply", False)
    assert signal_state(db, 1) == ("target_1", Decimal("36.85"), None)


def test_deleting_a_signal_row_leaves_its_follow_ups_unlinked(
    db: TestDatabase, database: Database, worker: SignalWorker
) -> None:
    """What a cleanup tool (the load test's, a restore drill) does: the rows go, nothing fails."""
    post(database, 1, PETR4, at(0))
    post(database, 2, "Alvo 1 atingido ✅", at(30), reply_to=1)
    worker.drain()
    with psycopg.connect(db.app_dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("DELETE FROM tp_capital.signals")
    assert event_link(db, 2) == ("target_hit", None, "reply", False)
