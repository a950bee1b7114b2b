"""``tgstack loadtest --through telegram``: load through the local Telegram server, briefly.

The wire driver starts the server itself, logs in with the real ``tgstack login`` and runs the
real ``tgstack gateway``; the run is then counted like any load test (every post stored once,
finished once, each signal once) and, on top, must show that every post went through the
server: the server holds exactly the posts sent, pushed each, and every row was stored by the
gateway's Telegram client. A sender that hands posts to the pipeline in process instead is
caught by those checks even though nothing is lost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tgstack.config import Settings
from tgstack.loadtest.plan import LoadPlan
from tgstack.loadtest.posts import SentPost
from tgstack.loadtest.runner import run_loadtest
from tgstack.loadtest.sender import InProcessSender
from tgstack.loadtest.wire import WireSender, telegram_wire
from tgstack_testing.telegram.handshake import PRIVATE_KEY_FILE


@pytest.fixture
def state_dir(tmp_path: Path, server_key_dir: Path) -> Path:
    """The server's state directory, holding the session's RSA key (no key generation)."""
    state = tmp_path / "telegram"
    state.mkdir()
    shutil.copy(server_key_dir / PRIVATE_KEY_FILE, state / PRIVATE_KEY_FILE)
    return state


def plan(tmp_path: Path, **changes: object) -> LoadPlan:
    values: dict[str, object] = {
        "rate": 20.0,
        "duration": 5.0,
        "channels": 2,
        "pollers": 1,
        "poller_kind": "thread",
        "mode": "queue",
        "warmup": 1.0,
        "drain_timeout": 60.0,
        "label": "wire",
        "out_dir": tmp_path / "result",
        "plot": False,
        "progress": False,
    }
    values.update(changes)
    return LoadPlan(**values)  # type: ignore[arg-type]


def test_posts_paced_through_the_telegram_server_are_stored_and_processed_once(
    stack_settings: Settings, state_dir: Path, tmp_path: Path
) -> None:
    with telegram_wire(state_dir) as wire:
        result = run_loadtest(stack_settings, plan(tmp_path), out=None, sender=wire)

    assert result.ok, result.problems()
    acc = result.accounting
    assert acc.sent == 100
    assert acc.unique_rows == acc.rows == acc.ledger_keys == acc.marked_once == 100
    assert acc.processed + acc.ignored == 100
    assert acc.signals == acc.expected_signals > 0
    assert len(result.done) == 100
    server = result.path["server"]
    assert server["warmup_posts"] == 2
    assert server["posts_in_run_channels"] == 100 + 2
    assert server["pushes"] >= 100 + 2
    assert server["requests"]["auth.signIn"] == 1  # the real tgstack login, once
    assert sum(result.path["stored_by_source"].values()) == 100
    assert set(result.path["stored_by_source"]) <= {"user_client", "backfill"}
    assert result.path["gateway_exit_code"] == 0
    # sent = the server's publish time, before the gateway's commit (one host, one clock)
    assert all(d.sent_at <= d.received_at <= d.processed_at + 1e-3 for d in result.done)
    assert (tmp_path / "result" / "logs" / "gateway.log").exists()


class InjectingSender(WireSender):
    """Sets the server and gateway up like the wire, then hands posts in process instead."""

    def start(self, settings: Settings, plan: LoadPlan) -> None:
        super().start(settings, plan)
        self.inner = InProcessSender()
        self.inner.start(settings.model_copy(update={"channels": self._channels}), plan)

    def send(self, count: int) -> list[SentPost]:
        return self.inner.send(count)

    def finish(self, timeout: float) -> None:
        self.inner.finish(timeout)

    def stop(self) -> None:
        if hasattr(self, "inner"):
            self.inner.stop()
        super().stop()

    @property
    def sent(self) -> int:
        return self.inner.sent

    def id_ranges(self) -> dict[int, tuple[int, int]]:
        return self.inner.id_ranges()


def test_posts_injected_in_process_fail_the_run_though_nothing_is_lost(
    stack_settings: Settings, state_dir: Path, tmp_path: Path
) -> None:
    with telegram_wire(state_dir) as wire:
        injecting = InjectingSender(wire.server, wire.control)
        result = run_loadtest(
            stack_settings, plan(tmp_path, duration=2.0), out=None, sender=injecting
        )

    assert result.accounting.ok  # zero loss alone cannot tell the paths apart
    assert not result.ok
    problems = "\n".join(result.problems())
    assert "the Telegram server holds 2 posts in the run's channels, not the 40 sent" in problems
    assert "rows not stored by the gateway's Telegram client: {'loadtest': 40}" in problems


def loadtest_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGSTACK_")}
    return subprocess.run(
        [sys.executable, "-m", "tgstack", "loadtest", *args],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_cli_refuses_the_wire_without_a_local_stack_or_a_server_and_says_why(
    tmp_path: Path,
) -> None:
    deployed = loadtest_cli("--through", "telegram")
    missing = loadtest_cli("--local", "--through", "telegram", "--telegram-server-dir",
                           str(tmp_path))  # fmt: skip

    assert deployed.returncode == 2
    assert "--through telegram needs --local" in deployed.stderr
    assert missing.returncode == 2  # before any server of the local stack starts
    assert "the local Telegram server (tgstack_testing.telegram) is not in" in missing.stderr
    assert "starting PostgreSQL" not in missing.stderr
