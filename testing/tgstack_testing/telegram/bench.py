"""Push benchmark: how many channel posts per second reach one real Telethon client.

Starts the server in a subprocess on a temporary state directory, logs one TelegramClient in,
posts ``count`` messages through the control port as fast as the server takes them and prints
messages per second, measured from the first post until Telethon dispatched the last
NewMessage event. Run: ``PYTHONPATH=testing python -m tgstack_testing.telegram bench``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from telethon import TelegramClient, events
from telethon.crypto import rsa as telethon_rsa
from telethon.sessions import MemorySession

from .control import ControlClient

PHONE = "+15550001"


def _start(state_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tgstack_testing.telegram", "serve", "--state-dir", str(state_dir)],
        env=env,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


async def _measure(info: dict[str, object], count: int) -> float:
    telethon_rsa.add_key(Path(str(info["public_key"])).read_text(), old=False)
    control = ControlClient("127.0.0.1", int(str(info["control_port"])))
    channel = control.create_channel("Bench", "bench", [PHONE])["id"]
    control.post(channel, "warm-up")
    session = MemorySession()
    session.set_dc(int(str(info["dc_id"])), "127.0.0.1", int(str(info["port"])))
    client = TelegramClient(session, 12345, "0123456789abcdef")
    await client.start(phone=PHONE, code_callback=lambda: "12345")
    await client.get_dialogs()
    received = 0
    done = asyncio.Event()

    async def on_message(_: events.NewMessage.Event) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    client.add_event_handler(on_message, events.NewMessage())
    started = time.perf_counter()
    # The control call blocks until the server has queued every post; run it off the loop.
    await asyncio.to_thread(control.post_many, channel, count, 0.0, "bench {n}")
    await asyncio.wait_for(done.wait(), timeout=max(60.0, count / 200))
    elapsed = time.perf_counter() - started
    await client.disconnect()
    control.close()
    return count / elapsed


def run(count: int) -> int:
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as state_dir:
        process, info = _start(Path(state_dir))
        try:
            rate = asyncio.run(_measure(info, count))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
    print(f"pushed {count} messages to one Telethon client: {rate:,.0f} messages/s")
    return 0
