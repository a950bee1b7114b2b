"""The pure core of the backfill and the reconciliation: holes, watermark, fetch plan, repairs."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tgstack.gateway.reconcile import plan_repairs, window_start
from tgstack.gateway.watermark import (
    IDS_PER_CALL,
    ByHistory,
    ByIds,
    Hole,
    contiguous_watermark,
    find_holes,
    initial_floor,
    plan_fetches,
)
from tgstack.models import MessageRecord, StoredPost

CHANNEL = -1001649127710
WHEN = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)

ids = st.integers(min_value=1, max_value=400)
states = st.tuples(st.integers(0, 300), st.sets(ids, max_size=120), st.integers(0, 400))


@given(states)
def test_holes_and_known_ids_cover_the_range_above_the_watermark_exactly(
    state: tuple[int, set[int], int],
) -> None:
    watermark, known, top = state
    holes = find_holes(watermark, known, top)
    in_holes = [i for hole in holes for i in hole.ids()]
    assert in_holes == sorted(set(in_holes))  # disjoint, oldest first
    assert not set(in_holes) & known
    expected = {i for i in range(watermark + 1, top + 1) if i not in known}
    assert set(in_holes) == expected
    # maximal runs: a hole is never next to another
    assert all(a.last + 1 < b.first for a, b in itertools.pairwise(holes))


@given(states, st.integers(1, 5))
def test_the_hole_limit_keeps_the_oldest_holes(
    state: tuple[int, set[int], int], limit: int
) -> None:
    watermark, known, top = state
    assert find_holes(watermark, known, top, limit) == find_holes(watermark, known, top)[:limit]


@given(states)
def test_the_watermark_moves_over_consecutive_known_ids_only(
    state: tuple[int, set[int], int],
) -> None:
    watermark, known, top = state
    moved = contiguous_watermark(watermark, known, top)
    assert moved >= watermark
    assert moved <= max(top, watermark)
    assert all(i in known for i in range(watermark + 1, moved + 1))
    assert moved == max(top, watermark) or moved + 1 not in known
    # what find_holes reports starts right above it
    holes = find_holes(watermark, known, top)
    assert moved == (holes[0].first - 1 if holes else max(top, watermark))


def test_edge_cases_of_the_hole_finder() -> None:
    assert find_holes(0, [], 0) == []  # an empty channel
    assert find_holes(0, [], 3) == [Hole(1, 3)]  # nothing stored: the whole history
    assert find_holes(10, [], 5) == []  # a watermark above the newest id
    assert find_holes(7, [8, 9, 12], 12) == [Hole(10, 11)]
    assert find_holes(7, [3, 4], 9) == [Hole(8, 9)]  # ids under the watermark do not count


@pytest.mark.parametrize(
    ("top", "depth", "floor"), [(0, 10, 0), (5, 10, 0), (10, 10, 0), (25, 10, 15), (25, 0, 0)]
)
def test_the_floor_is_depth_ids_below_the_newest(top: int, depth: int, floor: int) -> None:
    assert initial_floor(top, depth) == floor


@given(st.lists(st.tuples(st.integers(1, 1000), st.integers(0, 250)), max_size=30))
def test_the_fetch_plan_asks_for_every_hole_id_once_in_order(spans: list[tuple[int, int]]) -> None:
    holes: list[Hole] = []
    next_free = 1
    for gap, size in spans:  # disjoint holes, oldest first
        first = next_free + gap
        holes.append(Hole(first, first + size))
        next_free = first + size + 2
    plan = plan_fetches(holes)
    asked: list[int] = []
    for fetch in plan:
        if isinstance(fetch, ByIds):
            assert 1 <= len(fetch.ids) <= IDS_PER_CALL
            asked.extend(fetch.ids)
        else:
            assert fetch.last - fetch.after > 100  # only a large hole is paged
            asked.extend(range(fetch.after + 1, fetch.last + 1))
    assert asked == [i for hole in holes for i in hole.ids()]


def test_small_holes_share_get_messages_calls_and_a_large_one_is_paged() -> None:
    plan = plan_fetches([Hole(3, 4), Hole(9, 9), Hole(20, 500), Hole(600, 601)])
    assert plan == [ByIds((3, 4, 9)), ByHistory(19, 500), ByIds((600, 601))]


def post(message_id: int, text: str = "post", edited: int | None = None) -> MessageRecord:
    edit_date = WHEN + timedelta(minutes=edited) if edited is not None else None
    return MessageRecord.create(CHANNEL, message_id, WHEN, text=text, edit_date=edit_date)


def stored(
    message_id: int, text: str = "post", edited: int | None = None, deleted: bool = False
) -> StoredPost:
    edit_date = WHEN + timedelta(minutes=edited) if edited is not None else None
    return StoredPost(message_id, edit_date, text, None, None, None, deleted)


def test_repairs_are_newer_edits_deleted_posts_and_missing_posts() -> None:
    ours = {
        1: stored(1),
        2: stored(2, "old", edited=1),
        3: stored(3, "same", edited=1),
        4: stored(4),  # gone from Telegram
        5: stored(5, deleted=True),  # gone, already soft-deleted
        6: stored(6, "new", edited=5),  # Telegram's edit is older than ours
        9: stored(9),  # outside the window
    }
    telegrams = {
        1: post(1),
        2: post(2, "new", edited=2),
        3: post(3, "same", edited=2),  # a newer edit_date that changes nothing (a reaction)
        6: post(6, "older", edited=3),
        7: post(7, "never stored"),
    }
    repairs = plan_repairs(ours, telegrams, after=0, last=8)
    assert [r.message_id for r in repairs.edits] == [2]
    assert repairs.deletes == [4]
    assert [r.message_id for r in repairs.missing] == [7]
    assert repairs.counts() == {"edit": 1, "delete": 1, "missing": 1}


def test_the_window_reaches_below_the_watermark_a_gap_began_at() -> None:
    assert window_start(1000, 200) == 800
    assert window_start(1000, 200, gap_from=300) == 100  # 700 posts came while down
    assert window_start(1000, 200, gap_from=300, depth=500) == 500  # capped at the depth
    assert window_start(1000, 200, gap_from=300, floor=250) == 250  # never below the floor
    assert window_start(100, 200) == 0
