"""Fixtures for the local Telegram server: the server in a subprocess, its control client, and
real, unpatched Telethon clients pointed at it.

Each test gets its own server (own state directory, free loopback ports); all servers share one
RSA key generated once per pytest session, so Telethon's key registry is filled once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from telethon import TelegramClient
from telethon.crypto import rsa as telethon_rsa
from telethon.sessions import MemorySession, SQLiteSession

from tgstack_testing.telegram.control import ControlClient
from tgstack_testing.telegram.handshake import PRIVATE_KEY_FILE, ServerKey

if TYPE_CHECKING:
    from .test_gateway import Gateway

REPO = Path(__file__).resolve().parents[2]
TEST_CODE = "12345"
PHONE = "+15550001"
START_TIMEOUT = 20.0


class TelegramServerProcess:
    """`python -m tgstack_testing.telegram serve` on free ports, stoppable and restartable."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, object] = {}

    @property
    def port(self) -> int:
        return int(str(self.info["port"]))

    @property
    def dc_id(self) -> int:
        return int(str(self.info["dc_id"]))

    def start(self, port: int = 0) -> None:
        server_file = self.state_dir / "server.json"
        server_file.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO / "testing")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tgstack_testing.telegram", "serve",
             "--state-dir", str(self.state_dir), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.state_dir / "server.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not server_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {self.state_dir / 'server.log'}")
            time.sleep(0.05)
        self.info = json.loads(server_file.read_text())

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port, as a server restart looks to clients."""
        port = self.port
        self.stop()
        self.start(port)

    def control(self) -> ControlClient:
        return ControlClient("127.0.0.1", int(str(self.info["control_port"])))


@pytest.fixture(scope="session")
def server_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One RSA key for every test server, registered once with Telethon.

    Made with `cryptography` (milliseconds) rather than the server's own pure-Python
    generation (seconds, and far more on a busy machine); the server loads it like its own.
    """
    key_dir = tmp_path_factory.mktemp("tg-key")
    private = rsa_keys.generate_private_key(public_exponent=65537, key_size=2048)
    (key_dir / PRIVATE_KEY_FILE).write_bytes(private.private_bytes(
        Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption()))
    key = ServerKey.load_or_create(key_dir)
    telethon_rsa.add_key(key.public_pem.decode(), old=False)
    return key_dir


def _running_server(state_dir: Path, key_dir: Path) -> Iterator[TelegramServerProcess]:
    state_dir.mkdir()
    shutil.copy(key_dir / PRIVATE_KEY_FILE, state_dir / PRIVATE_KEY_FILE)
    server = TelegramServerProcess(state_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tg_server(tmp_path: Path, server_key_dir: Path) -> Iterator[TelegramServerProcess]:
    """A server of this test's own: fresh world, free ports."""
    yield from _running_server(tmp_path / "tg-state", server_key_dir)


@pytest.fixture(scope="module")
def shared_tg_server(
    tmp_path_factory: pytest.TempPathFactory, server_key_dir: Path
) -> Iterator[TelegramServerProcess]:
    """One server for a module whose tests don't touch the world (protocol-level tests)."""
    yield from _running_server(tmp_path_factory.mktemp("tg") / "tg-state", server_key_dir)


@pytest.fixture
def control(tg_server: TelegramServerProcess) -> Iterator[ControlClient]:
    client = tg_server.control()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ClientFactory = Callable[..., Awaitable[TelegramClient]]


@pytest.fixture
async def make_client(tg_server: TelegramServerProcess) -> AsyncIterator[ClientFactory]:
    """Build real TelegramClients for the test server; `login=True` runs client.start()."""
    clients: list[TelegramClient] = []

    async def factory(
        session: str | Path | None = None,
        *,
        phone: str = PHONE,
        login: bool = True,
        **options: object,
    ) -> TelegramClient:
        store = SQLiteSession(str(session)) if session else MemorySession()
        if not store.server_address or store.port != tg_server.port:
            store.set_dc(tg_server.dc_id, "127.0.0.1", tg_server.port)
        options.setdefault("connection_retries", 2)
        options.setdefault("retry_delay", 0.2)
        client = TelegramClient(store, 12345, "0123456789abcdef", **options)  # type: ignore[arg-type]
        clients.append(client)
        if login:
            await client.start(phone=phone, code_callback=lambda: TEST_CODE)
        else:
            await client.connect()
        return client

    yield factory
    for client in clients:
        if client.is_connected():
            await client.disconnect()


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    """Gateways a test starts, stopped at its end."""
    started: list[Gateway] = []
    try:
        yield started
    finally:
        for gateway in started:
            gateway.stop()
