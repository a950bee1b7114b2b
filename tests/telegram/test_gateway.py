"""The real `tgstack login` and `tgstack gateway` (source telethon) against the local server.

Both run as the operator runs them: the `tgstack` command in a process of its own, configured
by environment only, talking MTProto to the test server and storing into a real PostgreSQL.
Nothing of Telethon is touched: what these tests see is what a deployment would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import TestDatabase
from tgstack.db import Database
from tgstack.poller.worker import SignalWorker
from tgstack_testing.localstack import free_port, wait_until
from tgstack_testing.telegram.control import ControlClient

from .conftest import PHONE, TEST_CODE, TelegramServerProcess

WAIT = 30.0


def marked(channel_id: int) -> int:
    return -1_000_000_000_000 - channel_id


class Gateway:
    """`tgstack gateway` in its own process; its log is kept for the assertions."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.port = int(env["TGSTACK_GATEWAY_PORT"])

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tgstack", "gateway"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )  # fmt: skip

    def health(self) -> dict[str, Any] | None:
        """The health report, whether healthy (200) or not (503); None while it cannot answer."""
        url = f"http://127.0.0.1:{self.port}/health"
        try:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    return dict(json.loads(r.read()))
            except urllib.error.HTTPError as error:
                with error:
                    return dict(json.loads(error.read()))
        except (OSError, ValueError):
            return None

    def wait_healthy(self) -> None:
        wait_until(
            lambda: (self.health() or {}).get("status") == "ok" or self.exited(), WAIT, "health"
        )
        assert not self.exited(), self.log.read_text()[-3000:]

    def events(self, name: str) -> list[dict[str, Any]]:
        """The gateway's log events of this name (it logs one JSON object a line)."""
        found = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == name:
                    found.append(event)
        return found

    def backfill_rounds(self) -> int:
        return len(self.events("gap_backfill_round"))

    def flood_waits_logged(self) -> list[tuple[float, str]]:
        return [(e["seconds"], e["during"]) for e in self.events("telegram_flood_wait")]

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def wait_exit(self, timeout: float = WAIT) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def channel(control: ControlClient) -> int:
    control.create_account(PHONE, first_name="Operator")
    created = control.create_channel("TP Capital", username="tpcapital", members=[PHONE])
    return int(created["id"])


