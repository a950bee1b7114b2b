"""The contiguous watermark and the reconciliation, over the wire: the real `tgstack gateway`
against the local Telegram server, storing into a real PostgreSQL.

Posts are made through the server's control port while the gateway is down or while the server
does not push them; what must be stored is read back from the server (`messages`) and compared
with the database row by row.
"""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import TestDatabase
from tgstack_testing.localstack import wait_until
from tgstack_testing.telegram.control import ControlClient

from .conftest import PHONE, TEST_CODE, TelegramServerProcess
from .test_gateway import WAIT, Gateway, gateway_env, login, marked, stored

CHANNELS = 5
POSTS_WHILE_DOWN = 10_000
CATCH_UP = 10.0


def env_for(
    tg_server: TelegramServerProcess, db: TestDatabase, channels: list[int], tmp_path: Path
) -> dict[str, str]:
    return gateway_env(
        tg_server, db.app_dsn, channels, tmp_path,
        gateway_history_rate="1000",  # the local server does not flood
        gateway_history_burst="1000",
        gateway_backfill_interval_seconds="3600",  # only the rounds a test causes
    )  # fmt: skip


@pytest.fixture
def channels(control: ControlClient) -> list[int]:
    control.create_account(PHONE, first_name="Operator")
    return [
        int(control.create_channel(f"Channel {n}", username=f"channel{n}", members=[PHONE])["id"])
        for n in range(CHANNELS)
    ]


@pytest.fixture
def gateway(
    tg_server: TelegramServerProcess, db: TestDatabase, channels: list[int], tmp_path: Path
) -> Iterator[Gateway]:
    env = env_for(tg_server, db, channels, tmp_path)
    done = login(env, "--phone", PHONE, "--code", TEST_CODE)
    assert done.returncode == 0, done.stderr
    running = Gateway(env, tmp_path / "gateway.log")
    try:
        yield running
    finally:
        running.stop()


def kill_9(gateway: Gateway) -> None:
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGKILL)
    gateway.process.wait(timeout=WAIT)


def watermarks(db: TestDatabase) -> dict[int, int]:
    """Bare channel id -> its watermark."""
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        rows = conn.execute(
            "SELECT channel_id, watermark FROM telegram_gateway.channel_watermarks"
        ).fetchall()
    return {-1_000_000_000_000 - channel_id: watermark for channel_id, watermark in rows}


def edit_history(db: TestDatabase) -> set[tuple[int, int]]:
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        rows = conn.execute(
            "SELECT channel_id, message_id FROM telegram_gateway.message_edits"
        ).fetchall()
    return {(-1_000_000_000_000 - channel_id, message_id) for channel_id, message_id in rows}


