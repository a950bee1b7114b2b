"""The Telethon source fed with real Telethon objects; only the network boundary is faked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from telethon import errors, events
from telethon.tl import types

from tests.telegram_fakes import BARE, CHANNEL, WHEN, FakeTelegram, message
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.telethon_source import GatewayFatal, TelethonSource, record_from_message


class Cursors:
    def __init__(self, cursors: dict[int, int]) -> None:
        self.cursors = cursors

    def channel_cursors(self) -> dict[int, int]:
        return self.cursors


def source_for(
    fake: FakeTelegram, cursors: dict[int, int] | None = None, **kwargs: Any
) -> tuple[TelethonSource, list[MessageEvent]]:
    received: list[MessageEvent] = []
    source = TelethonSource(
        fake,
        [CHANNEL],
        received.append,  # type: ignore[arg-type]
        cursors=Cursors(cursors or {}),
        **kwargs,
    )
    return source, received


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


def test_backfill_fetches_only_posts_after_the_cursor_oldest_first() -> None:
    service = types.MessageService(
        id=4, peer_id=types.PeerChannel(BARE), date=WHEN, action=types.MessageActionPinMessage()
    )
    history = [message(i) for i in (1, 2, 3, 5, 6)] + [service]
    fake = FakeTelegram(history)
    source, received = source_for(fake, {CHANNEL: 2})
    asyncio.run(source.start())
    fetched = asyncio.run(source.backfill())
    assert fetched == 3
    assert [e.message_ids[0] for e in received] == [3, 5, 6]
    assert {e.record.source for e in received if e.record} == {"backfill"}
    assert fake.iter_calls == [{"min_id": 2, "reverse": True}]


def test_backfill_waits_out_flood_wait_and_reports_it() -> None:
    fake = FakeTelegram([message(1), message(2)], flood_once=1)
    waits: list[tuple[float, str]] = []
    source, received = source_for(fake, on_flood_wait=lambda s, d: waits.append((s, d)))
    asyncio.run(source.start())
    assert asyncio.run(source.backfill()) == 2
    assert waits == [(1, f"backfill {CHANNEL}")]
    assert len(fake.iter_calls) == 2
    assert [e.message_ids[0] for e in received] == [1, 2]


def test_catch_up_asks_telethon_for_the_difference_and_backfills_every_channel() -> None:
    fake = FakeTelegram([message(1), message(2)])
    source, received = source_for(fake, {CHANNEL: 1})
    asyncio.run(source.start())
    assert asyncio.run(source.catch_up()) == 1
    assert fake.catch_up_calls == 1
    assert fake.iter_calls == [{"min_id": 1, "reverse": True}]
    assert [e.message_ids[0] for e in received] == [2]
