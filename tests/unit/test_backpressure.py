"""The live queue's bound: refused posts marked for backfill, edits and deletions spilled to disk
and applied in order, nothing in memory beyond the limit. The pipeline is a stand-in whose
database can be down (a batch then waits, as the real one retries); files are real."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tgstack.gateway.backpressure import (
    MARKS_FILE,
    SPILL_FILE,
    BackfillMarks,
    EventSpill,
    Overflow,
    event_from_line,
    event_to_line,
)
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.pipeline import BatchingWorker, BatchStats, StoreUnavailable
from tgstack.models import MessageRecord
from tgstack_testing.localstack import wait_until

CHANNELS = (-1001000000001, -1001000000002)
WHEN = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def new(channel: int, message_id: int) -> MessageEvent:
    record = MessageRecord.create(channel, message_id, WHEN, text=f"post {message_id}")
    return MessageEvent.new(record)


def edit(channel: int, message_id: int, text: str = "edited") -> MessageEvent:
    return MessageEvent.edit(
        MessageRecord.create(channel, message_id, WHEN, text=text, edit_date=WHEN)
    )


def delete(channel: int, message_id: int) -> MessageEvent:
    return MessageEvent.delete(channel, (message_id,))


def test_a_spilled_line_keeps_the_post_a_message_replies_to() -> None:
    record = MessageRecord.create(
        CHANNELS[0], 8, WHEN, text="Alvo 1 atingido ✅", edit_date=WHEN, reply_to_msg_id=5
    )
    line = event_to_line(MessageEvent.edit(record))
    back = event_from_line(line)
    assert back.record is not None
    assert back.record.reply_to_msg_id == 5
    assert back.record == record


class Pipeline:
    """Records committed batches; while ``down`` a batch waits (the real one retries)."""

    retry_initial = 0.01
    retry_max = 0.05

    def __init__(self) -> None:
        self.up = threading.Event()
        self.up.set()
        self.committed: list[MessageEvent] = []
        self.is_stopping: Callable[[], bool] = lambda: False

    def process_batch(self, events: Sequence[MessageEvent]) -> BatchStats:
        while not self.up.wait(0.005):
            if self.is_stopping():
                raise StoreUnavailable("down")
        self.committed.extend(events)
        return BatchStats(received=len(events))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def worker_for(
    pipeline: Pipeline, state: Path, limit: int, **kwargs: Any
) -> tuple[BatchingWorker, Overflow]:
    overflow = Overflow(state).load()
    worker = BatchingWorker(
        pipeline,  # type: ignore[arg-type]
        batch_size=kwargs.pop("batch_size", 4),
        max_delay=0,
        limit=limit,
        overflow=overflow,
        **kwargs,
    )
    return worker, overflow


@contextlib.contextmanager
def running(worker: BatchingWorker) -> Iterator[BatchingWorker]:
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=5)


# The spill and the marks ------------------------------------------------------------------------


def test_the_spill_gives_back_what_is_not_applied_after_a_restart_and_drops_a_torn_line(
    state: Path,
) -> None:
    spill = EventSpill(state)
    spill.load()
    events = [edit(CHANNELS[0], 1, "one"), delete(CHANNELS[0], 2), edit(CHANNELS[1], 3, "three")]
    for event in events:
        spill.append(event)
    assert [(e.kind, e.message_ids) for e in spill.read(2)] == [("edit", (1,)), ("delete", (2,))]
    spill.applied()
    spill.close()
    with (state / SPILL_FILE).open("ab") as handle:
        handle.write(b'{"kind":"edit","chan')  # a crash in mid-append
    again = EventSpill(state)
    again.load()
    assert len(again) == 1
    (left,) = again.read(10)
    assert left.record is not None
    assert left.record.text == "three"
    assert left.record == events[2].record
    again.applied()
    assert len(again) == 0
    assert not (state / SPILL_FILE).exists()  # emptied once all is applied


def test_events_kept_at_a_stop_go_before_what_was_spilled_already(state: Path) -> None:
    spill = EventSpill(state)
    spill.append(edit(CHANNELS[0], 9, "spilled first, but arrived last"))
    spill.prepend([edit(CHANNELS[0], 9, "arrived first"), delete(CHANNELS[0], 8)])
    again = EventSpill(state)
    again.load()
    texts = [e.record.text if e.record else e.kind for e in again.read(10)]
    assert texts == ["arrived first", "delete", "spilled first, but arrived last"]


def test_a_mark_keeps_the_lowest_id_survives_a_restart_and_a_renewed_mark_is_not_forgotten(
    state: Path,
) -> None:
    marks = BackfillMarks(state)
    assert marks.mark(CHANNELS[0], 40)
    assert not marks.mark(CHANNELS[0], 50)
    assert marks.mark(CHANNELS[0], 30)
    (version,) = [v for _, v in marks.pending().values()]
    marks.mark(CHANNELS[0], 10)  # renewed while its backfill ran
    marks.done(CHANNELS[0], version)
    again = BackfillMarks(state)
    again.load()
    assert {ch: from_id for ch, (from_id, _) in again.pending().items()} == {CHANNELS[0]: 10}
    assert (state / MARKS_FILE).stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700


# The worker -------------------------------------------------------------------------------------


def test_a_full_queue_refuses_new_posts_spills_edits_and_applies_them_in_order_once_drained(
    state: Path,
) -> None:
    pipeline = Pipeline()
    drained = threading.Event()
    worker, overflow = worker_for(pipeline, state, limit=6, on_drained=drained.set)
    with running(worker):
        assert worker.has_room()  # empty: room for a page even above the limit
        pipeline.up.clear()  # the database is down
        outcomes = [worker.submit(new(CHANNELS[0], i)) for i in range(1, 11)]
        outcomes.append(worker.submit(edit(CHANNELS[0], 2)))
        outcomes.append(worker.submit(delete(CHANNELS[0], 3)))
        outcomes.append(worker.submit(new(CHANNELS[1], 5)))
        assert outcomes == ["queued"] * 6 + ["refused"] * 4 + ["spilled"] * 2 + ["refused"]
        assert worker.pending == 6
        assert worker.overflowing
        assert not worker.has_room(1)
        assert {ch: f for ch, (f, _) in overflow.marks.pending().items()} == {
            CHANNELS[0]: 6, CHANNELS[1]: 4,
        }  # fmt: skip
        assert len(overflow.spill) == 2
        pipeline.up.set()
        wait_until(drained.is_set, 5, "the queue to drain")
    assert [(e.kind, e.message_ids[0]) for e in pipeline.committed] == [
        ("new", i) for i in range(1, 7)
    ] + [("edit", 2), ("delete", 3)]
    assert not worker.overflowing
    assert len(overflow.spill) == 0


def test_a_stop_while_the_database_is_down_keeps_edits_on_disk_and_posts_as_marks(
    state: Path,
) -> None:
    pipeline = Pipeline()
    worker, _overflow = worker_for(pipeline, state, limit=4, batch_size=2)
    worker.start()
    pipeline.up.clear()
    for event in (new(CHANNELS[0], 1), edit(CHANNELS[0], 1, "first"), new(CHANNELS[0], 2),
                  new(CHANNELS[1], 7), edit(CHANNELS[0], 2, "overflowed")):  # fmt: skip
        worker.submit(event)
    assert not worker.stop(timeout=0.2)
    restarted, left = worker_for(Pipeline(), state, limit=4)
    assert {ch: f for ch, (f, _) in left.marks.pending().items()} == {
        CHANNELS[0]: 0, CHANNELS[1]: 6,
    }  # fmt: skip
    assert restarted.overflowing  # applies the spill before taking live events
    with running(restarted):
        wait_until(lambda: not restarted.overflowing, 5, "the spill to be applied")
    committed = restarted.pipeline.committed  # type: ignore[attr-defined]
    assert [e.record.text for e in committed if e.record] == ["first", "overflowed"]


ACTIONS = st.sampled_from(["new", "edit", "delete", "down", "up"])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    limit=st.integers(1, 12),
    steps=st.lists(st.tuples(ACTIONS, st.sampled_from(CHANNELS)), max_size=60),
)
def test_memory_stays_bounded_and_every_edit_and_deletion_is_applied_in_arrival_order(
    tmp_path_factory: pytest.TempPathFactory, limit: int, steps: list[tuple[str, int]]
) -> None:
    state = tmp_path_factory.mktemp("state")
    pipeline = Pipeline()
    worker, overflow = worker_for(pipeline, state, limit=limit, batch_size=3)
    submitted: list[MessageEvent] = []
    refused: list[MessageEvent] = []
    next_id = dict.fromkeys(CHANNELS, 1)
    with running(worker):
        for action, channel in steps:
            if action == "down":
                pipeline.up.clear()
                continue
            if action == "up":
                pipeline.up.set()
                continue
            if action == "new":
                event = new(channel, next_id[channel])
                next_id[channel] += 1
            else:
                target = max(1, next_id[channel] - 1)
                event = edit(channel, target) if action == "edit" else delete(channel, target)
            outcome = worker.submit(event)
            assert worker.pending <= limit
            submitted.append(event)
            if outcome == "refused":
                refused.append(event)
        pipeline.up.set()
        wait_until(lambda: worker.pending == 0 and not worker.overflowing, 5, "drained")
    position = {id(event): n for n, event in enumerate(submitted)}
    order = [position[id(e)] for e in pipeline.committed if id(e) in position]
    spilled_back = [e for e in pipeline.committed if id(e) not in position]
    # what came back from the disk equals the spilled events (same kind and ids)
    changes = [e for e in submitted if e.kind != "new"]
    applied_changes = [e for e in pipeline.committed if e.kind != "new"]
    assert [(e.kind, e.channel_id, e.message_ids) for e in applied_changes] == [
        (e.kind, e.channel_id, e.message_ids) for e in changes
    ]
    assert order == sorted(order)  # the queue commits in arrival order
    assert all(e.kind != "new" for e in spilled_back)
    assert all(e.kind == "new" for e in refused)
    marks = {ch: f for ch, (f, _) in overflow.marks.pending().items()}
    for event in refused:
        assert marks[event.channel_id] < event.message_ids[0]
    committed_new = {(e.channel_id, e.message_ids) for e in pipeline.committed if e.kind == "new"}
    for event in submitted:
        if event.kind == "new" and event not in refused:
            assert (event.channel_id, event.message_ids) in committed_new
    event_kind = "overflowed" if refused or spilled_back else "never overflowed"
    hypothesis.event(event_kind)
