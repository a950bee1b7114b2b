"""The pollers a load test starts: ``tgstack poller`` processes, or pollers on threads.

Processes are what production runs (one GIL each); threads share the load test's process
and GIL. Each poller serves ``/metrics`` on its own loopback port, which is how the run reads
the pollers' cache hit counters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from tgstack.config import ENV_PREFIX, Settings
from tgstack.loadtest.plan import PollerKind, PollerMode
from tgstack.loadtest.ports import free_port

log = logging.getLogger("tgstack.loadtest.fleet")


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``TGSTACK_*`` variables (secrets included: for a child process only)."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value: Any = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, list):
            value = ",".join(
                item.get_secret_value() if isinstance(item, SecretStr) else str(item)
                for item in value
            )
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[ENV_PREFIX + name.upper()] = str(value)
    return env


class ThreadPoller:
    """A PollerService run on threads (PollerService.run wants the main thread's signals)."""

    def __init__(self, settings: Settings, mode: PollerMode, number: int) -> None:
        from tgstack.poller.service import PollerService

        self.service = PollerService(settings, mode)
        # Claims are fenced by consumer name (host:pid): threads of one process need their own.
        self.service.worker.consumer += f"#{number}"
        self.service.poll_worker.consumer += f"#{number}"
        self.threads: list[threading.Thread] = []

    @property
    def metrics_port(self) -> int:
        return self.service.health.port

    def start(self) -> None:
        service = self.service
        service.database.open(wait=False)
        service.health.start()
        if service.consumer is not None:
            service.consumer.stopping = service.stopping
            self.threads.append(threading.Thread(target=service.consumer.run, daemon=True))
        if service.mode in ("poll", "hybrid"):
            interval = (
                service.settings.poller_poll_interval_seconds
                if service.mode == "poll"
                else service.settings.poller_safety_poll_seconds
            )
            self.threads.append(
                threading.Thread(target=service.poll_loop, args=(interval,), daemon=True)
            )
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float) -> bool:
        self.service.stopping.set()
        for thread in self.threads:
            thread.join(timeout)
        self.service.health.stop()
        if self.service.cache is not None:
            self.service.cache.close()
        self.service.database.close()
        return not any(thread.is_alive() for thread in self.threads)


class PollerFleet:
    """``count`` pollers of one kind and mode, each on its own metrics port."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        *,
        kind: PollerKind = "process",
        mode: PollerMode = "hybrid",
        log_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.count = count
        self.kind = kind
        self.mode = mode
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.threads: list[ThreadPoller] = []
        self.ports: list[int] = []

    def start(self) -> None:
        for number in range(self.count):
            port = free_port()
            self.ports.append(port)
            settings = self.settings.model_copy(
                update={"poller_port": port, "poller_bind": "127.0.0.1"}
            )
            if self.kind == "thread":
                poller = ThreadPoller(
                    settings.model_copy(update={"poller_port": 0}), self.mode, number
                )
                poller.start()
                self.ports[-1] = poller.metrics_port
                self.threads.append(poller)
            else:
                self.processes.append(self._spawn(settings, number))

    def _spawn(self, settings: Settings, number: int) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.pop("TGSTACK_ENV_FILE", None)
        env |= settings_env(settings)
        env["TGSTACK_LOG_FORMAT"] = "text"
        env["TGSTACK_LOG_LEVEL"] = "WARNING"
        output: Any = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"poller-{number}.log").open("ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "tgstack", "poller", "--mode", self.mode],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        finally:
            if output is not subprocess.DEVNULL:
                output.close()

    def alive(self) -> int:
        return sum(1 for p in self.processes if p.poll() is None) + len(self.threads)

    def stop(self, timeout: float = 30.0) -> list[int | None]:
        """Stop gracefully (SIGTERM, as systemd does); returns the processes' exit codes."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait(10))
        for poller in self.threads:
            codes.append(0 if poller.stop(timeout) else None)
        return codes

    def scrape(self, timeout: float = 2.0) -> str:
        """The concatenated ``/metrics`` of every poller that answers."""
        pages: list[str] = []
        # Threads share this process's registry: one page holds all of them.
        ports = self.ports[:1] if self.kind == "thread" else self.ports
        for port in ports:
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    pages.append(response.read().decode())
        return "\n".join(pages)


class QueueProbe:
    """Ready messages and consumers of the pollers' queue (a passive declare, once a call)."""

    def __init__(self, url: str, consumer: str) -> None:
        from tgstack.queue import consumer_queue_name

        self.url = url
        self.queue = consumer_queue_name(consumer)
        self._connection: Any = None
        self._channel: Any = None

    def read(self) -> tuple[int, int] | None:
        """(messages ready, consumers), or None when RabbitMQ does not answer."""
        from amqpstorm.exception import AMQPError
        from amqpstorm.uri_connection import UriConnection

        try:
            if self._channel is None or not self._channel.is_open:
                self.close()
                separator = "&" if "?" in self.url else "?"
                self._connection = UriConnection(f"{self.url}{separator}timeout=5&heartbeat=30")
                self._channel = self._connection.channel()
            answer = self._channel.queue.declare(self.queue, passive=True)
        except AMQPError:
            self.close()
            return None
        return int(answer["message_count"]), int(answer["consumer_count"])

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()
