"""A double of the AKTIN Broker 1.5.1 and 1.5.2 (which answer alike but for their version): the
part of its REST API that the product, the tests, the demo and the benchmark use, with the real
one's answers (held to them by the replay test in tests/integration/test_broker_double.py against
recording.json).

It exists because the real broker's server jars are on no registry this project reaches. It
keeps everything in memory, serves HTTP/1.1 keep-alive on 127.0.0.1 from threads, and reads the
same api-keys.properties as the real one.
"""

from __future__ import annotations

import email.utils
import io
import re
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit
from xml.sax.saxutils import escape

from lxml import etree

from tests.peers import free_port, stop
from tests.peers.broker import DOUBLE_VERSION, BrokerServer, write_api_keys
from tests.peers.http_server import LocalHttpServer

ROOT = Path(__file__).resolve().parent.parent.parent

NS = "http://aktin.org/ns/exchange"
# The node's timestamps of a request, in the order the real broker writes them.
STATES = ("deleted", "retrieved", "queued", "processing", "completed", "rejected", "failed", "expired", "interaction")
POSTABLE = {"retrieved", "queued", "processing", "completed", "rejected", "failed", "interaction"}
DOWNLOAD_SECONDS = 600
XML = "application/xml"


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
        self.downloads: dict[str, tuple[str, bytes, float]] = {}

    def node(self, authorization: str | None) -> Node:
        """The caller's node, registered on its first authenticated call."""
        key = (authorization or "").removeprefix("Bearer ") if (authorization or "").startswith("Bearer ") else None
        if key is None or key not in self.keys:
            raise unauthorized()
        dn = self.keys[key]
        node = self.nodes.get(dn)
        if node is None:
            node = self.nodes[dn] = Node(len(self.nodes), dn)
        node.last_contact = now(3)
        return node

    def admin(self, authorization: str | None) -> None:
        key = (authorization or "").removeprefix("Bearer ")
        if not (authorization or "").startswith("Bearer ") or "OU=admin" not in self.keys.get(key, "").split(","):
            raise unauthorized()


class Api:
    """The broker's endpoints; each returns an Answer or raises Failure."""

    def __init__(self, state: State, url: str) -> None:
        self.state = state
        self.url = url
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

    def request(self, request_id: str) -> Request:
        request = self.state.requests.get(int(request_id))
        if request is None:
            raise Failure(404, "Not Found", page=False)
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
        self.request(request_id).published = now(6)
        return Answer(204)

    def close(self, request_id: str, **_: Any) -> Answer:
        self.request(request_id).closed = now(6)
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
        return Answer(204)

    def my_result(self, request_id: str, caller: Node, headers: Any, body: bytes, **_: Any) -> Answer:
        self.state.results[(int(request_id), caller.id)] = (headers.get("Content-Type") or XML, body, int(time.time()))
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


class BrokerDouble(BrokerServer):
    kind = f"the AKTIN Broker double (held to {DOUBLE_VERSION} by recorded exchanges)"
    short = "broker double"
    version = DOUBLE_VERSION

    def __init__(self, directory: Path, hospitals: bool = True, port: int = 0) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_api_keys(directory)
        state = State(read_api_keys(directory / "api-keys.properties"))
        api: list[Api] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle's algorithm, each kept-alive
            # answer would wait for the client's delayed ACK (40 ms).
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    answer = api[0].handle(self.command, self.path, self.headers, body)
                except Failure as failure:
                    answer = self.error_page(failure)
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

        self.http = LocalHttpServer(Handler, port=port)
        self.port = int(urlsplit(self.http.url).port or 0)
        api.append(Api(state, f"http://127.0.0.1:{self.port}"))
        self._ready(lambda: None, hospitals)

    def stop(self) -> None:
        self.http.stop()


class BrokerDoubleProcess(BrokerServer):
    """The double in a process of its own, for the benchmark: the memory it holds must not count
    as that of the runs it serves (Linux keeps a process's peak RSS across fork and exec)."""

    kind = BrokerDouble.kind
    short = BrokerDouble.short

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.broker_double.server", str(directory), str(self.port)], cwd=ROOT
        )
        self._ready(lambda: None if self.process.poll() is None else "the broker double exited", True)

    def stop(self) -> None:
        stop(self.process, 10)


if __name__ == "__main__":
    BrokerDouble(Path(sys.argv[1]), hospitals=False, port=int(sys.argv[2]))
    threading.Event().wait()
