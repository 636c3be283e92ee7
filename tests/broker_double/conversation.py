"""A fixed conversation with an AKTIN Broker, and its answers in a comparable form.

`record.py` holds a real broker to it and stores the answers in `recording.json`, with the
releases they were checked against. `tests/integration/test_broker_double.py` holds the double to
the same conversation and fails on any difference. Everything here is what the product, the
tests, the demo and the benchmark send, including the error cases, so that the double behaves
like the real broker wherever we rely on it.

An admin websocket is open from the first step: every answer lists the frames each open admin
session received because of that step. The broker writes a step's broadcasts before its HTTP
answer, and a session's frames in order, so after each step a `ping` on the session and the
broker's `pong` mark where the step's frames end. The conversation runs against a broker whose
websocket idle timeout is IDLE_SECONDS, and ends by waiting for it.

What legitimately varies between two runs is normalised: timestamps of "now" (their shape, with
the number of fraction digits, is kept), download ids, the server's address, and how long an
idle session really idled. Node status posts carry fixed `Date` headers, so the timestamps they
set are compared exactly.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit

import websocket

from aktin_sftp.broker import REQUEST_TYPE, tag_predicate
from tests.peers.broker import ADMIN_KEY, NODE_KEYS, request_xml

NS = "{http://aktin.org/ns/exchange}"
RECORDING = Path(__file__).resolve().parent / "recording.json"
# What recording.json says of each broker release checked.
RECORDED = "recorded from it"
ALIKE = "the same answers, but for its version in /broker/status"
EARLIER = "checked against an earlier conversation only: record from it again"
# The headers whose difference would matter to a client; Date and Server vary and mean nothing.
RELEVANT_HEADERS = ("content-type", "location", "content-disposition", "www-authenticate")
TIMESTAMP = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
DOWNLOAD_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
FIRST = "Schwarzwaldklinik"
SECOND = "Sachsenklinik"
THIRD = "Bergklinik"
# The broker's websocket idle timeout during the conversation (whole seconds, as the real one's).
IDLE_SECONDS = 3
# The longest wait for a websocket frame a step should bring.
WAIT = 10
IDLE_REASON = re.compile(r"(Idle timeout expired: )\d+/")


@dataclass(frozen=True)
class Step:
    """One call. `path` may name created requests as {name}, nodes as {node:Name} and the last
    download id as {download}; `remember` names the request whose Location the answer gives."""

    label: str
    actor: str
    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    remember: str | None = None


@dataclass(frozen=True)
class Socket:
    """A websocket action on the admin session `name`: "open" it as `actor` (an admin's stays
    open; any other is read until the broker closes it), "send" it `data` as a text message or as
    a "binary" one, "ping" it `data` in a ping frame, "close" it with `data` as the reason, or
    let it "idle" until the broker closes it."""

    label: str
    action: Literal["open", "send", "binary", "ping", "close", "idle"]
    name: str = "watcher"
    actor: str = "admin"
    data: str = ""


def _definition(tags: list[str], prefix: str = "") -> bytes:
    return request_xml("conversation", tags, prefix).encode()


def _create(name: str, body: bytes, content_type: str | None = REQUEST_TYPE) -> Step:
    headers = (("Content-Type", content_type),) if content_type else ()
    return Step(f"create {name}", "admin", "POST", "/broker/request", body, headers, remember=name)


def _status(node: str, request: str, state: str, date: str | None, message: bytes = b"") -> Step:
    headers: tuple[tuple[str, str], ...] = (("Date", date),) if date else ()
    if message:
        headers += (("Content-Type", "text/plain"),)
    return Step(f"{node} {state} {request}", node, "POST", f"/broker/my/request/{{{request}}}/status/{state}", message, headers)


def _filtered(label: str, predicate: str, media_type: str = REQUEST_TYPE, actor: str = "admin") -> Step:
    return Step(label, actor, "GET", "/broker/request/filtered?" + urlencode({"type": media_type, "predicate": predicate}))


def _get(label: str, actor: str, path: str, accept: str | None = None) -> Step:
    return Step(label, actor, "GET", path, headers=(("Accept", accept),) if accept else ())


def _post(label: str, actor: str, path: str, accept: str | None = None) -> Step:
    return Step(label, actor, "POST", path, headers=(("Accept", accept),) if accept else ())


def _result(node: str, request: str, data: bytes, media_type: str) -> Step:
    return Step(
        f"{node} result {request}", node, "PUT", f"/aggregator/my/request/{{{request}}}/result", data,
        (("Content-Type", media_type),),
    )


MONDAY = "Mon, 06 May 2024 10:00:00 GMT"
TUESDAY = "Tue, 07 May 2024 11:30:15 GMT"
WEDNESDAY = "Wed, 08 May 2024 09:15:00 GMT"
OURS = tag_predicate("rki")
UPSTREAM = "//tag='rki'"

STEPS: tuple[Step | Socket, ...] = (
    Socket("admin websocket", "open"),
    _get("status", "anonymous", "/broker/status"),
    Step("status head", "anonymous", "HEAD", "/broker/status"),
    _filtered("listing without a key", OURS, actor="anonymous"),
    _filtered("listing with an unknown key", OURS, actor="unknown"),
    _filtered("listing with a node key", OURS, actor=FIRST),
    _filtered("listing with a malformed authorization", OURS, actor="basic"),
    _get("first node registers", FIRST, "/broker/my/request"),
    _get("second node registers", SECOND, "/broker/my/request"),
    Socket("websocket without a key", "open", "refused", actor="anonymous"),
    Socket("websocket with an unknown key", "open", "refused", actor="unknown"),
    Socket("websocket with a malformed authorization", "open", "refused", actor="basic"),
    # A node key opens the admin websocket for a moment, and registers the node.
    Socket("websocket with a node key", "open", "node", actor=THIRD),
    _get("nodes", "admin", "/broker/node"),
    _get("node list as a node", FIRST, "/broker/node"),
    Socket("a second admin websocket", "open", "second"),
    _create("tagged", _definition(["rki", "other"])),
    _create("prefixed", _definition([" rki "], prefix="ns")),
    _create("untagged", _definition(["other"])),
    _create("unparsable", b"<queryRequest><unclosed></queryRequest>"),
    _create("typeless", _definition(["rki"]), content_type=None),
    _create("doomed", _definition(["rki"])),
    _create("closing", _definition(["rki"])),
    _create("exact prefixed", _definition(["rki"], prefix="ns")),
    _create("binary", _definition(["bin"])),
    Socket("the second admin websocket closes", "close", "second", data="bye"),
    _get("definition before publishing", "admin", "/broker/request/{tagged}", REQUEST_TYPE),
    _get("definition of a typeless request", "admin", "/broker/request/{typeless}", REQUEST_TYPE),
    _get("definition in another type", "admin", "/broker/request/{tagged}", "text/plain"),
    _get("definition of an unknown request", "admin", "/broker/request/999", REQUEST_TYPE),
    _get("listing as a node before publishing", FIRST, "/broker/my/request"),
    *(_post(f"publish {name}", "admin", f"/broker/request/{{{name}}}/publish")
      for name in ("tagged", "prefixed", "untagged", "unparsable", "doomed", "closing", "exact prefixed", "binary")),
    _post("publish again", "admin", "/broker/request/{tagged}/publish"),
    _post("publish an unknown request", "admin", "/broker/request/999/publish"),
    _get("listing as a node", FIRST, "/broker/my/request"),
    _get("definition as a node", FIRST, "/broker/my/request/{tagged}", REQUEST_TYPE),
    _get("status without any node", "admin", "/broker/request/{tagged}/status"),
    _status(FIRST, "tagged", "retrieved", MONDAY),
    _status(FIRST, "tagged", "processing", MONDAY),
    _result(FIRST, "tagged", b"42 cases\n", "text/plain"),
    _status(FIRST, "tagged", "completed", TUESDAY),
    _status(SECOND, "tagged", "retrieved", MONDAY),
    _result(SECOND, "tagged", b'{"cases": 17}', "application/json"),
    _status(SECOND, "tagged", "failed", WEDNESDAY, b"the export broke"),
    _status(SECOND, "prefixed", "rejected", TUESDAY, b"not for us"),
    _status(SECOND, "prefixed", "interaction", WEDNESDAY),
    _status(FIRST, "prefixed", "queued", MONDAY),
    _status(FIRST, "prefixed", "interaction", TUESDAY, b"please confirm"),
    _status(FIRST, "prefixed", "processing", WEDNESDAY),
    _status(FIRST, "prefixed", "completed", None),
    _result(FIRST, "prefixed", b"PK-not-really-a-zip", "application/zip"),
    _status(FIRST, "tagged", "expired", TUESDAY),
    _status(FIRST, "untagged", "completed", MONDAY),
    _result(FIRST, "untagged", b"<result>1</result>", "application/xml"),
    _result(FIRST, "binary", bytes(range(256)), "application/octet-stream"),
    _status(FIRST, "binary", "completed", WEDNESDAY),
    Step("a status the broker does not know", FIRST, "POST", "/broker/my/request/{tagged}/status/bogus"),
    _result(SECOND, "closing", b"7 cases\n", "text/plain; charset=UTF-8"),
    Step("a node uploads a resource", FIRST, "PUT", "/broker/my/node/stats", b"<stats/>", (("Content-Type", "application/xml"),)),
    _get("status of a request with two nodes", "admin", "/broker/request/{tagged}/status"),
    _get("status with interaction and messages", "admin", "/broker/request/{prefixed}/status"),
    _get("status of an unknown request", "admin", "/broker/request/999/status"),
    _get("status message", "admin", "/broker/request/{tagged}/status/{node:Sachsenklinik}"),
    _get("status without message", "admin", "/broker/request/{tagged}/status/{node:Schwarzwaldklinik}"),
    _get("status as a node", FIRST, "/broker/request/{tagged}/status"),
    _filtered("our predicate", OURS),
    _filtered("upstream predicate", UPSTREAM),
    _filtered("predicate on another tag", tag_predicate("other")),
    _filtered("predicate matching nothing", tag_predicate("nobody")),
    _filtered("another media type", OURS, media_type="text/plain"),
    _filtered("a predicate that is a node set", "//tag"),
    _filtered("a predicate that is a number", "count(//tag)"),
    _filtered("a predicate that is not XPath", "//tag[="),
    _get("the product's check of a listed definition", "admin", "/broker/request/{tagged}", REQUEST_TYPE),
    _post("export", "admin", "/broker/export/request-bundle/{tagged}", "text/plain"),
    _get("download", "anonymous", "/broker/download/{download}"),
    _post("export of a zip result and two messages", "admin", "/broker/export/request-bundle/{prefixed}", "text/plain"),
    _get("download of a zip result and two messages", "admin", "/broker/download/{download}"),
    _post("export of one xml result", "admin", "/broker/export/request-bundle/{untagged}", "text/plain"),
    _get("download of one xml result", "admin", "/broker/download/{download}"),
    _post("export of a binary result", "admin", "/broker/export/request-bundle/{binary}", "text/plain"),
    _get("download of a binary result", "admin", "/broker/download/{download}"),
    _get("download again", "admin", "/broker/download/{download}"),
    _post("export of a request without results", "admin", "/broker/export/request-bundle/{doomed}", "text/plain"),
    _get("download without results", "admin", "/broker/download/{download}"),
    _post("export of an unknown request", "admin", "/broker/export/request-bundle/999", "text/plain"),
    _get("download of an unknown id", "admin", "/broker/download/00000000-0000-0000-0000-000000000000"),
    _post("export as a node", FIRST, "/broker/export/request-bundle/{tagged}", "text/plain"),
    Step("retag", "admin", "PUT", "/broker/request/{tagged}", _definition(["other"]), (("Content-Type", REQUEST_TYPE),)),
    _filtered("listing after retagging", OURS),
    _post("close", "admin", "/broker/request/{closing}/close"),
    _post("close again", "admin", "/broker/request/{closing}/close"),
    _post("close an unknown request", "admin", "/broker/request/999/close"),
    _filtered("listing after closing", OURS),
    _get("node listing after closing", FIRST, "/broker/my/request"),
    Step("delete", "admin", "DELETE", "/broker/request/{doomed}"),
    Step("delete an unknown request", "admin", "DELETE", "/broker/request/999"),
    _get("definition after deleting", "admin", "/broker/request/{doomed}", REQUEST_TYPE),
    _get("status after deleting", "admin", "/broker/request/{doomed}/status"),
    _filtered("listing after deleting", OURS),
    Step("node deletes a request from its list", FIRST, "DELETE", "/broker/my/request/{prefixed}"),
    _get("node listing after its delete", FIRST, "/broker/my/request"),
    _get("status after the node's delete", "admin", "/broker/request/{prefixed}/status"),
    _get("nodes at the end", "admin", "/broker/node"),
    # Last, as they leave rows of a request that does not exist.
    Step("a node's status for an unknown request", FIRST, "POST", "/broker/my/request/999/status/queued",
         headers=(("Date", MONDAY),)),
    Step("a node's result for an unknown request", FIRST, "PUT", "/aggregator/my/request/999/result", b"lost",
         (("Content-Type", "text/plain"),)),
    Socket("ping text", "send", data="ping hello"),
    Socket("ping text with nothing after it", "send", data="ping "),
    Socket("ping text without a space", "send", data="ping"),
    Socket("other text", "send", data="hello"),
    Socket("binary message", "binary", data="ping binary"),
    Socket("ping frame", "ping", data="frame"),
    Socket("the admin websocket idles", "idle"),
)


def _authorization(actor: str) -> dict[str, str]:
    if actor == "admin":
        return {"Authorization": f"Bearer {ADMIN_KEY}"}
    if actor in NODE_KEYS:
        return {"Authorization": f"Bearer {NODE_KEYS[actor]}"}
    if actor == "unknown":
        return {"Authorization": "Bearer xxxNoSuchKey"}
    if actor == "basic":
        return {"Authorization": f"Basic {ADMIN_KEY}"}
    return {}


class Talker:
    """Runs the steps against one broker, one fresh connection per call, beside the admin
    websocket sessions the steps open."""

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "", parts.port or 80
        self.names: dict[str, str] = {}
        self.sessions: dict[str, websocket.WebSocket] = {}
        self.pings = 0

    def run(self) -> list[dict[str, Any]]:
        answers = []
        try:
            for step in STEPS:
                answer = self.step(step) if isinstance(step, Step) else self.socket(step)
                answer["events"] = self.events()
                answers.append(answer)
        finally:
            for session in self.sessions.values():
                _shut(session)
        return answers

    def step(self, step: Step) -> dict[str, Any]:
        path = re.sub(r"\{([^}]+)\}", lambda m: quote(self.names[m.group(1)]), step.path)
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            connection.request(step.method, path, body=step.body or None,
                               headers={**_authorization(step.actor), **dict(step.headers)})
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        headers = {k.lower(): v for k, v in response.getheaders()}
        if step.remember and response.status == 201:
            self.names[step.remember] = headers["location"].rstrip("/").rsplit("/", 1)[1]
        if path.startswith("/broker/export/") and response.status == 200:
            self.names["download"] = body.decode().strip()
        if path == "/broker/node" and response.status == 200:
            for node in ET.fromstring(body).iter(f"{NS}node"):
                common_name = node.findtext(f"{NS}clientDN", "").split(",")[0].removeprefix("CN=")
                self.names[f"node:{common_name}"] = node.findtext(f"{NS}id", "")
        return {
            "step": step.label,
            "status": response.status,
            "headers": self.headers(headers),
            # A HEAD answer announces the length of the body it leaves out.
            "length matches": step.method == "HEAD" or headers.get("content-length") in (None, str(len(body))),
            "body": self.body(body, headers.get("content-type", ""), step.method),
        }

    def socket(self, step: Socket) -> dict[str, Any]:
        answer: dict[str, Any] = {"step": step.label}
        if step.action == "open":
            answer.update(self.open(step))
        elif step.action == "send":
            self.sessions[step.name].send(step.data)
        elif step.action == "binary":
            self.sessions[step.name].send_binary(step.data.encode())
        elif step.action == "ping":
            self.sessions[step.name].ping(step.data)
        elif step.action == "close":
            session = self.sessions.pop(step.name)
            session.send_close(websocket.STATUS_NORMAL, step.data.encode())
            answer["frames"] = self.frames(session)
        else:  # "idle"
            answer["frames"] = self.frames(self.sessions.pop(step.name), seconds=IDLE_SECONDS + WAIT)
        return answer

    def open(self, step: Socket) -> dict[str, Any]:
        """The handshake's outcome; an admin's session stays open, any other is read until the
        broker closes it."""
        url = "ws" + self.url.removeprefix("http") + "/broker/websocket"
        header = [f"{name}: {value}" for name, value in _authorization(step.actor).items()]
        try:
            session = websocket.create_connection(url, header=header, timeout=WAIT)
        except websocket.WebSocketBadStatusException as refused:
            return {"status": refused.status_code, "headers": self.headers(refused.resp_headers or {})}
        answer: dict[str, Any] = {"status": session.status, "headers": self.headers(session.getheaders() or {})}
        if step.actor == "admin":
            self.sessions[step.name] = session
        else:
            answer["frames"] = self.frames(session)
        return answer

    def events(self) -> dict[str, list[str]]:
        """The frames each open admin session received since the last step."""
        received = {}
        for name, session in sorted(self.sessions.items()):
            self.pings += 1
            session.send(f"ping {self.pings}")
            received[name] = self.frames(session, until=f"pong {self.pings}")
        return received

    def frames(self, session: websocket.WebSocket, until: str | None = None, seconds: float = WAIT) -> list[str]:
        """The frames the session receives up to the text `until` (left out) or the broker's
        close frame (kept, and the connection then closed), within `seconds`."""
        frames: list[str] = []
        deadline = time.monotonic() + seconds
        while True:
            session.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                # The frame as it came: recv_data() would answer a close frame with one of its own.
                frame = session.recv_frame()  # type: ignore[no-untyped-call, unused-ignore]
            except websocket.WebSocketTimeoutException:
                raise AssertionError(f"nothing more than {frames} within {seconds} s, waiting for {until or 'a close'}") from None
            data = bytes(frame.data)
            if frame.opcode == websocket.ABNF.OPCODE_TEXT:
                if data.decode() == until:
                    return frames
                frames.append(self.normalise(data.decode()))
            elif frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                _shut(session)
                code = f" {int.from_bytes(data[:2], 'big')}" if data else ""
                reason = IDLE_REASON.sub(r"\1<ms>/", data[2:].decode())
                frames.append(f"<close{code}{' ' + reason if reason else ''}>")
                return frames
            else:
                frames.append(f"<{websocket.ABNF.OPCODE_MAP[frame.opcode]} {data.decode('utf-8', 'replace')}>")

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        lower = {name.lower(): value for name, value in headers.items()}
        return {name: self.normalise(lower[name]) for name in RELEVANT_HEADERS if name in lower}

    def normalise(self, text: str) -> str:
        text = text.replace(self.url, "<url>")
        text = DOWNLOAD_ID.sub("<download id>", text)
        # Jetty names its servlet instance in error pages with a hash that differs every start.
        text = re.sub(r"ServletContainer-[0-9a-f]+", "ServletContainer", text)
        return TIMESTAMP.sub(_stamp, text)

    def body(self, data: bytes, content_type: str, method: str) -> Any:
        if not data:
            return None
        kind = content_type.split(";")[0].strip()
        if kind == "application/zip":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return {"zip": {name: self.entry(archive.read(name)) for name in sorted(archive.namelist())}}
        if kind.endswith("xml"):
            return {"xml": self.xml(ET.fromstring(data))}
        if kind.startswith("text/plain"):
            return {"text": self.normalise(data.decode("utf-8", "replace"))}
        # Error pages of the web server (HTML) carry no meaning a client reads.
        return {"other": kind}

    def entry(self, data: bytes) -> Any:
        try:
            return {"xml": self.xml(ET.fromstring(data))}
        except ET.ParseError:
            return {"bytes": self.normalise(data.decode("utf-8", "replace"))}

    def xml(self, element: ET.Element) -> list[Any]:
        """Element name (with namespace), attributes, text and children: prefixes and
        indentation do not count."""
        return [
            element.tag,
            {k: self.normalise(v) for k, v in sorted(element.attrib.items())},
            self.normalise((element.text or "").strip()),
            [self.xml(child) for child in element],
        ]


def _shut(session: websocket.WebSocket) -> None:
    session.shutdown()  # type: ignore[no-untyped-call, unused-ignore]


def _stamp(match: re.Match[str]) -> str:
    """A timestamp of the last two days is "now" and varies; fixed ones are kept as they are."""
    text = match.group(0)
    # The fraction (up to nanoseconds from the broker) does not matter within two days, and
    # Python 3.10's fromisoformat would not read it.
    moment = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    if abs(datetime.now(timezone.utc) - moment) > timedelta(days=2):
        return text
    fraction = match.group(1) or ""
    return f"<now{'.' + 'f' * (len(fraction) - 1) if fraction else ''}>"


def _stored() -> dict[str, Any]:
    stored: dict[str, Any] = json.loads(RECORDING.read_text())
    return stored


def load() -> list[dict[str, Any]]:
    """The recorded answers."""
    exchanges: list[dict[str, Any]] = _stored()["exchanges"]
    return exchanges


def brokers() -> dict[str, str]:
    """The broker releases the recording was checked against, each with what was found."""
    checked: dict[str, str] = _stored()["brokers"]
    return checked


def record(version: str, exchanges: list[dict[str, Any]]) -> str:
    """Stores broker `version`'s answers, and says what changed. Answers that differ from the
    recording only in the broker's version keep the recording and add the release to it."""
    stored = _stored()
    recorded_from = next(release for release, found in stored["brokers"].items() if found == RECORDED)
    alike = json.dumps(exchanges).replace(json.dumps(version), json.dumps(recorded_from)) == json.dumps(stored["exchanges"])
    if alike and version == recorded_from:
        return f"broker {version} answers as recorded: nothing changed"
    if alike:
        stored["brokers"][version] = ALIKE
        message = f"broker {version} answers as {recorded_from} did, but for its version: added to the releases checked"
    else:
        others = {release: EARLIER for release in stored["brokers"] if release != version}
        stored = {"brokers": {version: RECORDED, **others}, "exchanges": exchanges}
        message = (
            f"recorded from broker {version}; the double answers as DOUBLE_VERSION (tests/peers/broker.py) names, "
            f"and {', '.join(others) or 'no other release'} need checking again"
        )
    RECORDING.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n")
    return message
