"""Message records: id validation and text sanitisation that never loses the original."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tgstack.models import (
    MARKED_CHANNEL_MAX,
    MARKED_CHANNEL_MIN,
    MESSAGE_ID_MAX,
    InvalidMessage,
    MessageRecord,
    sanitize_text,
    validate_channel_id,
    validate_message_id,
)

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
CHANNEL = -1001649127710


@given(st.text())
def test_sanitized_text_always_encodes_and_original_is_recoverable(text: str) -> None:
    clean, original = sanitize_text(text)
    assert clean is not None
    clean.encode("utf-8")  # storable: no lone surrogates
    assert "\x00" not in clean
    if original is None:
        assert clean == text
    else:
        assert base64.b64decode(original).decode("utf-8", "surrogatepass") == text
        assert len(clean) == len(text)


def test_nul_and_lone_surrogate_are_replaced_and_kept_in_metadata() -> None:
    record = MessageRecord.create(CHANNEL, 7, NOW, text="Ativo: PETR4\x00\ud83d", caption="ok")
    assert record.text == "Ativo: PETR4\ufffd\ufffd"
    assert record.caption == "ok"
    decoded = base64.b64decode(record.metadata["original_text_b64"])
    assert decoded.decode("utf-8", "surrogatepass") == "Ativo: PETR4\x00\ud83d"
    assert "original_caption_b64" not in record.metadata


@given(st.integers(min_value=MARKED_CHANNEL_MIN, max_value=MARKED_CHANNEL_MAX))
def test_every_marked_channel_id_is_accepted(channel_id: int) -> None:
    assert validate_channel_id(channel_id) == channel_id


@given(st.integers().filter(lambda v: not MARKED_CHANNEL_MIN <= v <= MARKED_CHANNEL_MAX))
def test_unmarked_channel_ids_are_rejected(channel_id: int) -> None:
    with pytest.raises(InvalidMessage, match="channel_id must be a marked channel id"):
        validate_channel_id(channel_id)


@pytest.mark.parametrize("value", [0, -1, MESSAGE_ID_MAX + 1, True, "5", 1.5, None])
def test_message_id_out_of_range_or_wrong_type_is_rejected(value: object) -> None:
    with pytest.raises(InvalidMessage, match="message_id"):
        validate_message_id(value)


def test_channel_id_given_as_digit_string_is_accepted() -> None:
    assert validate_channel_id(" -1001649127710 ") == CHANNEL


def test_naive_or_prehistoric_dates_are_rejected() -> None:
    with pytest.raises(InvalidMessage, match="UTC offset"):
        MessageRecord.create(CHANNEL, 1, datetime(2026, 1, 1))
    with pytest.raises(InvalidMessage, match="before Telegram existed"):
        MessageRecord.create(CHANNEL, 1, datetime(2001, 1, 1, tzinfo=UTC))


def test_dates_are_normalised_to_utc() -> None:
    brt = timezone(timedelta(hours=-3))
    record = MessageRecord.create(CHANNEL, 1, datetime(2026, 1, 1, 9, 0, tzinfo=brt))
    assert record.telegram_date == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_dict_round_trip_preserves_every_field() -> None:
    record = MessageRecord.create(
        CHANNEL,
        42,
        NOW,
        text="hi",
        caption=None,
        media_type="photo",
        media_refs={"photo_id": 1},
        thread_id=3,
        reply_to_msg_id=41,
        grouped_id=99,
        edit_date=NOW + timedelta(minutes=1),
        source="replay",
        metadata={"k": "v"},
    )
    assert MessageRecord.from_dict(record.to_dict()) == record


def test_reply_to_msg_id_survives_the_dict_and_json_round_trip() -> None:
    record = MessageRecord.create(CHANNEL, 42, NOW, text="Alvo 1 atingido ✅", reply_to_msg_id=7)
    data = json.loads(json.dumps(record.to_dict()))
    assert data["reply_to_msg_id"] == 7
    assert MessageRecord.from_dict(data).reply_to_msg_id == 7
    assert MessageRecord.from_dict(data) == record


def test_a_post_that_replies_to_nothing_has_reply_to_msg_id_none() -> None:
    record = MessageRecord.create(CHANNEL, 42, NOW, text="Bom dia")
    assert record.reply_to_msg_id is None
    assert record.to_dict()["reply_to_msg_id"] is None
    older_body = {k: v for k, v in record.to_dict().items() if k != "reply_to_msg_id"}
    assert MessageRecord.from_dict(older_body).reply_to_msg_id is None  # bodies before issue 16


@pytest.mark.parametrize("value", [0, -3, MESSAGE_ID_MAX + 1, True, "7", 7.0, [7]])
def test_a_reply_to_msg_id_that_is_no_message_id_is_rejected_naming_the_field(
    value: object,
) -> None:
    with pytest.raises(InvalidMessage, match=r"^reply_to_msg_id must be"):
        MessageRecord.create(CHANNEL, 42, NOW, reply_to_msg_id=value)
    data = MessageRecord.create(CHANNEL, 42, NOW).to_dict() | {"reply_to_msg_id": value}
    with pytest.raises(InvalidMessage, match=r"^reply_to_msg_id must be"):
        MessageRecord.from_dict(data)


def test_body_prefers_text_then_caption() -> None:
    assert MessageRecord.create(CHANNEL, 1, NOW, text="t", caption="c").body == "t"
    assert MessageRecord.create(CHANNEL, 1, NOW, text="", caption="c").body == "c"
    assert MessageRecord.create(CHANNEL, 1, NOW).body == ""
