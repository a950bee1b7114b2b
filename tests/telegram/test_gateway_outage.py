"""PostgreSQL stopped under the real `tgstack gateway` while 20,000 posts arrive over the wire.

The gateway's live queue is bounded (TGSTACK_GATEWAY_QUEUE_LIMIT): once full it refuses new
posts and marks their channels for backfill, spills edits and deletions to disk, and its memory
stays flat. When PostgreSQL is back the queue drains, the spill is applied in order and the
marked channels are read again from Telegram: every post is stored once, every edit and
deletion applied. The gateway's resident memory is sampled from /proc all along.

PostgreSQL stays down for OUTAGE_SECONDS (2 minutes): the 20,000 posts arrive in the first
POST_SECONDS, then the gateway sits on its full queue and its spill for the rest.

Measured (posts of ~1,000 characters with an emoji, ~5 KB each in memory): RSS 90 MB before the
outage, peak 114 MB during it (+24 MB) with the limit at 2,000; the same run with the limit at
1,000,000 (no bound in effect) peaks at 192 MB (+102 MB), and grows by 5 KB for every post
more. Every post was stored 8 s after PostgreSQL was back.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from tgstack.migrate import apply_migrations
from tgstack_testing.localstack import DataStack, wait_until
from tgstack_testing.telegram.control import ControlClient

from .conftest import PHONE, TelegramServerProcess
from .test_gateway import WAIT, Gateway, _metric, marked
from .test_gateway_floods import gateway_env, logged_in

CHANNELS = 4
POSTS = 20_000  # while PostgreSQL is down, spread over the channels
POST_SECONDS = 60.0
OUTAGE_SECONDS = 120.0
MEMORY_MAX_MB = 512  # the gateway unit's MemoryMax (tgstack_runtime_limits)
# A signal post of ~1,000 characters with an emoji (Python then holds 4 bytes a character).
TEXT = "🟢 Swing Trade {n}\n" + "Ativo: PETR4 Compra: 36,50 a 36,80 Alvo: 38,90 Stop: 34,80\n" * 17
QUEUE_LIMIT = 2_000
# The gateway may grow by the queue it holds (2,000 posts of ~5 KB: 10 MB) plus what Telethon
# and the allocator keep while 20,000 updates pass through (+24 MB in all, measured); holding
# every post, as an unbounded queue does, grows it by 102 MB.
RSS_GROWTH_BOUND_MB = 40


class RssSampler:
    """Samples a process's VmRSS from /proc every 50 ms; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise LookupError(field)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak_kb = max(self.peak_kb, self.read())
            except (OSError, LookupError):
                return

    def __enter__(self) -> RssSampler:
        self.peak_kb = self.read()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def compiled_bytecode(env: dict[str, str], cache: Path) -> dict[str, str]:
    """The environment with the gateway's bytecode compiled once into ``cache``.

    Without .pyc files (this machine sets PYTHONDONTWRITEBYTECODE and the virtualenv has none)
    every start compiles Telethon's TL modules, and the allocator keeps the ~90 MB that takes
    as free heap: the queue would grow into it unseen by RSS. Installed packages are compiled
    (pip does it by default), so this is also how a deployed gateway starts.
    """
    env = env | {"PYTHONPYCACHEPREFIX": str(cache)}
    warm = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [sys.executable, "-c", "import tgstack.cli, tgstack.gateway.service"],
        env=warm, check=True, timeout=300,
    )  # fmt: skip
    return env


def stored_rows(dsn: str) -> dict[tuple[int, int], tuple[str | None, bool, int]]:
    import psycopg

    with psycopg.connect(dsn, prepare_threshold=None) as conn:
        rows = conn.execute(
            "SELECT channel_id, message_id, max(text), bool_or(deleted_at IS NOT NULL), count(*)"
            " FROM telegram_gateway.messages GROUP BY channel_id, message_id"
        ).fetchall()
    return {(ch, mid): (text, deleted, count) for ch, mid, text, deleted, count in rows}


