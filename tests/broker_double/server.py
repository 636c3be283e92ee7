"""A double of the AKTIN Broker 1.5.2 (1.5.1 answered an earlier conversation alike but for its
version): the part of its REST API and its admin websocket that the product, the tests, the demo
and the benchmark use, with the real one's answers (held to them by the replay test in
tests/integration/test_broker_double.py against recording.json).

It exists because the real broker's server jars are on no registry this project reaches. It
keeps everything in memory, serves HTTP/1.1 keep-alive on 127.0.0.1 from threads, and reads the
same api-keys.properties as the real one.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import io
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote_plus, urlsplit
from xml.sax.saxutils import escape

from lxml import etree
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Message, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from tests.peers import free_port, stop
from tests.peers.broker import DOUBLE_VERSION, IDLE_TIMEOUT, BrokerServer, write_api_keys
from tests.peers.http_server import LocalHttpServer

ROOT = Path(__file__).resolve().parent.parent.parent

NS = "http://aktin.org/ns/exchange"
# The node's timestamps of a request, in the order the real broker writes them.
STATES = ("deleted", "retrieved", "queued", "processing", "completed", "rejected", "failed", "expired", "interaction")
POSTABLE = {"retrieved", "queued", "processing", "completed", "rejected", "failed", "interaction"}
# The names of the broker's RequestStatus: it knows "expired" too, but fails to store it.
KNOWN_STATUSES = POSTABLE | {"expired"}
DOWNLOAD_SECONDS = 600
XML = "application/xml"
WEBSOCKET_PATH = "/broker/websocket"
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A websocket write to a client that reads nothing fails after this long, and drops the session.
SEND_SECONDS = 10
# How long stop() waits for the threads of open connections to end.
STOP_SECONDS = 10


def instant(nanos: int, digits: int) -> str:
    """`nanos` since the epoch cut to `digits` fraction digits and written as Java's
    Instant.toString writes it: 0, 3, 6 or 9 digits, as few as show the value. The value is
    nudged off round numbers, so that the written precision is always the column's own."""
    unit = 10 ** (9 - digits)
    value = nanos // unit
    if digits and value % 1000 == 0:
        value += 1
    seconds, fraction = divmod(value * unit, 10**9)
    text = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        shown = f"{fraction:09d}"
        while shown.endswith("000"):
            shown = shown[:-3]
        text += "." + shown
    return text + "Z"


def now(digits: int) -> str:
    return instant(time.time_ns(), digits)


def element(name: str, *children: str | None, **attributes: str) -> str:
    """`<ns2:name …>` as JAXB writes it; a None child is left out, as JAXB leaves out nulls."""
    attrs = "".join(f' {k}="{escape(v)}"' for k, v in attributes.items())
    return f"<ns2:{name}{attrs}>{''.join(c for c in children if c is not None)}</ns2:{name}>"


def leaf(name: str, value: str | None) -> str | None:
    return None if value is None else element(name, escape(value))


def document(root: str) -> bytes:
    """A whole answer, its root declaring the namespace (attribute values have no '>')."""
    start, rest = root.split(">", 1)
    return f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>{start} xmlns:ns2="{NS}">{rest}'.encode()


def xpath_string(value: Any) -> str:
    """An XPath 1.0 result as its string value (the broker compares that with "true")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return str(int(value)) if value == int(value) else repr(value)
    if isinstance(value, list):
        if not value:
            return ""
        first = value[0]
        return "".join(first.itertext()) if isinstance(first, etree._Element) else str(first)
    return str(value)


def without_default_namespace(definition: bytes) -> etree._Element:
    """The definition as the broker's DOM sees it, which is parsed without namespace support:
    unprefixed names are plain names (a default namespace does not count), prefixed names keep
    their prefix, and local-name() is the part after it."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    root = etree.fromstring(definition, parser)
    for node in root.iter(etree.Element):
        if node.prefix is None and "}" in node.tag:
            node.tag = node.tag.split("}", 1)[1]
    etree.cleanup_namespaces(root)
    return root


@dataclass
class Request:
    id: int
    definitions: dict[str, bytes] = field(default_factory=dict)
    published: str | None = None
    closed: str | None = None


