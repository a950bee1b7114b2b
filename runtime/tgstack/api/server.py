"""Serving the API: waitress (a pure-Python, threaded WSGI server) and a graceful shutdown.

``ApiServer`` binds at construction (so ``port`` is known at once, port 0 picks a free one),
``serve_forever`` runs the event loop in the calling thread, and ``shutdown`` (any thread)
stops accepting, lets the requests in progress finish (at most ``grace`` seconds), sends what
they wrote and closes every connection; ``serve_forever`` then returns. ``run_api`` wires it
all from the settings and turns SIGTERM/SIGINT into that shutdown.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server

from tgstack.api.app import ApiApp
from tgstack.api.auth import TokenAuth
from tgstack.api.cache import ResponseCache
from tgstack.api.queries import ApiStore
from tgstack.api.ratelimit import RateLimiter
from tgstack.config import ConfigError, Settings, env_name
from tgstack.redis_client import close_redis_client, redis_client_from

log = logging.getLogger("tgstack.api")

# waitress's own body limit, above the API's (which answers a JSON 413 first).
SERVER_MAX_BODY = 1_048_576


class ApiServer:
    """The API on one listening socket."""

    def __init__(self, app: ApiApp, host: str, port: int, *, threads: int = 8) -> None:
        self.app = app
        self._server: Any = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            ident="tgstack-api",
            max_request_body_size=SERVER_MAX_BODY,
            channel_timeout=60,
            connection_limit=256,
            clear_untrusted_proxy_headers=True,
            expose_tracebacks=False,
        )
        self._stopped = threading.Event()
        self._shutting_down = threading.Lock()

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    def serve_forever(self) -> None:
        """Run until ``shutdown`` (returns when every connection is closed)."""
        log.info("api_listening", extra={"host": self.host, "port": self.port})
        try:
            self._server.run()
        finally:
            self._stopped.set()

    def shutdown(self, grace: float = 10.0) -> bool:
        """Stop gracefully; True when every request in progress finished within ``grace``."""
        if not self._shutting_down.acquire(blocking=False):
            return self._stopped.wait(grace + 5)
        started = time.monotonic()
        self._in_loop(self._stop_accepting)
        drained = self.app.wait_idle(grace)
        # Let the loop send what the last requests wrote, then close every connection.
        self._wait(
            lambda: not self._busy_channels(), max(0.0, grace - (time.monotonic() - started))
        )
        self._in_loop(self._close_all)
        stopped = self._stopped.wait(5)
        log.info(
            "api_stopped",
            extra={
                "drained": drained,
                "stopped": stopped,
                "in_flight": self.app.in_flight,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return drained and stopped

    # Inside the event loop --------------------------------------------------------------------

    def _in_loop(self, thunk: Any) -> None:
        if self._stopped.is_set():
            return  # the loop has ended: nothing left in it to stop or close
        try:
            self._server.trigger.pull_trigger(thunk)
        except OSError:
            # The trigger was closed under us (seen once, in a test's teardown right after a
            # 400): the loop can no longer be woken, so do its step from here; it is shutdown.
            log.warning("api_trigger_closed", extra={"step": getattr(thunk, "__name__", "?")})
            thunk()

    def _stop_accepting(self) -> None:
        wasyncore.dispatcher.close(self._server)  # the listening socket only

    def _close_all(self) -> None:
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(self._server._map)  # channels and the trigger: the loop ends

    def _busy_channels(self) -> list[Any]:
        return [
            channel
            for channel in list(self._server._map.values())
            if isinstance(channel, HTTPChannel)
            and (channel.requests or channel.total_outbufs_len > 0)
        ]

    @staticmethod
    def _wait(condition: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)


def build_app(settings: Settings) -> ApiApp:
    """The application from the settings (the pool is opened, without waiting for it)."""
    read = [token.get_secret_value() for token in settings.api_read_tokens]
    admin = [token.get_secret_value() for token in settings.api_admin_tokens]
    if not read and not admin:
        raise ConfigError(
            f"{env_name('api_read_tokens')}: no API token is configured "
            f"(set it and/or {env_name('api_admin_tokens')})"
        )
    store = ApiStore(
        settings.require_database_url(),
        min_size=min(settings.database_pool_min, settings.api_threads),
        max_size=max(settings.api_threads, 1),
        statement_timeout_ms=settings.api_statement_timeout_ms,
        prepared_statements=settings.database_prepared_statements,
    )
    cache = None
    if settings.redis_configured and settings.api_cache_ttl_seconds > 0:
        cache = ResponseCache(redis_client_from(settings), ttl=settings.api_cache_ttl_seconds)
    store.open()
    return ApiApp(
        store=store,
        auth=TokenAuth(read, admin),
        limiter=RateLimiter(settings.api_rate_limit_per_second, settings.api_rate_limit_burst),
        cache=cache,
        max_body_bytes=settings.api_max_body_bytes,
    )


def close_app(app: ApiApp) -> None:
    app.store.close()
    if app.cache is not None:
        close_redis_client(app.cache.client)


def run_api(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    app = build_app(settings)
    try:
        server = ApiServer(app, settings.api_bind, settings.api_port, threads=settings.api_threads)
    except OSError:
        close_app(app)
        raise

    grace = settings.api_shutdown_grace_seconds
    shutdowns: list[threading.Thread] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("api_stopping", extra={"signal": signal.Signals(signum).name})
        shutdown = threading.Thread(
            target=server.shutdown, args=(grace,), name="api-shutdown", daemon=True
        )
        shutdowns.append(shutdown)
        shutdown.start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever()
    finally:
        # The loop ends before the shutdown thread reports how it went: wait for that report,
        # or the process exits and the daemon thread dies with it, unheard.
        for shutdown in shutdowns:
            shutdown.join(grace + 10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close_app(app)