def reconciled(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("tgstack_gateway_reconciled_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('kind="', 1)[1].split('"', 1)[0]] = float(value)
    return counts


def on_telegram(control: ControlClient, channel: int) -> dict[int, str]:
    """The channel's posts as Telegram has them now: id -> text."""
    return {int(p["id"]): str(p["text"]) for p in control.messages(channel, limit=100_000)}


def matches(db: TestDatabase, channel: int, truth: dict[int, str]) -> bool:
    """Every post Telegram has is stored once with its text; every other stored one deleted."""
    rows = stored(db, channel)
    if any(rows.get(i) != (text, False, 1) for i, text in truth.items()):
        return False
    return all(deleted and count == 1 for i, (_, deleted, count) in rows.items() if i not in truth)


def test_down_while_10000_posts_flow_every_post_edit_and_deletion_is_applied(
    gateway: Gateway, control: ControlClient, channels: list[int], db: TestDatabase
) -> None:
    for channel in channels:
        control.post_many(channel, 20, text="before {n}")
    gateway.start()
    gateway.wait_healthy()
    wait_until(
        lambda: all(watermarks(db).get(c) == 20 for c in channels), WAIT, "the first backfill"
    )
    assert gateway.stop() == 0

    # While it is down: 2,000 posts a channel, and edits and deletions both of posts it had
    # stored before and of posts it never saw.
    per_channel = POSTS_WHILE_DOWN // CHANNELS
    for channel in channels:
        control.post_many(channel, per_channel, text="while down {n}")
        for message_id in (5, 10, 15, 30, 500, 1500):
            control.edit(channel, message_id, f"post {message_id}, edited while down")
        control.delete(channel, [3, 12, 40, 41, 900])
    truth = {channel: on_telegram(control, channel) for channel in channels}
    tops = {channel: max(truth[channel]) for channel in channels}
    assert sum(len(posts) for posts in truth.values()) == CHANNELS * (20 + per_channel - 5)

    started = time.monotonic()
    gateway.start()
    wait_until(
        lambda: all(matches(db, c, truth[c]) for c in channels) and watermarks(db) == tops,
        120,
        "every post, edit and deletion, and the watermarks at the top",
        interval=0.25,
    )
    recovered = time.monotonic() - started
    print(
        f"\nrecovered {POSTS_WHILE_DOWN:,} posts made while down ({CHANNELS} channels, "
        f"30 edits, 25 deletions) in {recovered:.1f} s from the gateway's start"
    )
    # The edits and deletions of posts stored before the downtime reached it only by the
    # reconciliation, through the edit path (history kept); the others came with the backfill.
    wait_until(lambda: reconciled(gateway.port).get("delete") == 2 * CHANNELS, WAIT, "counts")
    assert reconciled(gateway.port).get("edit") == 3 * CHANNELS
    assert edit_history(db) == {(c, i) for c in channels for i in (5, 10, 15)}
    assert not gateway.exited()


MISSED = 3000


def test_holes_behind_a_newer_live_post_are_filled_even_after_a_kill_9_mid_backfill(
    gateway: Gateway, control: ControlClient, channels: list[int], db: TestDatabase
) -> None:
    channel = channels[0]
    gateway.env["TGSTACK_CHANNELS"] = str(marked(channel))
    control.post_many(channel, 5, text="history {n}")
    gateway.start()
    gateway.wait_healthy()
    wait_until(lambda: watermarks(db).get(channel) == 5, WAIT, "the first backfill")

    # MISSED posts never pushed; the next one is pushed and shows Telethon's update loop a gap
    # too long to fetch (over 100 events: getChannelDifference answers "too long", and Telethon
    # gives up on them and asks once more from the new pts); then a live post.
    asked = control.counters()["requests"].get("updates.getChannelDifference", 0)
    control.gap(channel, skip=MISSED)
    control.post_many(channel, MISSED, text="missed {n}")
    control.post(channel, "shows the gap")
    wait_until(
        lambda: control.counters()["requests"].get("updates.getChannelDifference", 0) >= asked + 2,
        WAIT,
        "Telethon to give up on the gap",
    )
    live = int(control.post(channel, "live")["id"])
    wait_until(lambda: live in stored(db, channel), WAIT, "the live post")
    assert len(stored(db, channel)) < 5 + MISSED  # stored above a hole of missed posts
    assert watermarks(db)[channel] == 5

    # Killed, restarted with a slow backfill (a page every 0.2 s), killed again half-way.
    kill_9(gateway)
    gateway.env["TGSTACK_GATEWAY_HISTORY_RATE"] = "5"
    gateway.env["TGSTACK_GATEWAY_HISTORY_BURST"] = "1"
    gateway.start()
    wait_until(lambda: 5 + 300 < watermarks(db)[channel] < live - 1000, 60, "the backfill half-way")
    kill_9(gateway)
    at_kill = watermarks(db)[channel]
    rows = stored(db, channel)
    assert all(i in rows for i in range(1, at_kill + 1))  # the watermark covers committed rows
    assert len(rows) < live  # and the backfill was not over

    gateway.env["TGSTACK_GATEWAY_HISTORY_RATE"] = "1000"
    gateway.env["TGSTACK_GATEWAY_HISTORY_BURST"] = "1000"
    rounds_before = len(gateway.events("backfill_done"))
    gateway.start()
    wait_until(
        lambda: len(stored(db, channel)) == live and watermarks(db)[channel] == live,
        WAIT,
        "every hole filled",
    )
    rows = stored(db, channel)
    assert sorted(rows) == list(range(1, live + 1))
    assert all(count == 1 and not deleted for _, deleted, count in rows.values())
    # It resumed at the watermark: nothing below it was asked for again.
    resumed = gateway.events("backfill_done")[rounds_before:]
    assert resumed
    assert resumed[0]["watermark"] >= at_kill
    fetched = sum(e["fetched"] for e in resumed)
    assert fetched <= live - at_kill
    print(f"\nkilled at watermark {at_kill} of {live}; the restart fetched {fetched} posts")


@pytest.mark.parametrize("trigger", ["pts gap", "updates too long"])
def test_telethon_fetches_the_channel_difference_itself_on_a_gap_or_updates_too_long(
    gateway: Gateway, control: ControlClient, channels: list[int], db: TestDatabase, trigger: str
) -> None:
    channel = channels[0]
    gateway.env["TGSTACK_CHANNELS"] = str(marked(channel))
    gateway.start()
    gateway.wait_healthy()
    sent = [int(control.post(channel, "pushed")["id"])]
    wait_until(lambda: len(stored(db, channel)) == 1, WAIT, "the live post")
    wait_until(lambda: gateway.backfill_rounds() == 1, WAIT, "the backfill round at start")
    asked = control.counters()["requests"].get("updates.getChannelDifference", 0)
    control.gap(channel, skip=2)
    sent += [int(control.post(channel, f"not pushed {n}")["id"]) for n in range(2)]
    if trigger == "pts gap":
        sent.append(int(control.post(channel, "pushed, showing the gap")["id"]))
    else:
        assert control.updates_too_long(PHONE) >= 1
    # No backfill round runs meanwhile (interval 3600 s): only the difference can bring them.
    wait_until(lambda: sorted(stored(db, channel)) == sent, CATCH_UP, "the difference")
    assert control.counters()["requests"]["updates.getChannelDifference"] > asked
    assert gateway.backfill_rounds() == 1
