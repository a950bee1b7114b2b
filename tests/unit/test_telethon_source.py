"""The Telethon source fed with real Telethon objects; only the network boundary is faked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY
from telethon import errors, events
from telethon.tl import types

from tests.telegram_fakes import BARE, CHANNEL, WHEN, FakeTelegram, MemoryStore, message
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.telethon_source import (
    BackfillPolicy,
    GatewayFatal,
    TelethonSource,
    record_from_message,
)
from tgstack.models import Watermark


def source_for(
    fake: FakeTelegram,
    store: MemoryStore | None = None,
    *,
    commit: bool = True,
    **kwargs: Any,
) -> tuple[TelethonSource, list[MessageEvent]]:
    """A source over ``fake`` whose events are received (and, with ``commit``, stored at once in
    ``store``, as a pipeline that keeps up would)."""
    received: list[MessageEvent] = []
    memory = store if store is not None else MemoryStore()

    def sink(event: MessageEvent) -> None:
        received.append(event)
        if commit:
            memory.commit(event)

    kwargs.setdefault("policy", BackfillPolicy(settle_seconds=0.3))
    source = TelethonSource(fake, [CHANNEL], sink, store=memory, **kwargs)  # type: ignore[arg-type]
    return source, received


def stored_live(store: MemoryStore, *messages: types.Message) -> None:
    for item in messages:
        store.commit(MessageEvent.new(record_from_message(item)))


def test_text_post_maps_to_a_record_with_marked_channel_id() -> None:
    record = record_from_message(message(5, "Ativo: PETR4", views=120))
    assert (record.channel_id, record.message_id, record.telegram_date) == (CHANNEL, 5, WHEN)
    assert record.text == "Ativo: PETR4"
    assert record.caption is None
    assert record.metadata == {"views": 120}


def test_media_post_text_is_stored_as_caption() -> None:
    photo = types.MessageMediaPhoto(photo=types.PhotoEmpty(id=99))
    record = record_from_message(message(6, "chart", media=photo, grouped_id=1234))
    assert record.text is None
    assert record.caption == "chart"
    assert record.media_type == "photo"
    assert record.media_refs == {"photo_id": 99}
    assert record.grouped_id == 1234


def test_a_reply_keeps_the_id_of_the_post_it_replies_to() -> None:
    reply = message(9, "Alvo 1 atingido ✅", reply_to=types.MessageReplyHeader(reply_to_msg_id=5))
    record = record_from_message(reply)
    assert record.reply_to_msg_id == 5
    assert record.thread_id is None
    assert record_from_message(message(10, "no reply")).reply_to_msg_id is None


def test_a_post_only_in_a_forum_topic_is_in_the_topic_and_replies_to_nothing() -> None:
    in_topic = types.MessageReplyHeader(forum_topic=True, reply_to_msg_id=100)
    record = record_from_message(message(120, "in the topic", reply_to=in_topic))
    assert record.thread_id == 100
    assert record.reply_to_msg_id is None


def test_a_reply_in_a_forum_topic_keeps_the_topic_and_the_post_replied_to() -> None:
    header = types.MessageReplyHeader(forum_topic=True, reply_to_msg_id=115, reply_to_top_id=100)
    record = record_from_message(message(121, "Alvo 1 atingido ✅", reply_to=header))
    assert record.thread_id == 100
    assert record.reply_to_msg_id == 115


def test_a_reply_to_a_post_of_another_chat_is_not_kept_as_a_reply() -> None:
    elsewhere = types.MessageReplyHeader(
        reply_to_msg_id=5, reply_to_peer_id=types.PeerChannel(BARE + 1)
    )
    here = types.MessageReplyHeader(reply_to_msg_id=5, reply_to_peer_id=types.PeerChannel(BARE))
    assert record_from_message(message(9, "quote", reply_to=elsewhere)).reply_to_msg_id is None
    assert record_from_message(message(9, "quote", reply_to=here)).reply_to_msg_id == 5


def test_a_reply_to_a_story_or_a_header_without_a_post_id_is_no_reply() -> None:
    story = types.MessageReplyStoryHeader(peer=types.PeerChannel(BARE), story_id=3)
    quoted = types.MessageReplyHeader(reply_from=types.MessageFwdHeader(date=WHEN))
    assert record_from_message(message(9, "story", reply_to=story)).reply_to_msg_id is None
    assert record_from_message(message(9, "quote", reply_to=quoted)).reply_to_msg_id is None


def test_a_reply_header_with_an_id_out_of_range_loses_the_reply_not_the_post() -> None:
    broken = types.MessageReplyHeader(reply_to_msg_id=0)
    record = record_from_message(message(9, "Alvo 1 atingido ✅", reply_to=broken))
    assert (record.message_id, record.text) == (9, "Alvo 1 atingido ✅")
    assert record.reply_to_msg_id is None


def test_live_events_reach_the_sink_as_new_edit_delete() -> None:
    fake = FakeTelegram([])
    source, received = source_for(fake)
    asyncio.run(source.start())
    assert {type(event) for _, event in fake.handlers} == {
        events.NewMessage,
        events.MessageEdited,
        events.MessageDeleted,
    }
    edited = message(8, "new text", edit_date=datetime(2026, 11, 2, 12, 5, tzinfo=UTC))
    asyncio.run(source.on_new_message(events.NewMessage.Event(message(8, "old text"))))
    asyncio.run(source.on_message_edited(events.MessageEdited.Event(edited)))
    asyncio.run(
        source.on_message_deleted(events.MessageDeleted.Event([8, 9], peer=types.PeerChannel(BARE)))
    )
    asyncio.run(
        source.on_message_deleted(events.MessageDeleted.Event([1], peer=types.PeerChannel(42)))
    )  # not our channel
    assert [(e.kind, e.message_ids) for e in received] == [
        ("new", (8,)),
        ("edit", (8,)),
        ("delete", (8, 9)),
    ]
    assert received[1].record is not None
    assert received[1].record.text == "new text"


def test_missing_session_fails_fast_with_a_clear_line() -> None:
    source, _ = source_for(FakeTelegram([], authorized=False))
    with pytest.raises(GatewayFatal, match="run `tgstack login` once"):
        asyncio.run(source.start())


@pytest.mark.parametrize(
    ("error", "explanation"),
    [
        (errors.AuthKeyUnregisteredError(request=None), "no longer registered"),
        (errors.SessionRevokedError(request=None), "revoked"),
        (errors.AuthKeyDuplicatedError(request=None), "used from two places"),
    ],
)
def test_revoked_session_is_fatal_and_explained(error: BaseException, explanation: str) -> None:
    source, _ = source_for(FakeTelegram([], auth_error=error))
    with pytest.raises(GatewayFatal, match=explanation):
        asyncio.run(source.start())


def service(message_id: int) -> types.MessageService:
    return types.MessageService(
        id=message_id,
        peer_id=types.PeerChannel(BARE),
        date=WHEN,
        action=types.MessageActionPinMessage(),
    )


def test_backfill_fills_the_holes_below_a_newer_stored_post_and_records_absent_ids() -> None:
    # 1, 2 and the live post 9 are stored; 4 was deleted, 6 is a service message.
    history = [message(i) for i in (1, 2, 3, 5, 7, 8, 9, 10)] + [service(6)]
    store = MemoryStore()
    fake = FakeTelegram(history)
    source, received = source_for(fake, store)
    asyncio.run(source.start())
    store.init_watermark(CHANNEL, 0)
    stored_live(store, message(1), message(2), message(9))
    assert asyncio.run(source.backfill()) == 5
    assert [e.message_ids[0] for e in received] == [3, 5, 7, 8, 10]
    assert {e.record.source for e in received if e.record} == {"backfill"}
    assert fake.ids_calls == [[3, 4, 5, 6, 7, 8, 10]]  # small holes: one getMessages call
    assert fake.iter_calls == []
    assert store.marks[CHANNEL].watermark == 10
    assert store.absent[CHANNEL] == set()  # 4 and 6 recorded, then covered by the watermark
    assert store.backfilled == [CHANNEL]


def test_backfill_pages_a_large_hole_oldest_first_and_resumes_after_a_flood_wait() -> None:
    history = [message(i) for i in range(1, 301) if i % 50]  # every 50th id deleted
    fake = FakeTelegram(history, flood_after=150)
    waits: list[tuple[float, str]] = []
    source, received = source_for(fake, on_flood_wait=lambda s, d: waits.append((s, d)))
    asyncio.run(source.start())
    assert asyncio.run(source.backfill()) == len(history)
    assert [e.message_ids[0] for e in received] == [m.id for m in history]  # each once, in order
    assert waits == [(1, f"backfill {CHANNEL}")]
    # paging went on after the last post received, not from the start
    assert [c["min_id"] for c in fake.iter_calls] == [0, 153]
    assert source._store.marks[CHANNEL].watermark == 299  # type: ignore[attr-defined]


def test_a_first_backfill_reaches_depth_ids_below_the_newest_post() -> None:
    store = MemoryStore()
    fake = FakeTelegram([message(i) for i in range(1, 301)])
    source, received = source_for(
        fake, store, policy=BackfillPolicy(depth=120, settle_seconds=0.3)
    )
    asyncio.run(source.start())
    asyncio.run(source.backfill())
    assert [e.message_ids[0] for e in received] == list(range(181, 301))
    assert store.marks[CHANNEL] == Watermark(180, 300)
    fake.history.append(message(301))  # the floor stays where the first backfill put it
    asyncio.run(source.backfill())
    assert store.marks[CHANNEL] == Watermark(180, 301)


def test_the_watermark_waits_for_the_commit_and_a_restart_resumes_at_the_first_hole() -> None:
    history = [message(i) for i in range(1, 251)]
    store = MemoryStore()
    lagging, received = source_for(FakeTelegram(history), store, commit=False)
    asyncio.run(lagging.start())
    asyncio.run(lagging.backfill())  # a pipeline that never commits: killed before it did
    assert len(received) == 250
    assert store.marks[CHANNEL].watermark == 0  # nothing committed, nothing covered
    for event in received[:100]:  # the first 100 were committed before the kill
        store.commit(event)

    fake = FakeTelegram(history)
    restarted, again = source_for(fake, store)
    asyncio.run(restarted.start())
    asyncio.run(restarted.backfill())
    assert [e.message_ids[0] for e in again] == list(range(101, 251))
    assert store.marks[CHANNEL].watermark == 250


def test_catch_up_asks_telethon_for_the_difference_and_backfills_every_channel() -> None:
    store = MemoryStore()
    fake = FakeTelegram([message(1), message(2)])
    source, received = source_for(fake, store)
    asyncio.run(source.start())
    store.init_watermark(CHANNEL, 0)
    stored_live(store, message(1))
    assert asyncio.run(source.catch_up()) == 1
    assert fake.catch_up_calls == 1
    assert [e.message_ids[0] for e in received] == [2]


def test_reconcile_applies_edits_deletes_and_missing_posts_through_the_pipeline() -> None:
    later = datetime(2026, 11, 2, 13, 0, tzinfo=UTC)
    store = MemoryStore()
    fake = FakeTelegram([message(i, f"post {i}") for i in range(1, 11)])
    source, received = source_for(
        fake, store, policy=BackfillPolicy(reconcile_window=5)
    )
    asyncio.run(source.start())
    asyncio.run(source.backfill())
    received.clear()
    store.posts[CHANNEL].pop(9)  # a post lost somehow
    fake.history = [m for m in fake.history if m.id not in (4, 7)]  # deleted while down
    fake.history[5] = message(8, "post 8, edited", edit_date=later)
    before = _reconciled()
    assert asyncio.run(source.reconcile()) == {"edit": 1, "delete": 1, "missing": 1}
    assert [(e.kind, e.message_ids) for e in received] == [
        ("new", (9,)),
        ("edit", (8,)),
        ("delete", (7,)),  # 4 is outside the window of the 5 newest ids
    ]
    assert {k: _reconciled()[k] - before[k] for k in before} == {
        "edit": 1,
        "delete": 1,
        "missing": 1,
    }
    assert asyncio.run(source.reconcile()) == {"edit": 0, "delete": 0, "missing": 0}


def test_a_reconciliation_right_after_a_round_reuses_its_newest_id() -> None:
    """One history request per channel fewer: the rate gate is shared by every channel."""
    store = MemoryStore()
    fake = FakeTelegram([message(i, f"post {i}") for i in range(1, 11)])
    source, _ = source_for(fake, store, policy=BackfillPolicy(reconcile_window=5))
    newest_asked: list[int | None] = []
    get_messages = fake.get_messages

    async def counting(entity: Any, limit: int | None = None, **kwargs: Any) -> Any:
        if kwargs.get("ids") is None:
            newest_asked.append(limit)
        return await get_messages(entity, limit, **kwargs)

    fake.get_messages = counting  # type: ignore[method-assign]
    asyncio.run(source.start())
    asyncio.run(source.backfill())
    assert newest_asked == [1]
    asyncio.run(source.reconcile())
    assert newest_asked == [1]  # reused
    fake.history.append(message(11, "post 11"))
    source._tops[CHANNEL] = (10, 0.0)  # the round was long ago
    assert asyncio.run(source.reconcile())["missing"] == 1  # asked again: 11 is newer
    assert newest_asked == [1, 1]


def test_after_a_gap_the_reconciliation_reaches_below_where_the_gap_began() -> None:
    later = datetime(2026, 11, 2, 13, 0, tzinfo=UTC)
    store = MemoryStore()
    fake = FakeTelegram([message(i, f"post {i}") for i in range(1, 21)])
    source, received = source_for(
        fake, store, policy=BackfillPolicy(reconcile_window=5)
    )
    asyncio.run(source.start())
    asyncio.run(source.backfill())
    asyncio.run(source.reconcile())
    # Down: 30 posts, and post 17 (stored before) edited and post 18 deleted meanwhile.
    fake.history += [message(i, f"post {i}") for i in range(21, 51)]
    fake.history[16] = message(17, "post 17, edited", edit_date=later)
    del fake.history[17]
    received.clear()
    asyncio.run(source.backfill())
    assert asyncio.run(source.reconcile()) == {"edit": 1, "delete": 1, "missing": 0}
    # the next round is back to the 5 newest ids
    assert asyncio.run(source.reconcile()) == {"edit": 0, "delete": 0, "missing": 0}
    assert fake.iter_calls[-1]["min_id"] == 45


def _reconciled() -> dict[str, float]:
    return {
        kind: REGISTRY.get_sample_value("tgstack_gateway_reconciled_total", {"kind": kind}) or 0.0
        for kind in ("edit", "delete", "missing")
    }
