"""Serving the API: uvicorn, one process, and its graceful shutdown.

``ApiServer`` binds at construction (so ``port`` is known at once; port 0 picks a free one) and
hands the socket to uvicorn; ``serve_forever`` runs uvicorn in the calling thread and
``shutdown`` (any thread) asks it to stop. Stopping is uvicorn's own: it closes the listening
socket, lets the requests in progress finish (at most ``grace`` seconds, uvicorn's
``timeout_graceful_shutdown``), closes the connections and runs the application's shutdown.
``run_api`` wires it all from the settings; in the main thread uvicorn turns SIGTERM/SIGINT
into that shutdown.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from tgstack.api.app import create_app
from tgstack.api.auth import TokenAuth
from tgstack.api.cache import ResponseCache
from tgstack.api.deps import Services
from tgstack.api.queries import ApiStore
from tgstack.api.ratelimit import RateLimiter
from tgstack.config import ConfigError, Settings, env_name
from tgstack.redis_client import close_redis_client, redis_client_from

log = logging.getLogger("tgstack.api")

KEEP_ALIVE_SECONDS = 60  # idle connections are closed after this
BACKLOG = 256


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, reporting when a signal starts the shutdown."""

    stopping_since: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
            log.info("api_stopping", extra={"signal": signal.Signals(sig).name})
        super().handle_exit(sig, frame)


class ApiServer:
    """The API on one listening socket."""

    def __init__(self, app: FastAPI, host: str, port: int, *, grace: float = 10.0) -> None:
        self.app = app
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError:
            self._socket.close()
            raise
        config = uvicorn.Config(
            app,
            lifespan="on",
            log_config=None,  # tgstack.logs: one JSON event a line
            access_log=False,  # the application logs each request (api_request)
            proxy_headers=False,  # nothing is in front: X-Forwarded-For must not pick the address
            server_header=False,
            headers=[("server", "tgstack-api")],
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=math.ceil(grace),
            backlog=BACKLOG,
        )
        self._server = _Uvicorn(config)

    @property
    def host(self) -> str:
        return str(self._socket.getsockname()[0])

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def started(self) -> bool:
        return bool(self._server.started)

    @property
    def stopping_since(self) -> float | None:
        return self._server.stopping_since

    def serve_forever(self) -> None:
        """Run until ``shutdown`` or a signal (returns once every connection is closed)."""
        log.info("api_listening", extra={"host": self.host, "port": self.port})
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._socket.close()

    def shutdown(self) -> None:
        """Ask uvicorn to stop gracefully (what its signal handler does)."""
        if self._server.stopping_since is None:
            self._server.stopping_since = time.monotonic()
        self._server.should_exit = True


def build_services(settings: Settings) -> Services:
    """The services from the settings (the pool is opened, without waiting for it)."""
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
    return Services(
        store=store,
        auth=TokenAuth(read, admin),
        limiter=RateLimiter(settings.api_rate_limit_per_second, settings.api_rate_limit_burst),
        cache=cache,
        max_body_bytes=settings.api_max_body_bytes,
        threads=settings.api_threads,
    )


def close_services(services: Services) -> None:
    services.store.close()
    if services.cache is not None:
        close_redis_client(services.cache.client)


def run_api(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully and exit 0."""
    services = build_services(settings)
    try:
        server = ApiServer(
            create_app(services),
            settings.api_bind,
            settings.api_port,
            grace=settings.api_shutdown_grace_seconds,
        )
    except OSError:
        close_services(services)
        raise
    for name in ("uvicorn", "uvicorn.error"):  # its start-up chatter; its errors stay
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))

    # uvicorn handles SIGTERM/SIGINT while it runs, then restores the handlers it found and
    # raises the signal again for them. These are the ones it finds: the signal has been
    # dealt with (the shutdown), so the process goes on to close the pool and exits 0.
    def handled(signum: int, frame: FrameType | None) -> None:
        return None

    previous = {sig: signal.signal(sig, handled) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close_services(services)
        traffic = services.traffic
        since = server.stopping_since
        log.info(
            "api_stopped",
            extra={
                "drained": traffic.in_flight == 0 and traffic.abandoned == 0,
                "in_flight": traffic.in_flight,
                "abandoned": traffic.abandoned,
                "seconds": round(time.monotonic() - since, 3) if since is not None else None,
            },
        )
