"""Where a channel's stored history has holes, and how to fetch them: pure functions of ids.

The job: say which message ids the backfill must fetch, and by which call. The I/O is elsewhere
(``telethon_source.py`` asks Telegram, ``sql/040_channel_watermarks.sql`` keeps the watermark
durably); ``contiguous_watermark`` and ``find_holes`` are the reference model of that SQL, which
the integration tests compare it against.

The invariant (the channel's *watermark*, read back as ``tgstack.models.Watermark``): every id
in (floor, watermark] is stored or known absent (deleted, a service message, an id Telegram does
not return). Ids at or below the floor are older than the configured depth and never fetched.
A *hole* is a run of ids above the watermark, up to the newest id Telegram has shown (``top``),
that is neither stored nor known absent. The newest id bounds everything: ids only grow, so an
id at or below it that Telegram does not return will never be a post, while an id above it may
be the next post's.

The fetch plan, and the measurement behind it: ``channels.getMessages`` takes up to 100 ids a
call whatever their spread, so holes of up to ``SMALL_HOLE`` ids share calls; a larger hole is
paged with ``messages.getHistory`` (100 posts a page, oldest first), which needs at least one
call per hole however few posts it holds. Filling the holes a live post leaves behind (a few
ids here and there) thus costs a call per 100 ids instead of one per hole, and a downtime of
10,000 posts costs 100 pages instead of 100 getMessages calls that could only guess the ids.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IDS_PER_CALL = 100  # channels.getMessages and messages.getHistory both answer up to 100
SMALL_HOLE = 100  # holes up to this size are fetched by id


@dataclass(frozen=True, slots=True)
class Hole:
    """The ids first..last (both included), none stored or known absent."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.last:
            raise ValueError(f"not a hole: {self.first}..{self.last}")

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def ids(self) -> range:
        return range(self.first, self.last + 1)


@dataclass(frozen=True, slots=True)
class ByIds:
    """Fetch these ids with channels.getMessages (ascending, at most ``IDS_PER_CALL``)."""

    ids: tuple[int, ...]

    @property
    def last(self) -> int:
        return self.ids[-1]


@dataclass(frozen=True, slots=True)
class ByHistory:
    """Page through the ids in (after, last] with messages.getHistory, oldest first."""

    after: int
    last: int


Fetch = ByIds | ByHistory


def initial_floor(top: int, depth: int) -> int:
    """The floor of a channel backfilled for the first time: ``depth`` ids below its newest id
    (0, the whole history, when depth is 0)."""
    if top < 0 or depth < 0:
        raise ValueError("top and depth must not be negative")
    return max(0, top - depth) if depth else 0


def contiguous_watermark(watermark: int, known: Iterable[int], top: int) -> int:
    """The watermark moved up over every consecutive known id (stored or absent) right above
    it, never past ``top``; never lower than ``watermark``."""
    wanted = {i for i in known if watermark < i <= top}
    while watermark + 1 in wanted:
        watermark += 1
    return watermark


def find_holes(
    watermark: int, known: Iterable[int], top: int, limit: int | None = None
) -> list[Hole]:
    """The holes in (watermark, top], oldest first, at most ``limit`` of them."""
    if top <= watermark:
        return []
    edges = sorted({watermark, top + 1, *(i for i in known if watermark < i <= top)})
    holes: list[Hole] = []
    for low, high in itertools.pairwise(edges):
        if high > low + 1:
            holes.append(Hole(low + 1, high - 1))
            if limit is not None and len(holes) >= limit:
                break
    return holes


def plan_fetches(holes: Sequence[Hole], *, small: int = SMALL_HOLE) -> list[Fetch]:
    """The calls that fetch every id of ``holes`` (sorted, disjoint), in id order: runs of small
    holes by id, up to ``IDS_PER_CALL`` ids a call; a larger hole by history pages."""
    plan: list[Fetch] = []
    batch: list[int] = []
    for hole in holes:
        if hole.size > small:
            if batch:
                plan.append(ByIds(tuple(batch)))
                batch = []
            plan.append(ByHistory(hole.first - 1, hole.last))
            continue
        for message_id in hole.ids():
            batch.append(message_id)
            if len(batch) == IDS_PER_CALL:
                plan.append(ByIds(tuple(batch)))
                batch = []
    if batch:
        plan.append(ByIds(tuple(batch)))
    return plan
