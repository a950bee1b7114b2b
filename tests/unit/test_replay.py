"""Replay file parsing: every bad line is reported with its number and reason, never fatal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tgstack.gateway.events import MessageEvent
from tgstack.gateway.replay import RejectedLine, ReplayFileError, parse_line, read_events
from tgstack.gateway.synthetic import generate, to_jsonl_line

CHANNEL = -1001649127710
GOOD = {"channel_id": CHANNEL, "message_id": 10, "date": "2026-11-02T09:00:00-03:00", "text": "x"}


def line(**changes: object) -> str:
    data = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return json.dumps(data)


def test_new_event_is_the_default_and_date_is_normalised_to_utc() -> None:
    event = parse_line(line(), 1)
    assert isinstance(event, MessageEvent)
    assert event.kind == "new"
    assert event.record is not None
    assert event.record.telegram_date == datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    assert event.record.source == "replay"


def test_edit_and_delete_events() -> None:
    edit = parse_line(line(event="edit", edit_date="2026-11-02T10:00:00+00:00"), 1)
    assert isinstance(edit, MessageEvent)
    assert edit.kind == "edit"
    assert edit.record is not None
    assert edit.record.edit_date == datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    delete = parse_line(json.dumps({"event": "delete", "channel_id": CHANNEL, "message_id": 3}), 2)
    assert isinstance(delete, MessageEvent)
    assert (delete.kind, delete.channel_id, delete.message_ids) == ("delete", CHANNEL, (3,))


def test_a_line_with_reply_to_msg_id_is_a_reply() -> None:
    reply = parse_line(line(message_id=11, reply_to_msg_id=10, text="Alvo 1 atingido ✅"), 1)
    plain = parse_line(line(), 2)
    assert isinstance(reply, MessageEvent)
    assert isinstance(plain, MessageEvent)
    assert reply.record is not None
    assert plain.record is not None
    assert reply.record.reply_to_msg_id == 10
    assert plain.record.reply_to_msg_id is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "not a JSON object"),
        (line(event="pin"), "event must be one of new, edit, delete"),
        (line(channel_id=...), "channel_id is missing"),
        (line(channel_id="-1001649127710"), "channel_id must be an integer"),
        (line(channel_id=1649127710), "channel_id must be a marked channel id"),
        (line(message_id=0), "message_id must be between 1 and"),
        (line(message_id=2**40), "message_id must be between 1 and"),
        (line(message_id=1.5), "message_id must be an integer"),
        (line(date=...), "date is missing"),
        (line(date="yesterday"), "date is not ISO 8601"),
        (line(date="2026-11-02T09:00:00"), "date must include a UTC offset"),
        (line(text=5), "text must be a string"),
        (line(grouped_id="g"), "grouped_id must be an integer"),
        (line(edit_date="soon"), "edit_date is not ISO 8601"),
        (line(reply_to_msg_id="9"), "reply_to_msg_id must be an integer"),
        (line(reply_to_msg_id=0), "reply_to_msg_id must be between 1 and"),
    ],
)
def test_bad_line_is_rejected_with_its_number_and_reason(text: str, reason: str) -> None:
    result = parse_line(text, 42)
    assert isinstance(result, RejectedLine)
    assert result.line_number == 42
    assert reason in result.reason
    assert str(result).startswith("line 42: ")


def test_invalid_utf8_line_is_rejected_not_fatal() -> None:
    result = parse_line(b'{"text": "\xff"}', 7)
    assert isinstance(result, RejectedLine)
    assert "not valid UTF-8" in result.reason


def test_nul_and_surrogate_escapes_are_sanitised_and_kept() -> None:
    raw = (
        f'{{"channel_id": {CHANNEL}, "message_id": 1, "date": "2026-11-02T09:00:00Z",'
        ' "text": "a\\u0000b\\ud800"}'
    )
    event = parse_line(raw, 1)
    assert isinstance(event, MessageEvent)
    assert event.record is not None
    assert event.record.text == "a\ufffdb\ufffd"
    assert "original_text_b64" in event.record.metadata


def test_file_mixes_events_and_rejections_in_order(tmp_path: Path) -> None:
    path = tmp_path / "posts.jsonl"
    path.write_text(line(message_id=1) + "\n\n{oops\n" + line(message_id=2) + "\n")
    results = list(read_events(path))
    assert [type(r).__name__ for r in results] == ["MessageEvent", "RejectedLine", "MessageEvent"]
    rejected = results[1]
    assert isinstance(rejected, RejectedLine)
    assert rejected.line_number == 3


def test_unreadable_file_raises_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReplayFileError, match="cannot read replay file"):
        list(read_events(tmp_path / "missing.jsonl"))


@given(st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=2**16))
def test_synthetic_posts_round_trip_through_the_replay_format(count: int, seed: int) -> None:
    records = list(generate(count, seed=seed))
    parsed = [parse_line(to_jsonl_line(r), i) for i, r in enumerate(records, 1)]
    for record, event in zip(records, parsed, strict=True):
        assert isinstance(event, MessageEvent)
        assert event.record is not None
        assert (event.record.key, event.record.text, event.record.telegram_date) == (
            record.key,
            record.text,
            record.telegram_date,
        )


def test_synthetic_generator_is_deterministic_and_ids_increase_per_channel() -> None:
    first = list(generate(30, seed=5))
    assert first == list(generate(30, seed=5))
    by_channel: dict[int, list[int]] = {}
    for record in first:
        by_channel.setdefault(record.channel_id, []).append(record.message_id)
    for ids in by_channel.values():
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
