"""The Redis key schema: builders, parse round trip, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tgstack import keys
from tgstack.models import (
    MARKED_CHANNEL_MAX,
    MARKED_CHANNEL_MIN,
    MESSAGE_ID_MAX,
    InvalidMessage,
)

CHANNEL = -1001649127710
channels = st.integers(MARKED_CHANNEL_MIN, MARKED_CHANNEL_MAX)
message_ids = st.integers(1, MESSAGE_ID_MAX)
bad_channels = st.one_of(
    st.integers(max_value=MARKED_CHANNEL_MIN - 1),
    st.integers(min_value=MARKED_CHANNEL_MAX + 1),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text().filter(lambda t: not t.strip().lstrip("-").isdigit()),
)
bad_message_ids = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=MESSAGE_ID_MAX + 1),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(),
)


def test_key_builders_match_the_reference_names() -> None:
    assert keys.message_key(CHANNEL, 42) == "telegram:msg:-1001649127710:42"
    assert keys.dedup_key(CHANNEL, 42) == "telegram:dedup:-1001649127710:42"
    assert keys.recent_key(CHANNEL) == "telegram:channel:-1001649127710:recent"


def test_ttl_constants_are_the_reference_values() -> None:
    assert keys.HOT_CACHE_TTL == 3600
    assert keys.DEDUP_TTL == 7200


def test_parse_key_splits_each_kind() -> None:
    assert keys.parse_key("telegram:msg:-1001649127710:42") == ("msg", CHANNEL, 42)
    assert keys.parse_key(b"telegram:dedup:-1001649127710:7") == ("dedup", CHANNEL, 7)
    assert keys.parse_key("telegram:channel:-1001649127710:recent") == (
        "recent", CHANNEL, None,
    )


@pytest.mark.parametrize(
    "key",
    [
        "",
        "telegram:msg",
        "telegram:msg:-1001649127710",
        "telegram:msg:-1001649127710:42:extra",
        "telegram:msg:-1001649127710:042",  # not canonical
        "telegram:msg:-1001649127710:+42",
        "telegram:msg:1001649127710:42",  # unmarked channel id
        "telegram:msg:-5:42",  # out of the marked range
        "telegram:msg:-1001649127710:0",
        f"telegram:msg:-1001649127710:{MESSAGE_ID_MAX + 1}",
        "telegram:dedup:-1001649127710:recent",
        "telegram:channel:-1001649127710:older",
        "TELEGRAM:msg:-1001649127710:42",
        " telegram:msg:-1001649127710:42",
        "telegram:msg:-1001649127710:42\n",
    ],
)
def test_parse_key_rejects_anything_not_built_here(key: str) -> None:
    with pytest.raises(keys.InvalidKey):
        keys.parse_key(key)


def test_invalid_key_is_an_invalid_message() -> None:
    assert issubclass(keys.InvalidKey, InvalidMessage)


def test_builders_accept_a_numeric_string_channel_id_and_normalise_it() -> None:
    assert keys.recent_key(str(CHANNEL)) == keys.recent_key(CHANNEL)  # type: ignore[arg-type]


def test_recent_member_is_zero_padded_and_parses_back() -> None:
    assert keys.recent_member(42) == "0000000042"
    assert keys.parse_recent_member(b"0000000042") == 42
    for bad in ("42", "00000000042", "0000000000", "abcdefghij", f"{MESSAGE_ID_MAX + 1}"):
        with pytest.raises(InvalidMessage):
            keys.parse_recent_member(bad)


def test_score_is_the_message_time_in_unix_milliseconds() -> None:
    moment = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert keys.score_ms(moment) == 1714564800123
    same_instant = moment.astimezone(timezone(timedelta(hours=-3)))
    assert keys.score_ms(same_instant) == 1714564800123
    with pytest.raises(InvalidMessage):
        keys.score_ms(datetime(2024, 5, 1))  # naive on purpose


@given(channels, message_ids)
def test_message_and_dedup_keys_round_trip(channel_id: int, message_id: int) -> None:
    for kind, build in (("msg", keys.message_key), ("dedup", keys.dedup_key)):
        key = build(channel_id, message_id)
        parsed = keys.parse_key(key)
        assert build(parsed.channel_id, parsed.message_id or 0) == key
        assert parsed == (kind, channel_id, message_id)
        assert keys.parse_key(key.encode()) == parsed


@given(channels)
def test_recent_key_round_trips(channel_id: int) -> None:
    assert keys.parse_key(keys.recent_key(channel_id)) == ("recent", channel_id, None)


@given(channels, message_ids, message_ids)
def test_keys_of_different_messages_differ(channel_id: int, a: int, b: int) -> None:
    assert (keys.message_key(channel_id, a) == keys.message_key(channel_id, b)) == (a == b)


@given(message_ids, message_ids)
def test_member_order_is_message_id_order(a: int, b: int) -> None:
    assert (keys.recent_member(a) < keys.recent_member(b)) == (a < b)
    assert keys.parse_recent_member(keys.recent_member(a)) == a


@given(bad_channels, message_ids)
def test_invalid_channel_ids_are_rejected(channel_id: object, message_id: int) -> None:
    with pytest.raises(InvalidMessage):
        keys.message_key(channel_id, message_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage):
        keys.dedup_key(channel_id, message_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage):
        keys.recent_key(channel_id)  # type: ignore[arg-type]


@given(channels, bad_message_ids)
def test_invalid_message_ids_are_rejected(channel_id: int, message_id: object) -> None:
    with pytest.raises(InvalidMessage):
        keys.message_key(channel_id, message_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage):
        keys.dedup_key(channel_id, message_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage):
        keys.recent_member(message_id)  # type: ignore[arg-type]


@given(st.text(max_size=80) | st.binary(max_size=80))
def test_parse_key_accepts_only_canonical_keys(text: str | bytes) -> None:
    try:
        parsed = keys.parse_key(text)
    except keys.InvalidKey:
        return
    rebuilt = (
        keys.recent_key(parsed.channel_id)
        if parsed.message_id is None
        else {"msg": keys.message_key, "dedup": keys.dedup_key}[parsed.kind](
            parsed.channel_id, parsed.message_id
        )
    )
    assert rebuilt == (text.decode() if isinstance(text, bytes) else text)
