"""Whatever order posts, edits and deletions arrive in, the lifecycle ends settled.

``apply_processing_results`` keeps links and statuses up to date incrementally: it links a
follow-up when it arrives, re-links the follow-ups a new, edited or retired signal concerns,
and derives again only the signals whose follow-ups changed (sql/063: a signal new in the
batch is not derived unless a follow-up links to it). The invariant behind all of that: once
the queue is drained, recomputing any link (``relink_signal_event``) or any status
(``derive_signal_status``) from scratch changes nothing.

Hypothesis draws a channel's history (signals and follow-ups of two assets, replies, edits
that turn one kind of post into another, deletions), ingests it in a random order with the
poller draining at random points, and checks the invariant on the real database.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TestDatabase
from tgstack.db import Database, DatabaseUnavailable
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.pipeline import IngestPipeline
from tgstack.models import MessageRecord
from tgstack.poller.worker import SignalWorker

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
ASSETS = ("PETR4", "VALE3")


def signal_text(asset: str, stop: int) -> str:
    return (
        f"Swing Trade\nAtivo: {asset}\nCompra: 36,50 a 37,20\nAlvo 1: 39,00\nAlvo 2: 41,00"
        f"\nStop: {stop},80"
    )


FOLLOW_UPS = (
    "{asset} alvo 1 atingido",
    "{asset} alvo 2 atingido 🎯🎯",
    "{asset} stopado",
    "{asset} cancelado",
    "Encerramos {asset} com lucro",
    "{asset}: stop ajustado para 38,20",
    "Alvo 1 atingido ✅",  # no asset: linked only by a reply
    "Stop na entrada",
)
CHATTER = "Bom dia, pessoal! Hoje sem operações."

texts = st.one_of(
    st.builds(signal_text, st.sampled_from(ASSETS), st.integers(30, 35)),
    st.builds(
        lambda template, asset: template.format(asset=asset),
        st.sampled_from(FOLLOW_UPS),
        st.sampled_from(ASSETS),
    ),
    st.just(CHATTER),
)


@dataclass(frozen=True)
class Post:
    message_id: int
    minute: int
    text: str
    reply_to: int | None


@dataclass(frozen=True)
class Change:
    """An edit (new text) or, with no text, a deletion, of an earlier post."""

    message_id: int
    text: str | None


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Post], list[Post | Change], list[bool]]:
    count = draw(st.integers(2, 12))
    posts: list[Post] = []
    minute = 0
    for message_id in range(1, count + 1):
        minute += draw(st.integers(1, 600))
        replies = st.integers(1, message_id - 1) if message_id > 1 else st.nothing()
        reply_to = draw(st.one_of(st.none(), replies))
        posts.append(Post(message_id, minute, draw(texts), reply_to))
    changes = draw(
        st.lists(
            st.builds(Change, st.integers(1, count), st.one_of(st.none(), texts)), max_size=4
        )
    )
    arrivals: list[Post | Change] = draw(st.permutations(posts)) + changes
    drains = draw(st.lists(st.booleans(), min_size=len(arrivals), max_size=len(arrivals)))
    return posts, arrivals, drains


@pytest.fixture
def database(db: TestDatabase) -> Iterator[Database]:
    with Database(db.app_dsn, max_size=4) as database:
        yield database


def unsettled(db: TestDatabase, channel: int) -> tuple[list[int], list[int]]:
    """Follow-ups whose link, then signals whose status, a recomputation would change.

    Both functions write, so they run in a transaction that is rolled back.
    """
    with psycopg.connect(db.superuser_dsn) as conn:
        relinked = conn.execute(
            "SELECT message_id FROM tp_capital.signal_events"
            " WHERE channel_id = %s AND retired_at IS NULL"
            " AND cardinality(tp_capital.relink_signal_event(id, interval '14 days')) > 0"
            " ORDER BY message_id",
            (channel,),
        ).fetchall()
        rederived = conn.execute(
            "SELECT message_id FROM tp_capital.signals"
            " WHERE channel_id = %s AND tp_capital.derive_signal_status(id)"
            " ORDER BY message_id",
            (channel,),
        ).fetchall()
        conn.rollback()
    return [row[0] for row in relinked], [row[0] for row in rederived]


def describe(arrivals: list[Post | Change], drains: list[bool]) -> str:
    """The arrivals, one a line, as a failure message."""
    lines = []
    for arrival, drain in zip(arrivals, drains, strict=True):
        if isinstance(arrival, Post):
            what = f"post {arrival.message_id} at +{arrival.minute} min"
            what += f" replying to {arrival.reply_to}" if arrival.reply_to else ""
            what += f": {arrival.text!r}"
        elif arrival.text is None:
            what = f"delete {arrival.message_id}"
        else:
            what = f"edit {arrival.message_id} into {arrival.text!r}"
        lines.append(what + (" | drain" if drain else ""))
    return "\n".join(lines)


def test_links_and_statuses_are_settled_after_any_arrival_order(
    db: TestDatabase, database: Database
) -> None:
    channels = itertools.count(-1001000000000, -1)
    worker = SignalWorker(database, consumer="settled")
    ingest = IngestPipeline(store=database, transient_errors=(DatabaseUnavailable,))

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(histories())
    def check(history: tuple[list[Post], list[Post | Change], list[bool]]) -> None:
        posts, arrivals, drains = history
        channel = next(channels)  # every example on a channel of its own
        minute_of = {post.message_id: post.minute for post in posts}
        for step, (arrival, drain) in enumerate(zip(arrivals, drains, strict=True)):
            if isinstance(arrival, Post):
                record = MessageRecord.create(
                    channel,
                    arrival.message_id,
                    T0 + timedelta(minutes=arrival.minute),
                    text=arrival.text,
                    reply_to_msg_id=arrival.reply_to,
                )
                ingest.process_batch([MessageEvent.new(record)])
            elif arrival.text is None:
                database.soft_delete(channel, [arrival.message_id])
            else:
                when = T0 + timedelta(minutes=minute_of[arrival.message_id])
                database.apply_edit(
                    MessageRecord.create(
                        channel,
                        arrival.message_id,
                        when,
                        text=arrival.text,
                        edit_date=when + timedelta(seconds=step + 1),
                    )
                )
            if drain:
                worker.drain()
        worker.drain()
        assert unsettled(db, channel) == ([], []), describe(arrivals, drains)

    check()
