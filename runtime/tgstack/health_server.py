"""A small HTTP endpoint for ``/health`` (JSON) and ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("tgstack.health")

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    """Serves health and metrics on its own thread until ``stop``."""

    def __init__(self, host: str, port: int, health: HealthCheck) -> None:
        check = health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(HTTPStatus.OK, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif self.path == "/health":
                    try:
                        healthy, details = check()
                    except Exception as exc:  # a broken check is itself unhealthy
                        healthy, details = False, {"error": str(exc)}
                    body = json.dumps(
                        {"status": "ok" if healthy else "unhealthy", **details}, default=str
                    ).encode()
                    status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
                    self._send(status, body, "application/json")
                else:
                    self._send(HTTPStatus.NOT_FOUND, b'{"error": "not found"}', "application/json")

            def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                if log.isEnabledFor(logging.DEBUG):  # the request line is formatted only then
                    log.debug("health_http_request", extra={"request": format % args})

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