@dataclass
class Status:
    stamps: dict[str, str] = field(default_factory=dict)
    message: tuple[str, bytes] | None = None


@dataclass
class Node:
    id: int
    dn: str
    last_contact: str = ""


class Failure(Exception):
    """An answer other than success: the status and, for the web server's own error pages,
    their message; `page=False` answers with no body at all, as Jersey does for some 404s."""

    def __init__(self, status: int, message: str, page: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.page = page


def unauthorized() -> Failure:
    return Failure(401, "Unauthorized")


@dataclass
class Answer:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


class State:
    """Everything the broker keeps: requests, node status rows, results, downloads."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys
        self.lock = threading.Lock()
        self.requests: dict[int, Request] = {}
        self.next_id = 0
        self.nodes: dict[str, Node] = {}
        # Status rows and results stay behind when a request is deleted, as in the real broker.
        self.status: dict[tuple[int, int], Status] = {}
        self.results: dict[tuple[int, int], tuple[str, bytes, int]] = {}
        self.resources: dict[tuple[int, str], tuple[str, bytes]] = {}
        self.downloads: dict[str, tuple[str, bytes, float]] = {}

    def dn(self, authorization: str | None) -> str | None:
        """The distinguished name the caller's API key stands for, if it is a known one."""
        if not (authorization or "").startswith("Bearer "):
            return None
        return self.keys.get((authorization or "").removeprefix("Bearer "))

    def node(self, authorization: str | None) -> Node:
        """The caller's node, registered on its first authenticated call."""
        dn = self.dn(authorization)
        if dn is None:
            raise unauthorized()
        node = self.nodes.get(dn)
        if node is None:
            node = self.nodes[dn] = Node(len(self.nodes), dn)
        node.last_contact = now(3)
        return node

    def admin(self, authorization: str | None) -> None:
        if not is_admin(self.dn(authorization)):
            raise unauthorized()


def is_admin(dn: str | None) -> bool:
    return dn is not None and "OU=admin" in dn.split(",")


def common_name(dn: str) -> str:
    return next((part.removeprefix("CN=") for part in dn.split(",") if part.startswith("CN=")), "")


class Api:
    """The broker's endpoints; each returns an Answer or raises Failure, and tells `notify` the
    events the real one broadcasts to its admin websockets."""

    def __init__(self, state: State, url: str, notify: Callable[[str], None]) -> None:
        self.state = state
        self.url = url
        self.notify = notify
        self.routes: list[tuple[str, re.Pattern[str], Any, str]] = [
            (method, re.compile(pattern), handler, role)
            for method, pattern, handler, role in (
                ("GET", r"/broker/status", self.broker_status, "anyone"),
                ("HEAD", r"/broker/status", self.broker_status, "anyone"),
                ("GET", r"/broker/node", self.node_list, "admin"),
                ("POST", r"/broker/request", self.create, "admin"),
                ("GET", r"/broker/request/filtered", self.filtered, "admin"),
                ("GET", r"/broker/request/(\d+)", self.definition, "admin"),
                ("PUT", r"/broker/request/(\d+)", self.replace, "admin"),
                ("DELETE", r"/broker/request/(\d+)", self.delete, "admin"),
                ("POST", r"/broker/request/(\d+)/publish", self.publish, "admin"),
                ("POST", r"/broker/request/(\d+)/close", self.close, "admin"),
                ("GET", r"/broker/request/(\d+)/status", self.status_list, "admin"),
                ("GET", r"/broker/request/(\d+)/status/(\d+)", self.status_message, "admin"),
                ("POST", r"/broker/export/request-bundle/(\d+)", self.export, "admin"),
                ("GET", r"/broker/download/([^/]+)", self.download, "anyone"),
                ("GET", r"/broker/my/request", self.my_requests, "node"),
                ("GET", r"/broker/my/request/(\d+)", self.my_definition, "node"),
                ("DELETE", r"/broker/my/request/(\d+)", self.my_delete, "node"),
                ("POST", r"/broker/my/request/(\d+)/status/(\w+)", self.my_status, "node"),
                ("PUT", r"/broker/my/node/([^/]+)", self.my_resource, "node"),
                ("PUT", r"/aggregator/my/request/(\d+)/result", self.my_result, "node"),
            )
        ]

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> Answer:
        parts = urlsplit(path)
        for route_method, pattern, handler, role in self.routes:
            match = pattern.fullmatch(parts.path)
            if match and route_method == method:
                with self.state.lock:
                    caller = None
                    if role == "admin":
                        self.state.admin(headers.get("Authorization"))
                    elif role == "node":
                        caller = self.state.node(headers.get("Authorization"))
                    answer: Answer = handler(*match.groups(), caller=caller, query=parse_qs(parts.query),
                                             headers=headers, body=body)
                    return answer
        raise Failure(404, "Not Found")

    def broker_status(self, **_: Any) -> Answer:
        modules = "".join(element("module", leaf("version", DOUBLE_VERSION), id=name) for name in ("broker-api", "broker-server"))
        return self.xml(element("broker-status", leaf("timestamp", now(9)), element("node-software", modules)))

    def node_list(self, **_: Any) -> Answer:
        nodes = sorted(self.state.nodes.values(), key=lambda n: n.id)
        return self.xml(element("node-list", *(
            element("node", leaf("id", str(n.id)), leaf("clientDN", n.dn), leaf("last-contact", n.last_contact),
                    leaf("websocket", "false"))
            for n in nodes
        )))

    def create(self, headers: Any, body: bytes, **_: Any) -> Answer:
        request = Request(self.state.next_id)
        self.state.next_id += 1
        content_type = headers.get("Content-Type")
        if content_type:
            request.definitions[content_type] = body
        self.state.requests[request.id] = request
        self.notify(f"created {request.id}")
        return Answer(201, headers=(("Location", f"{self.url}/broker/request/{request.id}"),))

    def filtered(self, query: dict[str, list[str]], **_: Any) -> Answer:
        media_type = query.get("type", [""])[0]
        if not (media_type.endswith("+xml") or media_type.endswith("/xml")):
            raise Failure(400, "type param required ending with +xml or /xml")
        try:
            predicate = etree.XPath(query.get("predicate", [""])[0])
        except etree.XPathSyntaxError:
            raise Failure(400, "type param required ending with +xml or /xml") from None
        listed = []
        for request in sorted(self.state.requests.values(), key=lambda r: r.id):
            definition = request.definitions.get(media_type)
            if definition is None:
                continue
            try:
                if xpath_string(predicate(without_default_namespace(definition))) != "true":
                    continue
            except (etree.XMLSyntaxError, etree.XPathEvalError):
                # The real broker logs and skips what it cannot parse or evaluate.
                continue
            listed.append(self.info(request))
        return self.xml(element("request-list", *listed))

    def info(self, request: Request, types: bool = False, node_status: str | None = None) -> str:
        return element(
            "request", leaf("published", request.published), leaf("closed", request.closed), leaf("targeted", "false"),
            *(leaf("type", t) for t in (request.definitions if types else ())), node_status, id=str(request.id),
        )

    def request(self, request_id: str, page: bool = False) -> Request:
        """The request, or a 404: with Jetty's error page where the broker throws NotFoundException."""
        request = self.state.requests.get(int(request_id))
        if request is None:
            raise Failure(404, "Not Found", page=page)
        return request

    def definition(self, request_id: str, headers: Any, **_: Any) -> Answer:
        request = self.request(request_id)
        if not request.definitions:
            raise Failure(404, "Not Found", page=False)
        accept = [a.split(";")[0].strip() for a in (headers.get("Accept") or "*/*").split(",")]
        for media_type, data in request.definitions.items():
            if media_type in accept or "*/*" in accept:
                return Answer(200, data, f"{media_type};charset=UTF-8")
        raise Failure(406, "Not Acceptable")

    def replace(self, request_id: str, headers: Any, body: bytes, **_: Any) -> Answer:
        self.request(request_id).definitions[headers.get("Content-Type") or XML] = body
        return Answer(204)

    def delete(self, request_id: str, **_: Any) -> Answer:
        self.state.requests.pop(int(request_id), None)
        return Answer(204)

    def publish(self, request_id: str, **_: Any) -> Answer:
        request = self.request(request_id, page=True)
        if request.published is None:
            request.published = now(6)
            self.notify(f"published {request.id}")
        return Answer(204)

    def close(self, request_id: str, **_: Any) -> Answer:
        request = self.request(request_id, page=True)
        if request.closed is None:
            request.closed = now(6)
            self.notify(f"closed {request.id}")
        return Answer(204)

    def rows(self, request_id: int) -> list[tuple[int, Status]]:
        return sorted((node, status) for (request, node), status in self.state.status.items() if request == request_id)

    def status_info(self, node: int, status: Status, name: str = "request-status-info", with_type: bool = True) -> str:
        message_type = status.message[0] if status.message and with_type else None
        stamps = (leaf(state, status.stamps.get(state)) for state in STATES)
        return element(name, leaf("node", str(node)), *stamps, leaf("type", message_type))

    def status_list(self, request_id: str, **_: Any) -> Answer:
        return self.xml(element("request-status-list", *(self.status_info(n, s) for n, s in self.rows(int(request_id)))))

    def status_message(self, request_id: str, node: str, **_: Any) -> Answer:
        status = self.state.status.get((int(request_id), int(node)))
        if status is None or status.message is None:
            raise Failure(404, "Not Found")
        return Answer(200, status.message[1], status.message[0])

    def export(self, request_id: str, **_: Any) -> Answer:
        request = self.state.requests.get(int(request_id))
        if request is None:
            raise Failure(500, "Request failed.")
        token = str(uuid.uuid4())
        self.state.downloads[token] = (f"export_{request.id}.zip", self.bundle(request), time.monotonic() + DOWNLOAD_SECONDS)
        return Answer(200, token.encode(), "text/plain")

    def bundle(self, request: Request) -> bytes:
        """The zip the real broker builds: status list, status messages, request info, the
        definition, and every node's result, under the same entry names."""
        data = io.BytesIO()
        with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.comment = f"Bundle for request {request.id}".encode()
            rows = self.rows(request.id)
            archive.writestr("status.xml", document(element("request-status-list", *(self.status_info(n, s) for n, s in rows))))
            for node, status in rows:
                if status.message:
                    archive.writestr(f"{node}_info{extension(status.message[0])}", status.message[1])
            archive.writestr("request.xml", document(self.info(request, types=True)))
            types = list(request.definitions)
            for index, media_type in enumerate(types):
                name = "definition" if len(types) == 1 else f"definition_{index}"
                archive.writestr(f"{name}{extension(media_type)}", request.definitions[media_type])
            results = sorted((node, result) for (rid, node), result in self.state.results.items() if rid == request.id)
            distinct = {media_type for _, (media_type, _, _) in results}
            for node, (media_type, content, modified) in results:
                kind = "result" if len(distinct) == 1 else java_url_encode(media_type)
                entry = zipfile.ZipInfo(f"{node}_{kind}{extension(media_type)}", time.localtime(modified)[:6])
                archive.writestr(entry, content, zipfile.ZIP_DEFLATED)
        return data.getvalue()

    def download(self, token: str, **_: Any) -> Answer:
        download = self.state.downloads.get(token)
        if download is None or download[2] < time.monotonic():
            self.state.downloads.pop(token, None)
            raise Failure(404, "Not Found")
        name, data, _expiry = download
        return Answer(200, data, "application/zip", (("Content-Disposition", f'inline; filename="{name}"'),))

    def my_requests(self, caller: Node, **_: Any) -> Answer:
        listed = []
        for request in sorted(self.state.requests.values(), key=lambda r: r.id):
            status = self.state.status.get((request.id, caller.id))
            if request.published is None or request.closed is not None or (status and "deleted" in status.stamps):
                continue
            mine = self.status_info(caller.id, status, "node-status", with_type=False) if status else None
            listed.append(self.info(request, types=True, node_status=mine))
        return self.xml(element("request-list", *listed))

    def my_definition(self, request_id: str, headers: Any, **_: Any) -> Answer:
        return self.definition(request_id, headers)

    def my_delete(self, request_id: str, caller: Node, **_: Any) -> Answer:
        self.state.status.setdefault((int(request_id), caller.id), Status()).stamps["deleted"] = now(6)
        return Answer(204)

    def my_status(self, request_id: str, state: str, caller: Node, headers: Any, body: bytes, **_: Any) -> Answer:
        if state not in KNOWN_STATUSES:
            # Jersey cannot make the path's status a RequestStatus, and finds no resource.
            raise Failure(404, "Not Found")
        if state not in POSTABLE:
            raise Failure(500, "Server Error")
        date = headers.get("Date")
        nanos = int(email.utils.parsedate_to_datetime(date).timestamp()) * 10**9 if date else time.time_ns()
        status = self.state.status.setdefault((int(request_id), caller.id), Status())
        status.stamps[state] = instant(nanos, 3) if not date else instant(nanos, 0)
        if state != "interaction":
            status.stamps.pop("interaction", None)
        if body and headers.get("Content-Type"):
            status.message = (headers["Content-Type"], body)
        self.notify(f"status {int(request_id)} {caller.id} {state}")
        return Answer(204)

    def my_result(self, request_id: str, caller: Node, headers: Any, body: bytes, **_: Any) -> Answer:
        media_type = headers.get("Content-Type") or XML
        self.state.results[(int(request_id), caller.id)] = (media_type, body, int(time.time()))
        self.notify(f"result {int(request_id)} {caller.id} {jaxrs_media_type(media_type)}")
        return Answer(204)

    def my_resource(self, name: str, caller: Node, headers: Any, body: bytes, **_: Any) -> Answer:
        self.state.resources[(caller.id, name)] = (headers.get("Content-Type") or "", body)
        self.notify(f"resource {caller.id} {name}")
        return Answer(204)

    @staticmethod
    def xml(root: str) -> Answer:
        return Answer(200, document(root), XML)


def extension(media_type: str) -> str:
    """The file extension the real broker guesses for a media type."""
    kind = media_type.split(";")[0]
    if kind.endswith("xml"):
        return ".xml"
    if kind.endswith("json"):
        return ".json"
    if kind.startswith("text"):
        return ".txt"
    return ".zip" if kind == "application/zip" else ""


def jaxrs_media_type(header: str) -> str:
    """A Content-Type header as JAX-RS's MediaType writes it back: no spaces around ';' and '='."""
    parts = [part.strip() for part in header.split(";") if part.strip()]
    return ";".join([parts[0], *("=".join(p.strip() for p in param.split("=", 1)) for param in parts[1:])])


def java_url_encode(text: str) -> str:
    """java.net.URLEncoder.encode: like quote_plus, but '*' stays and '~' is encoded."""
    return quote_plus(text, safe="*").replace("~", "%7E")


def read_api_keys(path: Path) -> dict[str, str]:
    keys = {}
    for line in path.read_text(encoding="iso-8859-1").splitlines():
        if line.strip() and not line.lstrip().startswith(("#", "!")) and "=" in line:
            key, dn = line.split("=", 1)
            keys[key.strip()] = dn.strip()
    return keys


def shut(sock: socket.socket) -> None:
    """Ends a connection from any thread: shutdown() rather than close() wakes the thread that
    serves it, which then closes the socket."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        # Already ended by the client.
        pass


class AdminSession:
    """One open admin websocket. The REST threads write their broadcasts to it while its own
    thread answers the client, so every write goes under `lock`, whole frames in order."""

    def __init__(self, sock: socket.socket, idle_timeout: int) -> None:
        self.sock = sock
        self.idle_timeout = idle_timeout
        self.protocol = Connection(ConnectionType.SERVER)
        self.lock = threading.Lock()
        # Jetty's idle timer counts frames either way.
        self.last = time.monotonic()
        # Only select() waits for the client; this bounds a write to one that reads nothing.
        sock.settimeout(SEND_SECONDS)

    def send(self, event: Message[Any] | Pong | CloseConnection) -> None:
        """Writes `event` unless the session is closing; a write that fails ends the session."""
        with self.lock:
            try:
                data = self.protocol.send(event)
            except LocalProtocolError:
                # The session is closing or closed: there is nobody to tell.
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.end()
                return
            self.last = time.monotonic()

    def close(self, event: CloseConnection) -> None:
        """Sends the close frame and ends the connection without waiting for the client's
        answer, as Jetty does."""
        self.send(event)
        self.end()

    def end(self) -> None:
        shut(self.sock)

    def serve(self) -> None:
        """Answers the client until either side closes the session or it idles out."""
        text = ""
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            while True:
                idle = time.monotonic() - self.last
                if idle >= self.idle_timeout:
                    reason = f"Idle timeout expired: {int(idle * 1000)}/{self.idle_timeout * 1000} ms"
                    self.close(CloseConnection(CloseReason.GOING_AWAY, f"java.util.concurrent.TimeoutException: {reason}"))
                    return
                if not selector.select(self.idle_timeout - idle):
                    continue
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    data = b""
                with self.lock:
                    self.protocol.receive_data(data or None)
                    events = list(self.protocol.events())
                self.last = time.monotonic()
                for event in events:
                    if isinstance(event, CloseConnection):
                        self.close(event.response())
                        return
                    if isinstance(event, Ping):
                        self.send(event.response())
                    elif isinstance(event, TextMessage):
                        text += event.data
                        if event.message_finished:
                            # The only message the broker answers; it ignores any other text,
                            # binary messages and pongs.
                            if text.startswith("ping "):
                                self.send(Message(data="pong " + text[5:]))
                            text = ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm, each kept-alive answer
    # would wait for the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True
    double: ClassVar[BrokerDouble]

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.double.opened(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.double.finished(self)

    def serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.is_upgrade():
            self.websocket()
            return
        try:
            answer = self.double.api.handle(self.command, self.path, self.headers, body)
        except Failure as failure:
            answer = self.error_page(failure)
        self.reply(answer)

    def reply(self, answer: Answer) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        if answer.content_type:
            self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    def error_page(self, failure: Failure) -> Answer:
        """Jetty's error page, in plain text when the client accepts it, else HTML."""
        if not failure.page:
            return Answer(failure.status)
        path = urlsplit(self.path).path
        if "text/plain" in (self.headers.get("Accept") or ""):
            text = (
                f"HTTP ERROR {failure.status} {failure.message}\nURI: {path}\nSTATUS: {failure.status}\n"
                f"MESSAGE: {failure.message}\nSERVLET: org.glassfish.jersey.servlet.ServletContainer-1\n"
            )
            return Answer(failure.status, text.encode("iso-8859-1"), "text/plain;charset=iso-8859-1")
        html = f"<html><body><h2>HTTP ERROR {failure.status} {escape(failure.message)}</h2></body></html>\n"
        return Answer(failure.status, html.encode("iso-8859-1"), "text/html;charset=iso-8859-1")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = serve

    def is_upgrade(self) -> bool:
        return (
            self.command == "GET" and urlsplit(self.path).path == WEBSOCKET_PATH
            and "websocket" in (self.headers.get("Upgrade") or "").lower() and bool(self.headers.get("Sec-WebSocket-Key"))
        )

    def websocket(self) -> None:
        """The admin websocket's handshake, authenticated as REST calls are, then the session."""
        # No HTTP on this connection after an upgrade, whatever its outcome.
        self.close_connection = True
        state = self.double.state
        authorization = self.headers.get("Authorization")
        with state.lock:
            dn = state.dn(authorization)
            if dn is not None and not is_admin(dn):
                # The handshake registers a node as its REST calls do.
                state.node(authorization)
        if dn is None:
            # The real broker means to refuse by an empty Sec-WebSocket-Accept, but Jetty fails to
            # add its own to that (immutable) list: the answer is its error page of the exception.
            page = self.error_page(Failure(500, "java.lang.UnsupportedOperationException"))
            self.reply(Answer(page.status, page.body, page.content_type, (("Connection", "close"),)))
            return
        digest = hashlib.sha1((self.headers["Sec-WebSocket-Key"].strip() + WEBSOCKET_GUID).encode()).digest()
        self.send_response(101)
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", base64.b64encode(digest).decode())
        self.send_header("Upgrade", "WebSocket")
        self.end_headers()
        # RFC 6455 has the client wait for this answer before it sends a frame, so none of its
        # bytes can sit in rfile's buffer: the session reads the socket itself.
        session = AdminSession(self.connection, self.double.idle_timeout)
        if not is_admin(dn):
            # Opened, found not to be an administrator's, and closed at once, without a reason.
            session.close(CloseConnection(CloseReason.NORMAL_CLOSURE))
            return
        self.double.hold(session, f"welcome {common_name(dn)}")


class BrokerDouble(BrokerServer):
    """The double in this process. `idle_timeout` is the seconds after which it closes a silent
    admin websocket (the real broker's aktin.broker.websocket.idletimeoutseconds)."""

    kind = f"the AKTIN Broker double (held to {DOUBLE_VERSION} by recorded exchanges)"
    short = "broker double"
    version = DOUBLE_VERSION

    def __init__(self, directory: Path, hospitals: bool = True, port: int = 0, idle_timeout: int = IDLE_TIMEOUT) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_api_keys(directory)
        self.state = State(read_api_keys(directory / "api-keys.properties"))
        self.idle_timeout = idle_timeout
        # Guards the open connections and sessions, and is notified when a connection ends.
        self.lock = threading.Condition()
        self.connections: set[socket.socket] = set()
        self.sessions: set[AdminSession] = set()
        self.handler = type("BoundHandler", (Handler,), {"double": self})
        self.port = port
        self.listening = False
        # Its address is known once it listens.
        self.api = Api(self.state, "", self.broadcast)
        self._launch()
        self._ready(lambda: None, hospitals)

    def _launch(self) -> None:
        http = LocalHttpServer(self.handler, port=self.port)
        with self.lock:
            self.http = http
            self.port = int(urlsplit(http.url).port or 0)
            self.api.url = http.url
            self.listening = True

    def opened(self, handler: Handler) -> None:
        with self.lock:
            if self.listening and handler.server is self.http.server:
                self.connections.add(handler.connection)
                return
        # Accepted just before the listener stopped, or before start() knew it listens: the
        # client tries again.
        shut(handler.connection)

    def finished(self, handler: Handler) -> None:
        with self.lock:
            self.connections.discard(handler.connection)
            self.lock.notify_all()

    def hold(self, session: AdminSession, welcome: str) -> None:
        """Serves an admin's session in the calling thread until it ends; meanwhile it gets
        every broadcast."""
        with self.lock:
            self.sessions.add(session)
        try:
            session.send(Message(data=welcome))
            session.serve()
        finally:
            with self.lock:
                self.sessions.discard(session)

    def broadcast(self, text: str) -> None:
        with self.lock:
            sessions = list(self.sessions)
        for session in sessions:
            session.send(Message(data=text))

    def stop(self) -> None:
        """Stops listening, closes the open admin websockets as Jetty does when it stops (a close
        frame without a code), drops every other connection and waits for their threads."""
        self.http.stop()
        with self.lock:
            self.listening = False
            sessions, connections = list(self.sessions), list(self.connections)
        for session in sessions:
            # wsproto (from 1.2 on) sends this code as a close frame without one.
            session.close(CloseConnection(CloseReason.NO_STATUS_RCVD))
        for connection in connections:
            shut(connection)
        with self.lock:
            if not self.lock.wait_for(lambda: not self.connections, STOP_SECONDS):
                raise RuntimeError(f"{len(self.connections)} connections still open {STOP_SECONDS} s after stop")

    def restart(self, down: float = 0.0) -> None:
        """Keeps every request, node, result and status in memory across the restart."""
        self.stop()
        time.sleep(down)
        self._launch()
        self._wait(lambda: None)


class BrokerDoubleProcess(BrokerServer):
    """The double in a process of its own, for the benchmark: the memory it holds must not count
    as that of the runs it serves (Linux keeps a process's peak RSS across fork and exec). Its
    state lives and dies with the process, so it has no restart()."""

    kind = BrokerDouble.kind
    short = BrokerDouble.short

    def __init__(self, directory: Path, idle_timeout: int = IDLE_TIMEOUT) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.broker_double.server", str(directory), str(self.port), str(idle_timeout)], cwd=ROOT
        )
        self._ready(lambda: None if self.process.poll() is None else "the broker double exited", True)

    def stop(self) -> None:
        stop(self.process, 10)


if __name__ == "__main__":
    BrokerDouble(Path(sys.argv[1]), hospitals=False, port=int(sys.argv[2]), idle_timeout=int(sys.argv[3]))
    threading.Event().wait()
