"""The HTTPS server: TLS per connection, routing, body limits, counting and logging.

Provider modules (google.py, microsoft.py), the control API and the inbox page
only declare routes; everything about HTTP lives here, so that each provider is its
wire format and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import re
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, unquote, urlsplit

from mailrelay.emulator import tls
from mailrelay.emulator.faults import DELIVERING_ENDPOINTS, FaultRule
from mailrelay.emulator.state import State

MAX_BODY = 40 * 1024 * 1024
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
# After refusing a body unread, keep reading (and discarding) it this long so that the
# client, still sending, gets to read our 413 instead of a connection reset.
LINGER_SECONDS = 1.0
# Query values safe to log: never a token, an address or a search.
_LOGGED_QUERY_VALUES = frozenset({"uploadType", "alt"})


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.body.decode("utf-8")) if self.body.strip() else {}

    def form(self) -> dict[str, str]:
        """The body as form fields (first value of each); {} when it is not a form."""
        try:
            parsed = parse_qs(self.body.decode("utf-8"), keep_blank_values=True)
        except ValueError:
            return {}
        return {key: values[0] for key, values in parsed.items()}



def oauth_client(request: Request, form: dict[str, str]) -> tuple[str | None, str | None]:
    """(client_id, client_secret) of a token request: HTTP Basic or the form, as RFC 6749
    lets a client choose (Google and Entra take both)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            client_id, _, secret = base64.b64decode(value.strip()).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        return client_id, secret
    return form.get("client_id"), form.get("client_secret")

@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False  # close the connection without answering