def gateway_env(
    tg_server: TelegramServerProcess, dsn: str, channels: list[int], home: Path, **settings: str
) -> dict[str, str]:
    """The environment of a real `tgstack gateway` on the test server: this process's minus
    any TGSTACK_ setting, plus the given ``settings`` (name without the TGSTACK_ prefix)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TGSTACK_")}
    home.mkdir(parents=True, exist_ok=True)
    return (
        base
        | {
            "TGSTACK_DATABASE_URL": dsn,
            "TGSTACK_CHANNELS": ",".join(str(marked(c)) for c in channels),
            "TGSTACK_TELEGRAM_API_ID": "12345",
            "TGSTACK_TELEGRAM_API_HASH": "0123456789abcdef0123456789abcdef",
            "TGSTACK_TELEGRAM_SESSION": str(home / "session" / "gateway"),
            "TGSTACK_TELEGRAM_SERVER": f"127.0.0.1:{tg_server.port}",
            "TGSTACK_TELEGRAM_SERVER_DC": str(tg_server.dc_id),
            "TGSTACK_TELEGRAM_SERVER_RSA_KEY": str(tg_server.state_dir / "server_public.pem"),
            "TGSTACK_GATEWAY_SOURCE": "telethon",
            "TGSTACK_GATEWAY_PORT": str(free_port()),
            "TGSTACK_GATEWAY_BATCH_DELAY_MS": "0",
        }
        | {f"TGSTACK_{name.upper()}": value for name, value in settings.items()}
    )


@pytest.fixture
def environment(
    tg_server: TelegramServerProcess, db: TestDatabase, channel: int, tmp_path: Path
) -> dict[str, str]:
    return gateway_env(
        tg_server, db.app_dsn, [channel], tmp_path, gateway_backfill_interval_seconds="10"
    )


def login(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tgstack", "login", *args],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def gateway(environment: dict[str, str], tmp_path: Path) -> Iterator[Gateway]:
    done = login(environment, "--phone", PHONE, "--code", TEST_CODE)
    assert done.returncode == 0, done.stderr
    running = Gateway(environment, tmp_path / "gateway.log")
    try:
        yield running
    finally:
        running.stop()


def stored(db: TestDatabase, channel: int) -> dict[int, tuple[str | None, bool, int]]:
    """message_id -> (text, soft-deleted, rows) of the channel."""
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        rows = conn.execute(
            "SELECT message_id, max(text), bool_or(deleted_at IS NOT NULL), count(*) "
            "FROM telegram_gateway.messages WHERE channel_id = %s GROUP BY message_id",
            (marked(channel),),
        ).fetchall()
    return {mid: (text, deleted, count) for mid, text, deleted, count in rows}


def test_login_is_non_interactive_and_writes_a_private_session(
    environment: dict[str, str], channel: int
) -> None:
    done = login(environment, "--phone", PHONE, "--code", TEST_CODE)
    assert done.returncode == 0, done.stderr
    assert "logged in as Operator" in done.stdout
    assert "1 of 1 configured channel(s) among the account's dialogs" in done.stdout
    session = Path(environment["TGSTACK_TELEGRAM_SESSION"] + ".session")
    assert stat.S_IMODE(session.stat().st_mode) == 0o600
    assert stat.S_IMODE(session.parent.stat().st_mode) == 0o700
    again = login(environment)  # already authorised: asks for nothing
    assert again.returncode == 0, again.stderr


def test_login_without_answers_and_without_a_terminal_fails_in_one_line(
    environment: dict[str, str],
) -> None:
    done = login(environment)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "tgstack: login failed: the phone number needed and no terminal to ask on: "
        "give --phone or TGSTACK_LOGIN_PHONE"
    ]


def test_login_reports_a_configured_channel_the_account_cannot_see(
    environment: dict[str, str], control: ControlClient
) -> None:
    other = control.create_channel("Not joined", username="notjoined", members=[])
    env = environment | {
        "TGSTACK_CHANNELS": f"{environment['TGSTACK_CHANNELS']},{marked(int(other['id']))}"
    }
    done = login(env, "--phone", PHONE, "--code", TEST_CODE)
    assert done.returncode == 0, done.stderr
    assert "1 of 2 configured channel(s)" in done.stdout
    assert f"channel {marked(int(other['id']))} is not among the account's dialogs" in done.stderr


def test_fresh_session_resolves_backfills_and_stores_live_posts_edits_and_deletes_once(
    gateway: Gateway, control: ControlClient, channel: int, db: TestDatabase
) -> None:
    history = [control.post(channel, f"before start {n}")["id"] for n in range(3)]
    gateway.start()
    gateway.wait_healthy()
    wait_until(lambda: len(stored(db, channel)) == 3, WAIT, "the backfilled history")

    live = [control.post(channel, f"live {n}")["id"] for n in range(5)]
    control.edit(channel, live[1], "live 1, edited")
    control.delete(channel, [live[2]])
    wait_until(
        lambda: (
            (rows := stored(db, channel)).get(live[1], ("",))[0] == "live 1, edited"
            and rows.get(live[2], (None, False))[1]
            and len(rows) == 8
        ),
        WAIT,
        "live posts, the edit and the deletion",
    )
    rows = stored(db, channel)
    assert sorted(rows) == sorted(history + live)
    assert all(count == 1 for _, _, count in rows.values())
    assert rows[live[0]] == ("live 0", False, 1)
    assert gateway.stop() == 0


def stored_replies(db: TestDatabase, channel: int) -> dict[int, int | None]:
    """message_id -> reply_to_msg_id of the channel's stored posts."""
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        rows = conn.execute(
            "SELECT message_id, reply_to_msg_id FROM telegram_gateway.messages"
            " WHERE channel_id = %s",
            (marked(channel),),
        ).fetchall()
    return dict(rows)


def test_replies_are_stored_with_the_post_they_reply_to_from_history_and_live(
    gateway: Gateway, control: ControlClient, channel: int, db: TestDatabase
) -> None:
    signal = control.post(channel, "🟢Swing Trade\nAtivo: PETR4\nCompra: 36,50")["id"]
    from_history = control.post(channel, "Alvo 1 atingido ✅", reply_to=signal)["id"]
    gateway.start()
    gateway.wait_healthy()
    wait_until(lambda: len(stored(db, channel)) == 2, WAIT, "the backfilled history")

    live = control.post(channel, "Stop movido para a entrada", reply_to=signal)["id"]
    plain = control.post(channel, "Bom dia")["id"]
    wait_until(lambda: len(stored(db, channel)) == 4, WAIT, "the live posts")

    assert stored_replies(db, channel) == {
        signal: None,
        from_history: signal,
        live: signal,
        plain: None,
    }
    assert gateway.stop() == 0


