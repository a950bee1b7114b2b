"""The gateway service: /health and /metrics on one port, SIGTERM-style stop flushes the batch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg

from tests.conftest import TestDatabase
from tests.telegram_fakes import CHANNEL, FakeTelegram
from tgstack.config import Settings
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.service import GatewayService
from tgstack.gateway.synthetic import generate
from tgstack.gateway.wiring import components
from tgstack_testing.localstack import free_port, wait_until


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def answers(port: int) -> bool:
    try:
        get(port, "/health")
    except urllib.error.URLError:
        return False
    return True


def test_health_metrics_and_graceful_stop_flushes_every_event(db: TestDatabase) -> None:
    port = free_port()
    settings = Settings(
        database_url=db.app_dsn,  # type: ignore[arg-type]
        channels=[CHANNEL],  # type: ignore[arg-type]
        gateway_port=port,
        gateway_batch_size=50,
        gateway_batch_delay_ms=1000,  # a long delay: the stop must flush what is queued
    )
    fake = FakeTelegram([])
    errors: list[BaseException] = []
    with components(settings, source="gateway") as parts:
        service = GatewayService(settings, parts, fake)

        def run() -> None:
            try:
                asyncio.run(service.run())
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        wait_until(lambda: get(port, "/health")[0] == 200, 20, "gateway health")
        status, body = get(port, "/health")
        health: dict[str, Any] = json.loads(body)
        assert (status, health["status"], health["telegram_connected"], health["database"]) == (
            200,
            "ok",
            True,
            True,
        )
        for record in generate(120, channels=(CHANNEL,)):
            service.worker.submit(MessageEvent.new(record))
        started = time.monotonic()
        service.request_stop()
        thread.join(60)
        assert not thread.is_alive()
        assert time.monotonic() - started < 30
    assert not errors
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        stored = conn.execute("SELECT count(*) FROM telegram_gateway.messages").fetchone()
    assert stored == (120,)


def settings_for(db: TestDatabase) -> Settings:
    return Settings(
        database_url=db.app_dsn,  # type: ignore[arg-type]
        channels=[CHANNEL],  # type: ignore[arg-type]
        gateway_port=free_port(),
    )


@contextlib.contextmanager
def running(settings: Settings, fake: FakeTelegram) -> Iterator[GatewayService]:
    """The gateway service over ``fake``, run in a thread and stopped at the end."""
    with components(settings, source="gateway") as parts:
        service = GatewayService(settings, parts, fake)
        thread = threading.Thread(target=asyncio.run, args=(service.run(),))
        thread.start()
        try:
            yield service
        finally:
            service.request_stop()
            thread.join(60)


def test_health_is_503_when_telegram_is_disconnected(db: TestDatabase) -> None:
    settings = settings_for(db)
    port = settings.gateway_port
    fake = FakeTelegram([])
    with running(settings, fake):
        wait_until(lambda: get(port, "/health")[0] == 200, 20, "gateway health")
        fake._connected = False
        status, body = get(port, "/health")
        metrics_status, metrics = get(port, "/metrics")
    assert status == 503
    assert json.loads(body)["telegram_connected"] is False
    assert metrics_status == 200
    assert b"tgstack_gateway_telegram_connected 0.0" in metrics


def test_health_is_503_until_the_session_is_verified_and_the_channels_resolved(
    db: TestDatabase,
) -> None:
    """A connected socket is not a working gateway: a revoked session is only found by asking."""
    settings = settings_for(db)
    port = settings.gateway_port
    fake = FakeTelegram([])
    release = threading.Event()
    answer = fake.is_user_authorized

    async def slow_is_user_authorized() -> bool:
        await asyncio.to_thread(release.wait, 30)
        return await answer()

    fake.is_user_authorized = slow_is_user_authorized  # type: ignore[method-assign]
    try:
        with running(settings, fake):
            wait_until(lambda: answers(port), 20, "health server")
            status, body = get(port, "/health")
            release.set()
            wait_until(lambda: get(port, "/health")[0] == 200, 20, "gateway health")
    finally:
        release.set()
    assert status == 503
    assert json.loads(body)["source_started"] is False