def json_response(status: int, data: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(status, json.dumps(data).encode("utf-8"), "application/json; charset=utf-8",
                    list(headers))


DROP = Response(0, drop=True)

Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    """One endpoint. Provider routes have ``identify`` (the mailbox a request acts for,
    for rules scoped to one mailbox) and ``fault`` (a fired rule in the provider's
    error shape); only those routes are subject to failure injection. ``admit`` wraps
    the whole request, injected latency included: what it yields is an answer that
    refuses the request (Graph's per-mailbox concurrency limit), or None to go on."""

    method: str
    pattern: str
    endpoint: str
    handler: Handler
    identify: Callable[[Request], str | None] | None = None
    fault: Callable[[FaultRule, str], Response] | None = None
    admit: Callable[[Request], AbstractContextManager[Response | None]] | None = None

    def match(self, path: str) -> dict[str, str] | None:
        found = re.fullmatch(self.pattern, path)
        return None if found is None else {k: unquote(v) for k, v in found.groupdict().items()}


class Router:
    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)

    def find(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """The route, its path parameters, and whether the path exists for another method."""
        other_method = False
        for route in self.routes:
            params = route.match(path)
            if params is None:
                continue
            if route.method == method:
                return route, params, False
            other_method = True
        return None, {}, other_method


def handle(route: Route, request: Request, state: State) -> Response:
    """Run a route with admission and failure injection around it."""
    if route.admit is None:
        return _inject(route, request, state)
    with route.admit(request) as refusal:
        return refusal if refusal is not None else _inject(route, request, state)


def _inject(route: Route, request: Request, state: State) -> Response:
    """Run a route with failure injection around it."""
    if route.fault is None or route.identify is None:
        return route.handler(request)
    rule = state.faults.take(route.endpoint, route.identify(request))
    if rule is None:
        return route.handler(request)
    if rule.latency_ms:
        time.sleep(rule.latency_ms / 1000)
    if rule.after_send and route.endpoint in DELIVERING_ENDPOINTS:
        # The provider accepted the message; only the answer is lost or garbled.
        delivered = route.handler(request)
        if delivered.status >= 300:
            return delivered  # nothing was delivered, so there is nothing to lose
    elif rule.status is None and not rule.drop:
        return route.handler(request)  # a latency-only rule
    return DROP if rule.drop else route.fault(rule, route.endpoint)


def google_error(status: int, message: str, reason: str, status_name: str, *,
                 domain: str = "global", headers: Iterable[tuple[str, str]] = ()) -> Response:
    """Google's JSON error shape; also the emulator's own for requests no provider owns."""
    return json_response(status, {"error": {
        "code": status,
        "message": message,
        "errors": [{"message": message, "domain": domain, "reason": reason}],
        "status": status_name,
    }}, headers)


_OWN_ERRORS = {
    400: ("badRequest", "INVALID_ARGUMENT"),
    404: ("notFound", "NOT_FOUND"),
    405: ("httpMethodNotAllowed", "UNIMPLEMENTED"),
    411: ("required", "INVALID_ARGUMENT"),
    413: ("badRequest", "INVALID_ARGUMENT"),
    500: ("backendError", "INTERNAL"),
}


def _error(status: int, message: str) -> Response:
    reason, status_name = _OWN_ERRORS[status]
    return google_error(status, message, reason, status_name)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real clients expect
    server_version = "mailrelay-emulator"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the base class logs the request line, query values (tokens) and all."""

    def _serve(self) -> None:
        started = time.monotonic()
        split = urlsplit(self.path)
        route, params, other_method = self.server.router.find(self.command, split.path)
        endpoint = route.endpoint if route else "method_not_allowed" if other_method else "not_found"
        with self.server.state.track(endpoint):
            response = self._respond(route, params, split.path, split.query, other_method)
            status = "dropped" if response is None or response.drop else str(response.status)
            # Logged before the response goes out: a client that reads the log right after its
            # answer arrives must find the line there.
            self.server.log(f"{self.command} {split.path}{_query_for_log(split.query)} {status} "
                            f"{endpoint} {(time.monotonic() - started) * 1000:.0f}ms")
            if response is not None:
                self._write(response)

    def _respond(self, route: Route | None, params: dict[str, str], path: str, query: str,
                 other_method: bool) -> Response | None:
        body = self._read_body()
        if body is None or isinstance(body, Response):
            return body
        if route is None:
            if other_method:
                return _error(405, f"Method {self.command} is not allowed for {path}")
            return _error(404, f"Not found: {path}")
        request = Request(self.command, path, parse_qs(query, keep_blank_values=True),
                          self.headers, body, params)
        try:
            response = handle(route, request, self.server.state)
        except Exception:  # one broken handler must not take the connection's thread down
            self.server.log(traceback.format_exc().rstrip())
            return _error(500, "internal error in the emulator")
        if response.drop:
            self.close_connection = True
        return response

    def _read_body(self) -> bytes | Response | None:
        """The body, an error to answer with, or None when the client went away."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # the unread chunks would be taken for a request
            return _error(411, "Content-Length is required")
        text = self.headers.get("Content-Length", "0").strip()
        if not text.isdigit():
            self.close_connection = True
            return _error(400, "Content-Length must be a number")
        length = int(text)
        if length > MAX_BODY:
            self._write(_error(413, f"Request payload size exceeds the limit: {MAX_BODY} bytes."),
                        close=True)
            self._discard_briefly()
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return None
        return body

    def _discard_briefly(self) -> None:
        self.close_connection = True
        deadline = time.monotonic() + LINGER_SECONDS
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(65536):
                    break
        except OSError:
            pass

    def _write(self, response: Response, *, close: bool = False) -> None:
        if response.drop:
            return
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(response.body)
        self.wfile.flush()


def _query_for_log(query: str) -> str:
    if not query:
        return ""
    parts = []
    for name, values in parse_qs(query, keep_blank_values=True).items():
        parts += [f"{name}={v}" if name in _LOGGED_QUERY_VALUES else name for v in values]
    return "?" + "&".join(parts)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of parallel clients are what some tests make

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, router: Router,
                 state: State, log_stream: TextIO | None, quiet: bool) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _RequestHandler)
        self.tls_context = context
        self.router = router
        self.state = state
        self.log_stream = log_stream
        self.quiet = quiet
        self._log_lock = threading.Lock()
        self._connections: set[ssl.SSLSocket] = set()
        self._connection_threads: set[threading.Thread] = set()
        self._tracking = threading.Lock()

    def log(self, line: str) -> None:
        if self.quiet:
            return
        # sys.stderr looked up now, not at start: pytest and others swap it.
        stream = self.log_stream if self.log_stream is not None else sys.stderr
        with self._log_lock:
            print(f"emulator: {line}", file=stream, flush=True)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Our own threads, so that stop() can wait for them: a handler still running
        # after stop would touch a closed server and leak its socket.
        thread = threading.Thread(target=self._connection_thread, args=(request, client_address),
                                  name="emulator-connection", daemon=True)
        with self._tracking:
            self._connection_threads.add(thread)
        thread.start()

    def _connection_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            # The handshake happens here, in the connection's own thread: done in
            # accept() it would let one slow client stall every other.
            request.settimeout(HANDSHAKE_TIMEOUT)
            # Headers and body leave in separate writes; with Nagle on, the body would
            # wait for the client's delayed ACK, some 40 ms per response.
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                conn = self.tls_context.wrap_socket(request, server_side=True)
            except (OSError, ValueError):
                return  # a failed handshake: the client did not trust us, or left
            with self._tracking:
                self._connections.add(conn)
            try:
                self.finish_request(conn, client_address)
            except OSError:
                pass  # the client went away mid-request: nothing to answer
            finally:
                with self._tracking:
                    self._connections.discard(conn)
                conn.close()
        finally:
            request.close()
            with self._tracking:
                self._connection_threads.discard(threading.current_thread())

    def close_connections(self, wait: float) -> None:
        with self._tracking:
            connections = list(self._connections)
            threads = list(self._connection_threads)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes a thread waiting for a request
        deadline = time.monotonic() + wait
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class Emulator:
    """A running emulator; ``stop()`` (or leaving a ``with`` block) shuts it down."""

    def __init__(self, server: _Server, files: tls.TlsFiles, state_dir: Path, owns_dir: bool) -> None:
        self._server = server
        self.state = server.state
        self.state_dir = state_dir
        self.ca_path = files.ca_path
        self.bundle_path = files.bundle_path
        host, port = server.server_address[:2]
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(str(host), str(host))  # noqa: S104
        self.url = f"https://[{shown}]:{port}" if ":" in shown else f"https://{shown}:{port}"
        self.port = int(port)
        self._owns_dir = owns_dir
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="emulator-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.close_connections(wait=5.0)
        self._server.server_close()
        if self._owns_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def provider_routes(state: State) -> list[Route]:
    """Google's and Microsoft's routes over ``state``."""
    from mailrelay.emulator import google, microsoft  # they import this module

    return [*google.Google(state).routes(), *microsoft.Microsoft(state).routes()]