def test_follow_ups_posted_as_replies_reach_their_signal_through_the_real_gateway(
    gateway: Gateway, control: ControlClient, channel: int, db: TestDatabase
) -> None:
    """Telegram's reply header, kept by the gateway, is what the poller links by: the reply
    goes to the older PETR4 signal although a newer one is open (linking by asset would
    choose that one)."""
    first = control.post(channel, "Ativo: PETR4\nCompra: 36,50\nAlvo 1: 39,00\nStop: 34,80")["id"]
    newer = control.post(channel, "Ativo: PETR4\nCompra: 37,10\nAlvo 1: 39,50\nStop: 35,20")["id"]
    gateway.start()
    gateway.wait_healthy()
    hit = control.post(channel, "Alvo 1 atingido ✅", reply_to=first)["id"]
    moved = control.post(channel, "Stop na entrada", reply_to=hit)["id"]
    wait_until(lambda: len(stored(db, channel)) == 4, WAIT, "the signals and their follow-ups")
    assert gateway.stop() == 0

    with Database(db.app_dsn, max_size=2) as database:
        SignalWorker(database, consumer="wire").drain()
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        links = conn.execute(
            "SELECT e.message_id, s.message_id, e.linked_by FROM tp_capital.signal_events e"
            " JOIN tp_capital.signals s ON s.id = e.signal_id WHERE e.channel_id = %s",
            (marked(channel),),
        ).fetchall()
        states = conn.execute(
            "SELECT message_id, status, current_stop FROM tp_capital.signals WHERE channel_id = %s",
            (marked(channel),),
        ).fetchall()
    assert sorted(links) == [(hit, first, "reply"), (moved, first, "reply")]
    assert sorted(states) == [
        (first, "target_1", Decimal("36.50")),
        (newer, "open", Decimal("35.20")),
    ]


def test_a_dropped_connection_and_a_server_restart_lose_and_double_nothing(
    gateway: Gateway, control: ControlClient, tg_server: TelegramServerProcess,
    channel: int, db: TestDatabase,
) -> None:  # fmt: skip
    gateway.start()
    gateway.wait_healthy()
    sent = [control.post(channel, f"first {n}")["id"] for n in range(5)]
    wait_until(lambda: len(stored(db, channel)) == 5, WAIT, "the first posts")

    control.drop_connections()
    sent += [control.post(channel, f"after drop {n}")["id"] for n in range(5)]
    tg_server.restart()
    restarted = tg_server.control()
    try:
        sent += [restarted.post(channel, f"after restart {n}")["id"] for n in range(5)]
    finally:
        restarted.close()
    wait_until(lambda: len(stored(db, channel)) == 15, 90, "every post after the faults")
    rows = stored(db, channel)
    assert sorted(rows) == sorted(sent)
    assert all(count == 1 for _, _, count in rows.values())
    assert not gateway.exited()


@pytest.mark.parametrize("reason", ["AUTH_KEY_UNREGISTERED", "SESSION_REVOKED"])
def test_a_revoked_session_stops_the_gateway_with_exit_78_and_one_line(
    gateway: Gateway, control: ControlClient, channel: int, reason: str
) -> None:
    gateway.start()
    gateway.wait_healthy()
    control.revoke(phone=PHONE, reason=reason)
    control.post(channel, "after the revocation")
    assert gateway.wait_exit(60) == 78
    fatal = [line for line in gateway.log.read_text().splitlines() if "fatal" in line]
    assert len(fatal) == 1, gateway.log.read_text()[-3000:]
    assert "run `tgstack login` again" in fatal[0]


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_a_flood_wait_on_history_is_waited_out_and_counted(
    gateway: Gateway, control: ControlClient, channel: int, db: TestDatabase
) -> None:
    control.post(channel, "history")
    control.flood("messages.getHistory", times=1, seconds=2)
    started = time.monotonic()
    gateway.start()
    gateway.wait_healthy()
    # The post itself may come first through Telethon's catch-up at start, which is not
    # flooded: what is waited out is the history read, asked again only after 2 s.
    wait_until(
        lambda: control.counters()["requests"].get("messages.getHistory", 0) >= 2,
        WAIT,
        "the history read asked again after the flood wait",
    )
    assert time.monotonic() - started >= 2
    wait_until(lambda: len(stored(db, channel)) == 1, WAIT, "the post")
    assert _metric(gateway.port, "tgstack_gateway_flood_wait_seconds_total") >= 2
    assert len(stored(db, channel)) == 1


def test_a_channel_joined_after_login_is_resolved_through_the_dialogs_despite_a_flood_wait(
    gateway: Gateway, control: ControlClient, channel: int, db: TestDatabase
) -> None:
    joined = int(control.create_channel("Joined later", username="later", members=[PHONE])["id"])
    control.post(joined, "in the later channel")
    gateway.env["TGSTACK_CHANNELS"] += f",{marked(joined)}"
    control.flood("messages.getDialogs", times=1, seconds=2)
    gateway.start()
    gateway.wait_healthy()
    wait_until(lambda: len(stored(db, joined)) == 1, WAIT, "the later channel's history")
    assert _metric(gateway.port, "tgstack_gateway_flood_wait_seconds_total") >= 2


