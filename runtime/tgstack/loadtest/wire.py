"""``--through telegram``: the load test's posts travel through the local Telegram server.

The job: drive load through the whole real ingest path, Telegram's protocol included. The
driver starts the local MTProto server (``python -m tgstack_testing.telegram serve``: test
tooling in the repository's ``testing/`` directory, not in the wheel, so it runs as a
subprocess and its control client is imported from that directory), creates an account and the
run's channels through the server's control port, and runs the real ``tgstack login --phone …
--code 12345`` and the real ``tgstack gateway`` (source ``telethon``) in processes of their own,
pointed at the server by ``TGSTACK_TELEGRAM_SERVER`` / ``_DC`` / ``_RSA_KEY``. The load test then
posts through the control port (``post_batch``: what is due, in one request); each post goes
server → MTProto push → Telethon in the gateway → pipeline → PostgreSQL → RabbitMQ → pollers.

Why one request per pacer tick, not per post: measured on the 2-core VM with no client
connected, a request of one post takes 0.13 ms (7,400 posts/s on one connection), of 100 posts
0.64 ms (155,000 posts/s). The sender runs on the cores the stack uses, so a late sender catches
up in a few requests rather than in thousands. The server's own work per post is larger (the
update encrypted for the gateway's connection: 22 % of a core at 300 posts/s under ``top``);
real Telegram does that elsewhere, so the figures through the wire are conservative.

Invariants:

* A post's sent time is the server's publish time (its answer to ``post_batch``): end-to-end
  latency is ``processed_at`` − that time, on the same host's clock. The server dates posts in
  whole seconds, which the observer allows for (``date_resolution``).
* Message ids are the server's. A warm-up post per channel (id 1 on a fresh world) proves the
  gateway live before the run; the run's ranges start after it and must be contiguous.
* A run counts as through the wire only if the server holds exactly the posts sent (plus the
  warm-ups) in the run's channels, pushed an update for each, every stored row of the run came
  from the gateway's Telegram client (source ``user_client`` or ``backfill``, never the
  in-process ``loadtest``) and the gateway stopped cleanly; anything else is a problem that
  fails the run.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

import tgstack
from tgstack.config import ENV_PREFIX, ConfigError, Settings
from tgstack.loadtest.fleet import settings_env
from tgstack.loadtest.plan import LoadPlan
from tgstack.loadtest.ports import free_port
from tgstack.loadtest.posts import PostFactory, SentPost
from tgstack.loadtest.sender import PREPARED_TEXTS
from tgstack.models import MessageKey

if TYPE_CHECKING:
    from tgstack_testing.telegram.control import ControlClient

SERVER_PACKAGE = "tgstack_testing"
SERVER_MODULE = "tgstack_testing.telegram"
PHONE = "+15550100"
CODE = "12345"  # the local server's login code for every phone
API_ID = "12345"  # any id and hash do for the local server; real credentials never go to it
API_HASH = "0123456789abcdef0123456789abcdef"
GATEWAY_SOURCES = ("user_client", "backfill")  # what the Telethon source stores rows as
MAX_BATCH = 500  # posts in one control request (a late sender catches up in a few requests)
START_TIMEOUT = 60.0  # the server writes its RSA key first: seconds on a busy machine
WARMUP_TIMEOUT = 60.0


class WireError(RuntimeError):
    """The path through the Telegram server could not be set up."""


def holds_server(directory: Path) -> bool:
    return (directory / SERVER_PACKAGE / "telegram" / "__main__.py").is_file()


def find_server_dir(given: Path | None = None) -> Path:
    """The directory that holds the ``tgstack_testing`` package (a checkout's ``testing/``).

    ``given`` (``--telegram-server-dir``) may name that directory or the checkout itself.
    Without it: wherever ``tgstack_testing`` is importable from, then the checkout ``tgstack``
    runs from (an editable install), then the current directory and its parents.
    """
    if given is not None:
        candidates = [given, given / "testing"]
    else:
        candidates = []
        spec = importlib.util.find_spec(SERVER_PACKAGE)
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(p).parent for p in spec.submodule_search_locations]
        here = Path(tgstack.__file__).resolve().parent
        candidates += [parent / "testing" for parent in here.parents]
        cwd = Path.cwd().resolve()
        candidates += [parent / "testing" for parent in (cwd, *cwd.parents)]
    for candidate in candidates:
        if holds_server(candidate):
            return candidate.resolve()
    where = f"in {given}" if given is not None else "next to this installation or the cwd"
    raise ConfigError(
        f"--telegram-server-dir: the local Telegram server ({SERVER_MODULE}) is not {where}; "
        "it ships with the repository, not the wheel: run from a checkout or give "
        "--telegram-server-dir <checkout>/testing"
    )


def marked(channel_id: int) -> int:
    """The marked (``-100…``) id a channel's rows are stored under."""
    return -1_000_000_000_000 - channel_id


class TelegramServer:
    """``python -m tgstack_testing.telegram serve`` in a process of its own, on free ports."""

    def __init__(self, server_dir: Path, state_dir: Path) -> None:
        self.server_dir = server_dir
        self.state_dir = state_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    @property
    def log(self) -> Path:
        return self.state_dir / "server.log"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        server_file = self.state_dir / "server.json"
        server_file.unlink(missing_ok=True)
        path = [str(self.server_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", SERVER_MODULE, "serve", "--state-dir", str(self.state_dir)],
                env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while not server_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise WireError(f"the Telegram server did not start; see {self.log}")
            time.sleep(0.05)
        self.info = json.loads(server_file.read_text())

    def control(self) -> ControlClient:
        """A client of the control port (imported from the server's directory)."""
        if str(self.server_dir) not in sys.path:
            sys.path.append(str(self.server_dir))
        module = importlib.import_module(f"{SERVER_MODULE}.control")
        client: ControlClient = module.ControlClient("127.0.0.1", int(self.info["control_port"]))
        return client

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def _tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


class WireSender:
    """Posts through the server's control port to a real ``tgstack gateway`` (a ``Sender``).

    One sender can serve several runs on one server: each run may add channels, logs in again
    (an authorised session only re-reads the dialogs) and starts a gateway of its own.
    """

    through = "telegram"
    date_resolution = 1.0  # Telegram dates posts in whole seconds

    def __init__(
        self,
        server: TelegramServer,
        control: ControlClient,
        *,
        progress: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.server = server
        self.control = control
        self.progress = progress
        control.create_account(PHONE, first_name="Load test")
        self.server_ids: list[int] = []
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gateway_port = 0
        self.gateway_code: int | None = None
        self.log_dir = server.state_dir
        self._factory: PostFactory | None = None
        self._channels: list[int] = []  # the run's, marked
        self._server_id: dict[int, int] = {}  # marked -> the server's id
        self._ids: dict[int, list[int]] = {}  # per marked channel: first id, last id, count
        self._warmups: dict[int, int] = {}  # per marked channel: posts before the run
        self._stored_before = 0

    # the Sender protocol ------------------------------------------------------------------

    def channels(self, plan: LoadPlan) -> list[int]:
        while len(self.server_ids) < plan.channels:
            number = len(self.server_ids) + 1
            created = self.control.create_channel(f"Load test {number}", members=[PHONE])
            self.server_ids.append(int(created["id"]))
        self._server_id = {marked(i): i for i in self.server_ids[: plan.channels]}
        self._channels = list(self._server_id)
        return list(self._channels)

    def start(self, settings: Settings, plan: LoadPlan) -> None:
        self._factory = PostFactory(
            self._channels, {}, signal_share=plan.signal_share, seed=plan.seed
        )
        self._factory.prepare(min(plan.total_posts, PREPARED_TEXTS))
        self._ids = {}
        self.gateway_code = None
        if plan.out_dir is not None:
            self.log_dir = plan.out_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self._environment(settings)
        self._login(env)
        self._start_gateway(env)
        self._warm_up(settings.require_database_url())

    def send(self, count: int) -> list[SentPost]:
        assert self._factory is not None, "start() first"
        sent: list[SentPost] = []
        while len(sent) < count:
            drafts = [self._factory.draft() for _ in range(min(MAX_BATCH, count - len(sent)))]
            answer = self.control.post_batch([(self._server_id[d.channel], d.text) for d in drafts])
            for draft, (message_id, published_at) in zip(drafts, answer, strict=True):
                seen = self._ids.setdefault(draft.channel, [message_id, message_id, 0])
                seen[1] = max(seen[1], message_id)
                seen[2] += 1
                sent.append(SentPost(MessageKey(draft.channel, message_id), published_at,
                                     draft.is_signal))  # fmt: skip
        return sent

    def stored(self) -> int | None:
        stored = self._gateway_stored()
        return None if stored is None else stored - self._stored_before

    def finish(self, timeout: float) -> None:
        """Nothing to hand on: the gateway commits what the server pushed as it arrives."""

    def stop(self) -> None:
        process, self.gateway = self.gateway, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)  # the gateway flushes its batch for up to 25 s
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.gateway_code = process.returncode

    @property
    def sent(self) -> int:
        return sum(count for _, _, count in self._ids.values())

    def id_ranges(self) -> dict[int, tuple[int, int]]:
        return {channel: (first, last) for channel, (first, last, _) in self._ids.items()}

    def report(self, conninfo: str) -> tuple[dict[str, Any], list[str]]:
        problems: list[str] = []
        channels = {int(c["id"]): c for c in self.control.info()["channels"]}
        counters = self.control.counters()
        server_posts = sum(int(channels[i]["messages"]) for i in self._server_id.values())
        warmups = sum(self._warmups.values())
        if server_posts != self.sent + warmups:
            problems.append(
                f"the Telegram server holds {server_posts:,} posts in the run's channels, not the "
                f"{self.sent:,} sent and {warmups} warm-up(s)"
            )
        if int(counters["pushes"]) < self.sent:
            problems.append(f"the server pushed {counters['pushes']:,} updates for {self.sent:,}"
                            " posts")  # fmt: skip
        for channel, (first, last, count) in self._ids.items():
            if last - first + 1 != count:
                problems.append(f"channel {channel}: {count:,} posts sent, ids {first}–{last}")
        sources = stored_sources(conninfo, self.id_ranges())
        foreign = {s: n for s, n in sources.items() if s not in GATEWAY_SOURCES}
        if foreign:
            problems.append(f"rows not stored by the gateway's Telegram client: {foreign}")
        if self.gateway_code != 0:
            problems.append(f"the gateway exited with {self.gateway_code}: "
                            f"{_tail(self._gateway_log)}")  # fmt: skip
        log_text = ""
        with contextlib.suppress(OSError):
            log_text = self._gateway_log.read_text(errors="replace")
        details = {
            "through": self.through,
            "gateway_batches_failed": log_text.count("batch failed; retrying"),
            "server": {
                "posts_in_run_channels": server_posts,
                "warmup_posts": warmups,
                "pushes": int(counters["pushes"]),
                "connections_total": int(counters["connections_total"]),
                "requests": counters["requests"],
            },
            "stored_by_source": sources,
            "gateway_exit_code": self.gateway_code,
            "gateway_log": str(self._gateway_log),
        }
        return details, problems

    # the gateway ---------------------------------------------------------------------------

    @property
    def _gateway_log(self) -> Path:
        return self.log_dir / "gateway.log"

    def _environment(self, settings: Settings) -> dict[str, str]:
        """The gateway's (and login's) settings: the run's stack, the local server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.pop("TGSTACK_ENV_FILE", None)
        self.gateway_port = free_port()
        info = self.server.info
        return env | settings_env(settings) | {
            "TGSTACK_CHANNELS": ",".join(map(str, self._channels)),
            "TGSTACK_GATEWAY_SOURCE": "telethon",
            "TGSTACK_GATEWAY_BIND": "127.0.0.1",
            "TGSTACK_GATEWAY_PORT": str(self.gateway_port),
            "TGSTACK_TELEGRAM_API_ID": API_ID,
            "TGSTACK_TELEGRAM_API_HASH": API_HASH,
            "TGSTACK_TELEGRAM_SESSION": str(self.server.state_dir / "session" / "gateway"),
            "TGSTACK_TELEGRAM_SERVER": f"{info['host']}:{info['port']}",
            "TGSTACK_TELEGRAM_SERVER_DC": str(info["dc_id"]),
            "TGSTACK_TELEGRAM_SERVER_RSA_KEY": str(info["public_key"]),
            "TGSTACK_LOG_FORMAT": "text",
            "TGSTACK_LOG_LEVEL": "WARNING",
        }

    def _login(self, env: dict[str, str]) -> None:
        self.progress(f"tgstack login --phone {PHONE} --code {CODE} (local Telegram server)")
        done = subprocess.run(
            [sys.executable, "-m", "tgstack", "login", "--phone", PHONE, "--code", CODE],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        (self.log_dir / "login.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            raise WireError(f"tgstack login failed: {last[0]}")

    def _start_gateway(self, env: dict[str, str]) -> None:
        self.progress(f"tgstack gateway (source telethon), health on port {self.gateway_port}")
        with self._gateway_log.open("ab") as log:
            self.gateway = subprocess.Popen(
                [sys.executable, "-m", "tgstack", "gateway"],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while self._health() != "ok":
            if self.gateway.poll() is not None:
                raise WireError(f"the gateway exited with {self.gateway.returncode}: "
                                f"{_tail(self._gateway_log)}")  # fmt: skip
            if time.monotonic() > deadline:
                raise WireError(f"the gateway was not healthy within {START_TIMEOUT:g} s")
            time.sleep(0.2)

    def _health(self) -> str | None:
        url = f"http://127.0.0.1:{self.gateway_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(json.loads(response.read()).get("status"))
        except (OSError, ValueError):
            return None

    def _gateway_stored(self) -> int | None:
        url = f"http://127.0.0.1:{self.gateway_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return None
        return int(_metric(text, "tgstack_gateway_messages_stored_total"))

    def _warm_up(self, conninfo: str) -> None:
        """One post per channel, until the gateway has stored each: it receives live now."""
        answer = self.control.post_batch(
            [(self._server_id[channel], "warm-up") for channel in self._channels]
        )
        keys = [(c, message_id) for c, (message_id, _) in zip(self._channels, answer, strict=True)]
        for channel in self._channels:
            self._warmups[channel] = self._warmups.get(channel, 0) + 1
        deadline = time.monotonic() + WARMUP_TIMEOUT
        while _count_keys(conninfo, keys) < len(keys):
            if self.gateway is not None and self.gateway.poll() is not None:
                raise WireError(f"the gateway exited with {self.gateway.returncode}: "
                                f"{_tail(self._gateway_log)}")  # fmt: skip
            if time.monotonic() > deadline:
                raise WireError(f"the warm-up posts were not stored within {WARMUP_TIMEOUT:g} s")
            time.sleep(0.1)
        self._stored_before = self._gateway_stored() or 0
        self.progress("the gateway stores posts from the Telegram server: sending")


def _count_keys(conninfo: str, keys: list[tuple[int, int]]) -> int:
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        row = conn.execute(
            "SELECT count(*) FROM telegram_gateway.message_keys k"
            " JOIN unnest(%s::bigint[], %s::bigint[]) AS u(channel_id, message_id)"
            " ON k.channel_id = u.channel_id AND k.message_id = u.message_id",
            ([c for c, _ in keys], [m for _, m in keys]),
        ).fetchone()
    return int(row[0]) if row is not None else 0


def stored_sources(conninfo: str, ranges: dict[int, tuple[int, int]]) -> dict[str, int]:
    """The run's stored rows by ``source`` (who wrote them)."""
    channels = sorted(ranges)
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        rows = conn.execute(
            "SELECT m.source, count(*) FROM telegram_gateway.messages m"
            " JOIN unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS r(channel_id, first_id,"
            " last_id) ON m.channel_id = r.channel_id AND m.message_id BETWEEN r.first_id"
            " AND r.last_id GROUP BY m.source",
            (channels, [ranges[c][0] for c in channels], [ranges[c][1] for c in channels]),
        ).fetchall()
    return {str(source): int(count) for source, count in rows}


@contextlib.contextmanager
def telegram_wire(
    state_dir: Path,
    *,
    server_dir: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Iterator[WireSender]:
    """The local Telegram server under ``state_dir`` and a sender through it; stopped after."""
    server = TelegramServer(find_server_dir(server_dir), state_dir)
    progress(f"starting the local Telegram server ({server.server_dir}) under {state_dir}")
    server.start()
    try:
        with server.control() as control:
            sender = WireSender(server, control, progress=progress)
            try:
                yield sender
            finally:
                sender.stop()
    finally:
        server.stop()
