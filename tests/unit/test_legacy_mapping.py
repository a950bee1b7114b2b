"""Legacy row → new row mapping rules (pure functions)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tgstack.legacy.mapping import (
    ImportRow,
    LegacyMessage,
    Rejection,
    content_digest,
    legacy_channel_text,
    map_message,
    parse_legacy_channel_id,
)
from tgstack.models import MESSAGE_STATUSES
from tgstack_testing.legacy.seed import generate_rows

WHEN = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
MESSAGE = LegacyMessage(
    legacy_id="00000000-0000-4000-8000-000000000001",
    channel_raw="-1001649127710",
    channel_id=-1001649127710,
    message_id=42,
    thread_id=None,
    source="user_client",
    message_type="text",
    text="🟢Swing Trade\nAtivo: PETR4",
    caption=None,
    media_type=None,
    media_refs=[],
    status="published",
    received_at=WHEN,
    telegram_date=WHEN,
    published_at=WHEN + timedelta(seconds=1),
    failed_at=None,
    queued_at=None,
    created_at=WHEN + timedelta(seconds=1),
    updated_at=WHEN + timedelta(seconds=5),
    deleted_at=None,
    metadata={"views": 10},
)


def mapped(**changes: object) -> ImportRow:
    result = map_message(replace(MESSAGE, **changes))  # type: ignore[arg-type]
    assert isinstance(result, ImportRow), result
    return result


def rejected(**changes: object) -> Rejection:
    result = map_message(replace(MESSAGE, **changes))  # type: ignore[arg-type]
    assert isinstance(result, Rejection), result
    return result


@given(st.integers(min_value=1, max_value=10**12 - 1))
def test_bare_and_marked_channel_ids_map_to_the_same_marked_id(bare: int) -> None:
    marked = -(10**12 + bare)
    assert parse_legacy_channel_id(str(bare)) == marked
    assert parse_legacy_channel_id(f"  {marked}\n") == marked
    assert parse_legacy_channel_id(legacy_channel_text(marked)) == marked


def test_what_is_not_a_channel_id_maps_to_none() -> None:
    for raw in (None, "", "@tp_capital", "-123456", "0", "-1000000000000", "12345678901234"):
        assert parse_legacy_channel_id(raw) is None, raw


def test_every_legacy_status_is_kept_and_split_into_processing_state() -> None:
    states = {status: mapped(status=status).processing_state for status in MESSAGE_STATUSES}
    assert states == {
        "received": "pending",
        "retrying": "pending",
        "published": "pending",
        "queued": "pending",
        "failed": "pending",
        "reprocess_pending": "pending",
        "reprocessed": "processed",
        "deleted": "ignored",
    }
    assert {mapped(status=s).status for s in MESSAGE_STATUSES} == set(MESSAGE_STATUSES)


def test_processed_by_marks_the_post_processed_and_stays_in_metadata() -> None:
    row = mapped(metadata={"processed_by": "tp-capital", "processed_at": "2025-03-01T10:00:09Z"})
    assert row.processing_state == "processed"
    assert row.processed_at == WHEN + timedelta(seconds=9)
    assert row.metadata["processed_by"] == "tp-capital"
    assert row.metadata["legacy"]["id"] == MESSAGE.legacy_id


def test_processed_without_processed_at_takes_updated_at() -> None:
    row = mapped(metadata={"processed_by": "tp-capital"})
    assert row.processed_at == MESSAGE.updated_at


def test_reprocess_pending_goes_back_to_the_consumer_even_when_marked() -> None:
    row = mapped(status="reprocess_pending", metadata={"processed_by": "tp-capital"})
    assert (row.status, row.processing_state, row.processed_at) == (
        "reprocess_pending",
        "pending",
        None,
    )


def test_deleted_at_alone_deletes() -> None:
    row = mapped(deleted_at=WHEN + timedelta(days=1))
    assert (row.status, row.deleted_at) == ("deleted", WHEN + timedelta(days=1))
    assert row.metadata["legacy"]["status"] == "published"


def test_finished_posts_without_published_at_get_one_pending_posts_do_not() -> None:
    done = mapped(published_at=None, metadata={"processed_by": "tp-capital"})
    assert done.published_at == MESSAGE.updated_at
    assert done.metadata["legacy"]["published_at_filled"] is True
    pending = mapped(published_at=None, status="received")
    assert pending.published_at is None
    assert "published_at_filled" not in pending.metadata["legacy"]


def test_bad_rows_are_rejected_with_a_reason_and_every_copy() -> None:
    assert "message_id" in rejected(message_id=0).reason
    assert "message_id" in rejected(message_id=2**31).reason
    assert "status" in rejected(status="archived").reason
    assert "before Telegram" in rejected(telegram_date=datetime(2010, 1, 1, tzinfo=UTC)).reason
    gone = rejected(telegram_date=None, received_at=None, created_at=None, copy_ids=("b", "a"))
    assert gone.legacy_ids == (MESSAGE.legacy_id, "b", "a")


def test_telegram_date_falls_back_and_says_from_where() -> None:
    row = mapped(telegram_date=None, received_at=WHEN - timedelta(seconds=3))
    assert row.telegram_date == WHEN - timedelta(seconds=3)
    assert row.metadata["legacy"]["telegram_date_from"] == "received_at"


def test_non_object_metadata_is_kept_under_a_key() -> None:
    assert mapped(metadata=["x"]).metadata["legacy_metadata"] == ["x"]


def test_copies_are_listed() -> None:
    row = mapped(copies=3, copy_ids=("c", "b"))
    assert row.metadata["legacy"]["copies"] == 3
    assert row.metadata["legacy"]["copy_ids"] == ["b", "c"]


@given(st.one_of(st.none(), st.text()), st.one_of(st.none(), st.text()))
def test_content_digest_tells_none_from_empty_and_text_from_caption(
    text: str | None, caption: str | None
) -> None:
    digest = content_digest(1, WHEN, text, caption)
    assert digest == content_digest(1, WHEN.astimezone(UTC), text, caption)
    if text != caption:
        assert digest != content_digest(1, WHEN, caption, text)
    if text is None:
        assert digest != content_digest(1, WHEN, "", caption)


def test_seed_rows_cover_every_status_and_every_flaw() -> None:
    rows, summary = generate_rows(3000, seed=11)
    assert {row["status"] for row in rows} == set(MESSAGE_STATUSES)
    assert summary.rows == len(rows)
    assert summary.duplicates > 0
    assert summary.bare_channel_ids > 0
    assert summary.padded_channel_ids > 0
    assert summary.unmapped_rows >= 3
    assert generate_rows(3000, seed=11)[0] == rows, "deterministic for a seed"