def test_a_configured_channel_the_account_is_not_in_stops_the_gateway_with_exit_78(
    gateway: Gateway, control: ControlClient
) -> None:
    foreign = int(control.create_channel("Foreign", username="foreign", members=[])["id"])
    gateway.env["TGSTACK_CHANNELS"] += f",{marked(foreign)}"
    gateway.start()
    assert gateway.wait_exit(60) == 78
    fatal = [line for line in gateway.log.read_text().splitlines() if "fatal" in line]
    assert fatal == [
        f"tgstack: fatal: channel {marked(foreign)} is not among the Telegram account's "
        "dialogs: join it with this account (or remove it from TGSTACK_CHANNELS)"
    ]


CATCH_UP = 10.0  # far below the backfill interval and Telethon's own 15-minute channel deadline


@pytest.mark.parametrize("fault", ["dropped connection", "server restart"])
def test_posts_missed_while_disconnected_are_caught_up_as_soon_as_it_reconnects(
    gateway: Gateway, control: ControlClient, tg_server: TelegramServerProcess,
    channel: int, db: TestDatabase, fault: str,
) -> None:  # fmt: skip
    gateway.env["TGSTACK_GATEWAY_BACKFILL_INTERVAL_SECONDS"] = "3600"  # no round explains it
    gateway.start()
    gateway.wait_healthy()
    sent = [control.post(channel, "before the fault")["id"]]
    wait_until(lambda: len(stored(db, channel)) == 1, WAIT, "the live post")
    wait_until(lambda: gateway.backfill_rounds() == 1, WAIT, "the backfill round at start")

    # Posts the gateway never hears of, as if made while it was disconnected: not pushed, and
    # no later push reveals the gap.
    control.gap(channel, skip=3)
    sent += [control.post(channel, f"missed {n}")["id"] for n in range(3)]
    if fault == "dropped connection":
        control.drop_connections()
    else:
        port = tg_server.port
        tg_server.stop()
        wait_until(
            lambda: (gateway.health() or {}).get("telegram_connected") is False,
            WAIT,
            "the health check to see the connection down",
        )
        tg_server.start(port)
    wait_until(lambda: len(stored(db, channel)) == 4, CATCH_UP, "the catch-up after reconnecting")

    with tg_server.control() as after:  # the restarted server listens on a new control port
        sent.append(after.post(channel, "after the fault")["id"])
    wait_until(lambda: len(stored(db, channel)) == 5, WAIT, "a live post after the catch-up")
    rows = stored(db, channel)
    assert sorted(rows) == sorted(sent)
    assert all(count == 1 for _, _, count in rows.values())
    assert (gateway.health() or {}).get("telegram_connected") is True
    assert not gateway.exited()


FLOOD = 3  # seconds of the injected FloodWait


@pytest.mark.parametrize(
    ("method", "trigger"),
    [("updates.getDifference", "updates too long"), ("updates.getChannelDifference", "pts gap")],
)
def test_a_flood_wait_on_telethons_own_difference_is_counted_waited_out_and_loses_nothing(
    gateway: Gateway, control: ControlClient, channel: int, db: TestDatabase,
    method: str, trigger: str,
) -> None:  # fmt: skip
    gateway.env["TGSTACK_GATEWAY_BACKFILL_INTERVAL_SECONDS"] = "3600"  # no round explains it
    gateway.start()
    gateway.wait_healthy()
    sent = [control.post(channel, "before the flood")["id"]]
    wait_until(lambda: len(stored(db, channel)) == 1, WAIT, "the live post")
    wait_until(lambda: gateway.backfill_rounds() == 1, WAIT, "the backfill round at start")
    asked = control.counters()["requests"].get(method, 0)

    # Telethon's update loop must fetch the difference to see the posts that were not pushed,
    # and its first request for it meets a FloodWait.
    control.flood(method, times=1, seconds=FLOOD)
    control.gap(channel, skip=2)
    sent += [control.post(channel, f"not pushed {n}")["id"] for n in range(2)]
    started = time.monotonic()
    if trigger == "pts gap":
        sent.append(control.post(channel, "pushed, revealing the gap")["id"])
    else:
        assert control.updates_too_long(PHONE) >= 1
    wait_until(
        lambda: len(stored(db, channel)) == len(sent), FLOOD + CATCH_UP, "the posts after the wait"
    )
    assert time.monotonic() - started >= FLOOD  # asked again only once the wait was over
    assert _metric(gateway.port, "tgstack_gateway_flood_wait_seconds_total") == FLOOD
    assert control.counters()["requests"][method] >= asked + 2  # flooded, then asked again
    rows = stored(db, channel)
    assert sorted(rows) == sorted(sent)
    assert all(count == 1 for _, _, count in rows.values())
    assert gateway.flood_waits_logged() == [(FLOOD, method)]