def post_concurrently(tg_server: TelegramServerProcess, channels: list[int]) -> list[list[int]]:
    """POSTS posts spread over the channels at an even rate, one control connection each."""
    per_channel = POSTS // len(channels)
    ids: list[list[int]] = [[] for _ in channels]

    def post(n: int) -> None:
        with tg_server.control() as control:
            done = control.post_many(
                channels[n], per_channel, rate=per_channel / POST_SECONDS, text=TEXT
            )
        ids[n] = list(range(int(done["first_id"]), int(done["last_id"]) + 1))

    threads = [threading.Thread(target=post, args=(n,)) for n in range(len(channels))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids


def test_postgresql_down_while_20000_posts_arrive_keeps_memory_bounded_and_loses_nothing(
    control: ControlClient, tg_server: TelegramServerProcess, own_data_stack: DataStack,
    tmp_path: Path, gateways: list[Gateway],
) -> None:  # fmt: skip
    apply_migrations(own_data_stack.direct_dsn)
    dsn = own_data_stack.app_dsn
    control.create_account(PHONE, first_name="Operator")
    channels = [
        int(control.create_channel(f"C{n}", username=f"c{n}", members=[PHONE])["id"])
        for n in range(CHANNELS)
    ]
    env = gateway_env(tg_server, dsn, channels, tmp_path)
    env |= {
        "TGSTACK_GATEWAY_QUEUE_LIMIT": str(QUEUE_LIMIT),
        "TGSTACK_GATEWAY_HISTORY_RATE": "50",
        "TGSTACK_GATEWAY_HISTORY_BURST": "50",
    }
    gateway = logged_in(env, PHONE, tmp_path)
    gateway.env = compiled_bytecode(gateway.env, tmp_path / "pycache")
    gateways.append(gateway)
    gateway.start()
    gateway.wait_healthy()
    before = {ch: [control.post(ch, f"before {n}")["id"] for n in range(3)] for ch in channels}
    wait_until(lambda: len(stored_rows(dsn)) == 3 * CHANNELS, WAIT, "the posts before")
    assert gateway.process is not None
    first = channels[0]

    with RssSampler(gateway.process.pid) as rss:
        rss_before_kb = rss.read()
        own_data_stack.postgres.stop()
        outage = time.monotonic()
        during: list[list[int]] = []
        posting = threading.Thread(
            target=lambda: during.extend(post_concurrently(tg_server, channels))
        )
        posting.start()
        wait_until(
            lambda: _metric(gateway.port, 'tgstack_gateway_queue_overflow_total{kind="new"}') > 0,
            POST_SECONDS, "the queue to overflow",
        )  # fmt: skip
        # Edits and deletions while the queue overflows: of posts stored before the outage...
        control.edit(first, before[first][0], "before 0, edited while down")
        control.delete(first, [before[first][1]])
        posting.join()
        # ...and of posts the full queue refused.
        refused_edit, refused_delete = during[0][-1], during[0][-2]
        control.edit(first, refused_edit, "refused, then edited while down")
        control.delete(first, [refused_delete])
        wait_until(
            lambda: _metric(gateway.port, "tgstack_gateway_spilled_events") == 4,
            WAIT, "the edits and deletions to be spilled",
        )  # fmt: skip
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage)))
        marked_channels = _metric(gateway.port, "tgstack_gateway_backfill_pending_channels")
        spilled = _metric(gateway.port, "tgstack_gateway_spilled_events")
        depth = _metric(gateway.port, "tgstack_gateway_queue_depth")
        refused = _metric(gateway.port, 'tgstack_gateway_queue_overflow_total{kind="new"}')
        down_for = time.monotonic() - outage
        own_data_stack.postgres.start()
        restarted = time.monotonic()

        expected = {(marked(ch), mid) for ch in channels for mid in before[ch]}
        expected |= {
            (marked(ch), mid) for ch, ids in zip(channels, during, strict=True) for mid in ids
        }
        expected.discard((marked(first), refused_delete))  # deleted before it was ever stored
        wait_until(lambda: set(stored_rows(dsn)) >= expected, 180, "every post after the outage")
        recovered = time.monotonic() - restarted
        wait_until(
            lambda: _metric(gateway.port, "tgstack_gateway_backfill_pending_channels") == 0,
            WAIT, "the marks to be cleared",
        )  # fmt: skip
        peak_kb = rss.peak_kb
        hwm_kb = rss.read("VmHWM")

    growth_mb = (peak_kb - rss_before_kb) / 1024
    print(
        f"\nPostgreSQL down {down_for:.0f} s, {POSTS:,} posts + 2 edits + 2 deletions meanwhile;"
        f" queue limit {QUEUE_LIMIT:,}: depth {depth:.0f}, {refused:.0f} new posts refused, "
        f"{marked_channels:.0f} channels marked for backfill, {spilled:.0f} events spilled"
        f"\nRSS: {rss_before_kb / 1024:.1f} MB before the outage, peak {peak_kb / 1024:.1f} MB "
        f"during it (+{growth_mb:.1f} MB), VmHWM {hwm_kb / 1024:.1f} MB"
        f"\nevery post stored {recovered:.1f} s after PostgreSQL was back"
    )
    rows = stored_rows(dsn)
    assert set(rows) == expected
    assert all(count == 1 for _, _, count in rows.values())
    assert marked_channels == CHANNELS
    assert depth <= QUEUE_LIMIT
    assert refused > 0
    assert rows[(marked(first), before[first][0])] == ("before 0, edited while down", False, 1)
    assert rows[(marked(first), before[first][1])][1] is True  # soft-deleted
    assert rows[(marked(first), refused_edit)][0] == "refused, then edited while down"
    assert down_for >= OUTAGE_SECONDS
    assert growth_mb < RSS_GROWTH_BOUND_MB
    assert hwm_kb / 1024 < MEMORY_MAX_MB
    assert _metric(gateway.port, "tgstack_gateway_spilled_events") == 0
    assert not gateway.exited()