@functools.cache
def injectable_endpoints() -> tuple[str, ...]:
    """The endpoint names a fault rule may name: those of the provider routes that take
    faults (the control API, the inbox page and the consent pages take none)."""
    return tuple(sorted({route.endpoint for route in provider_routes(State())
                         if route.fault is not None}))


def start(host: str = "127.0.0.1", port: int = 0, state_dir: str | Path | None = None, *,
          log_stream: TextIO | None = None, quiet: bool = False) -> Emulator:
    """Start the emulator in a background thread. Without ``state_dir`` a temporary one
    is made, and removed by ``stop()``. One line per request goes to ``log_stream``
    (default: stderr) unless ``quiet``."""
    from mailrelay.emulator import control, inbox  # they import this module

    owns_dir = state_dir is None
    directory = Path(tempfile.mkdtemp(prefix="mailrelay-emulator-")) if owns_dir else Path(str(state_dir))
    try:
        files = tls.ensure_certificates(directory)
        state = State()
        router = Router([*control.routes(state), *inbox.routes(state), *provider_routes(state)])
        server = _Server((host, port), files.server_context(), router, state, log_stream, quiet)
    except BaseException:
        if owns_dir:  # nobody else knows the temporary directory: do not leave it behind
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return Emulator(server, files, directory, owns_dir)
