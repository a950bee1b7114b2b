"""FloodWaits met by the real `tgstack gateway` over the wire: on history and on resolution.

The local server answers a method's next calls with FLOOD_WAIT_X (its `flood` control op);
the gateway's FloodWait policy (tgstack.gateway.flood) waits each one out where it happened,
counts its seconds once, and gives a call up after TGSTACK_GATEWAY_FLOOD_MAX_WAITS waits.
Resolution of a channel missing from the session's cache calls channels.getChannels (refused
for a hash it does not know) and then messages.getDialogs; both are flooded here.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import TestDatabase
from tgstack_testing.localstack import wait_until
from tgstack_testing.telegram.control import ControlClient

from .conftest import PHONE, TEST_CODE, TelegramServerProcess
from .test_gateway import WAIT, Gateway, _metric, login, marked, stored
from .test_gateway import gateway_env as base_env

PHONE_2 = "+15550002"
FLOOD_METRIC = "tgstack_gateway_flood_wait_seconds_total"


def gateway_env(
    tg_server: TelegramServerProcess, dsn: str, channels: list[int], home: Path
) -> dict[str, str]:
    return base_env(
        tg_server, dsn, channels, home,
        gateway_backfill_interval_seconds="3600",  # one round at start, no more
        gateway_history_rate="50",
    )  # fmt: skip


def logged_in(env: dict[str, str], phone: str, home: Path) -> Gateway:
    done = login(env, "--phone", phone, "--code", TEST_CODE)
    assert done.returncode == 0, done.stderr
    return Gateway(env, home / "gateway.log")


def history_requests(control: ControlClient) -> int:
    return int(control.counters()["requests"].get("messages.getHistory", 0))


def assert_stored_once(db: TestDatabase, channel: int, ids: list[int]) -> None:
    rows = stored(db, channel)
    assert sorted(rows) == sorted(ids)
    assert all(count == 1 for _, _, count in rows.values())


def test_flood_waits_of_5_s_on_resolution_and_history_are_waited_out_in_place_and_counted(
    control: ControlClient, tg_server: TelegramServerProcess, db: TestDatabase,
    tmp_path: Path, gateways: list[Gateway],
) -> None:  # fmt: skip
    control.create_account(PHONE, first_name="Operator")
    known = int(control.create_channel("Known", username="known", members=[PHONE])["id"])
    control.post_many(known, 250)  # before login: only the backfill can fetch them
    env = gateway_env(tg_server, db.app_dsn, [known], tmp_path)
    # The reconciliation after the first round reads the newest pages again: off here, so that
    # the requests counted below are the backfill's.
    env["TGSTACK_GATEWAY_RECONCILE_WINDOW"] = "0"
    gateway = logged_in(env, PHONE, tmp_path)
    # Joined after login: resolved through channels.getChannels, then messages.getDialogs.
    later = int(control.create_channel("Later", username="later", members=[PHONE])["id"])
    gateway.env["TGSTACK_CHANNELS"] += f",{marked(later)}"
    control.post_many(later, 3)
    ids_known = [m["id"] for m in control.messages(known, limit=1000)]
    ids_later = [m["id"] for m in control.messages(later, limit=1000)]
    asked = history_requests(control)

    control.flood("channels.getChannels", times=1, seconds=5)
    control.flood("messages.getDialogs", times=1, seconds=5)
    # The backfill's third getHistory: the first asks for the newest id, then pages from id 1.
    control.flood("messages.getHistory", times=1, seconds=5, after=2)  # the second page
    started = time.monotonic()
    gateways.append(gateway)
    gateway.start()
    wait_until(lambda: gateway.backfill_rounds() == 1 or gateway.exited(), 60, "the first round")
    elapsed = time.monotonic() - started

    assert_stored_once(db, known, ids_known)
    assert_stored_once(db, later, ids_later)
    counted = _metric(gateway.port, FLOOD_METRIC)
    print(f"\n5 s floods: injected 15 s, counted {counted:g} s, round done in {elapsed:.1f} s")
    assert counted == 15
    assert elapsed >= 15
    assert gateway.flood_waits_logged() == [
        (5, "channels.getChannels"), (5, "messages.getDialogs"), (5, "messages.getHistory"),
    ]  # fmt: skip
    # Each channel's round asks for its newest id first (one getHistory each). Then Telethon
    # reads the hole oldest first until an empty page: 250 posts are pages from ids 1, 101, 201
    # and 251 (empty); the later channel's 3 posts are read by id (channels.getMessages). The
    # flooded page is asked for once more and paging goes on from there: one request more,
    # nothing restarted.
    assert history_requests(control) - asked == 2 + 4 + 1
    assert not gateway.exited()


def test_flood_waits_of_70_s_on_history_and_on_resolution_are_counted_and_lose_nothing(
    control: ControlClient, tg_server: TelegramServerProcess, db: TestDatabase,
    tmp_path: Path, gateways: list[Gateway],
) -> None:  # fmt: skip
    """Two gateways at once (two accounts) so that both 70 s waits run concurrently: one pages
    through history, the other resolves a channel joined after its login."""
    control.create_account(PHONE, first_name="History")
    control.create_account(PHONE_2, first_name="Resolve")
    history = int(control.create_channel("History", username="history", members=[PHONE])["id"])
    control.post_many(history, 150)  # before login: only the backfill can fetch them
    env_h = gateway_env(tg_server, db.app_dsn, [history], tmp_path / "h")
    env_r = gateway_env(tg_server, db.app_dsn, [], tmp_path / "r")
    by_history = logged_in(env_h, PHONE, tmp_path / "h")
    by_resolve = logged_in(env_r, PHONE_2, tmp_path / "r")
    joined = int(control.create_channel("Joined", username="joined", members=[PHONE_2])["id"])
    by_resolve.env["TGSTACK_CHANNELS"] = str(marked(joined))
    control.post_many(joined, 5)

    control.flood("messages.getHistory", times=1, seconds=70, after=1)
    control.flood("messages.getDialogs", times=1, seconds=70)
    started = time.monotonic()
    gateways.extend([by_history, by_resolve])
    by_history.start()
    by_resolve.start()
    wait_until(
        lambda: by_history.flood_waits_logged() and by_resolve.flood_waits_logged(),
        WAIT, "both floods to be met",
    )  # fmt: skip
    # Live posts while both wait: the history gateway stores them at once.
    live = [control.post(history, f"live during the wait {n}")["id"] for n in range(3)]
    wait_until(lambda: len(stored(db, history)) >= 3, WAIT, "live posts during the wait")
    assert time.monotonic() - started < 60  # stored long before the wait is over
    live.append(control.post(joined, "live while resolving")["id"])

    for gateway in (by_history, by_resolve):
        wait_until(lambda g=gateway: g.backfill_rounds() == 1 or g.exited(), 120, "a round")
    elapsed = time.monotonic() - started
    counted = [_metric(g.port, FLOOD_METRIC) for g in (by_history, by_resolve)]
    print(f"\n70 s floods: injected 70 s + 70 s, counted {counted[0]:g} s (history) and "
          f"{counted[1]:g} s (resolution), both done in {elapsed:.1f} s")  # fmt: skip
    assert counted == [70, 70]
    assert 70 <= elapsed < 120  # concurrently, not one after the other
    assert by_history.flood_waits_logged() == [(70, "messages.getHistory")]
    assert by_resolve.flood_waits_logged() == [(70, "messages.getDialogs")]
    assert_stored_once(db, history, [m["id"] for m in control.messages(history, limit=1000)])
    assert_stored_once(db, joined, [m["id"] for m in control.messages(joined, limit=1000)])
    assert set(live[:3]) <= set(stored(db, history))
    assert live[3] in stored(db, joined)


def test_a_history_call_flooded_more_often_than_allowed_is_given_up_and_retried_next_round(
    control: ControlClient, tg_server: TelegramServerProcess, db: TestDatabase,
    tmp_path: Path, gateways: list[Gateway],
) -> None:  # fmt: skip
    control.create_account(PHONE, first_name="Operator")
    first = int(control.create_channel("First", username="first", members=[PHONE])["id"])
    second = int(control.create_channel("Second", username="second", members=[PHONE])["id"])
    control.post_many(first, 5)  # before login: only the backfill can fetch them
    control.post_many(second, 5)
    env = gateway_env(tg_server, db.app_dsn, [first, second], tmp_path)
    env |= {
        "TGSTACK_GATEWAY_FLOOD_MAX_WAITS": "2",
        "TGSTACK_GATEWAY_BACKFILL_INTERVAL_SECONDS": "10",
        # Off: the reconciliation after the first round would store the first channel's posts
        # (as missing ones) before the retry this test is about.
        "TGSTACK_GATEWAY_RECONCILE_WINDOW": "0",
    }
    gateway = logged_in(env, PHONE, tmp_path)

    control.flood("messages.getHistory", times=3, seconds=2)  # the first channel's first read
    gateways.append(gateway)
    gateway.start()
    wait_until(lambda: gateway.events("backfill_given_up") or gateway.exited(), WAIT, "giving up")
    (given_up,) = gateway.events("backfill_given_up")
    assert given_up["channel_id"] == marked(first)
    assert "TGSTACK_GATEWAY_FLOOD_MAX_WAITS=2" in given_up["error"]
    wait_until(lambda: gateway.backfill_rounds() == 1, WAIT, "the first round's end")
    assert len(stored(db, second)) == 5  # the other channel went on in the same round
    assert len(stored(db, first)) == 0
    wait_until(lambda: len(stored(db, first)) == 5, 30, "the next round's retry")
    assert_stored_once(db, first, [m["id"] for m in control.messages(first)])
    assert _metric(gateway.port, FLOOD_METRIC) == 6  # the third wait too: Telegram imposed it
    assert [s for s, _ in gateway.flood_waits_logged()] == [2, 2, 2]
    assert not gateway.exited()

