"""The console's HTTPS server: the standard library's threading HTTP server, TLS on every connection.

The TLS handshake runs in the connection's own thread (with a timeout), so a
client that stalls in it never holds up the others. Each request is read whole
(at most ``MAX_BODY`` bytes, a ``Content-Length`` required for a body) and
handed to :class:`custos.console.app.ConsoleApp`; nothing but HTTPS is served.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from custos.console.app import MAX_BODY, ConsoleApp, Request

log = logging.getLogger("custos.console")

TIMEOUT_S = 30.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "custos-console"
    sys_version = ""
    timeout = TIMEOUT_S
    server: ConsoleHTTPServer

    def _serve(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = b""
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > MAX_BODY:
                self._send(413, b'{"error": "request body too large or its length malformed"}', "application/json",
                           [], close=True)
                return
            body = self.rfile.read(int(length))
        elif headers.get("transfer-encoding"):
            self._send(411, b'{"error": "a Content-Length is required"}', "application/json", [], close=True)
            return
        app = self.server.app
        if app is None:
            self._send(503, b'{"error": "starting"}', "application/json", [], close=True)
            return
        resp = app.handle(Request(self.command, self.path, headers, body))
        self._send(resp.status, resp.body, resp.content_type, resp.headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]], *,
              close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = _serve
    do_POST = _serve
    do_PUT = _serve
    do_DELETE = _serve
    do_PATCH = _serve
    do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("console: %s %s", self.address_string(), format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The path only (no query), and never a header: cookies stay out of the log.
        log.info("console: %s %s %s", self.command, self.path.split("?")[0][:200], code)


class ConsoleHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: ConsoleApp | None, context: ssl.SSLContext) -> None:
        self.app = app  # None until the app (whose origin may name the port bound here) is set
        self.context = context
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS first, in this connection's thread; a failed handshake closes the connection."""
        request.settimeout(TIMEOUT_S)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("console: TLS handshake with %s failed: %s", client_address, exc)
            with contextlib.suppress(OSError):
                request.close()
            return
        try:
            _Handler(tls, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("console: connection from %s ended with an error", client_address, exc_info=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def serve_in_thread(server: ConsoleHTTPServer) -> threading.Thread:
    """Run ``server`` in a daemon thread (tests and embedders); stop with ``server.shutdown()``."""
    t = threading.Thread(target=server.serve_forever, name="custos-console", daemon=True)
    t.start()
    return t
