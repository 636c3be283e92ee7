"""The AKTIN Broker for a test session: the real one (1.5.2 or 1.5.1, where its jars are present)
or the double held to them, and the calls the tests make on it as its administrator and as
hospitals."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from xml.sax.saxutils import escape

import requests

from tests.peers import free_port, stop

# The releases the double's conversation was checked against (recording.json), newest first.
RELEASES = ("1.5.2", "1.5.1")
# The one the recording was made from, whose answers the double gives, its version included.
DOUBLE_VERSION = "1.5.2"
# The real broker closes an admin websocket after this many seconds without a frame either way
# (its system property aktin.broker.websocket.idletimeoutseconds).
IDLE_TIMEOUT = 7200
ADMIN_KEY = "xxxAdmin1234"
NODE_KEYS = {
    "Schwarzwaldklinik": "xxxApiKey123",
    "Sachsenklinik": "xxxApiKey567",
    "Bergklinik": "xxxApiKey890",
}
REQUEST_TYPE = "application/vnd.aktin.query.request+xml"
POM = Path(__file__).resolve().parent.parent / "broker" / "pom.xml"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aktin-broker-sftp"


NO_JARS_HINT = f"AKTIN_BROKER_LIB or {CACHE}/broker-VERSION/lib ({' or '.join(RELEASES)}) would name them"
NO_JARS = "no AKTIN Broker jars (its server artifacts are on no registry this project reaches); " + NO_JARS_HINT


def classpath() -> Path | None:
    """The directory of the real broker's jars, if this machine has them: the newest release's."""
    if os.environ.get("AKTIN_BROKER_LIB"):
        return Path(os.environ["AKTIN_BROKER_LIB"])
    for version in RELEASES:
        lib = CACHE / f"broker-{version}" / "lib"
        if (lib / f"broker-admin-{version}.jar").exists():
            return lib
    return None


def jar_version(lib: Path) -> str:
    """The release of the broker in `lib`: the version in broker-admin's file name, or where
    that has none, the one AKTIN_BROKER_VERSION states."""
    names = [jar.name for jar in lib.glob("broker-admin-*.jar")]
    if len(names) == 1:
        return names[0].removeprefix("broker-admin-").removesuffix(".jar")
    if os.environ.get("AKTIN_BROKER_VERSION"):
        return os.environ["AKTIN_BROKER_VERSION"]
    raise RuntimeError(f"{lib} has {len(names)} broker-admin-VERSION.jar; set AKTIN_BROKER_VERSION to the broker's release")


def which() -> str:
    """The session's broker, as the test report's header and the demo name it."""
    lib = classpath()
    if lib is not None:
        return f"the real AKTIN Broker {jar_version(lib)} (jars in {lib})"
    return f"the AKTIN Broker double (no real broker jars on this machine; {NO_JARS_HINT})"


def start(directory: Path, own_process: bool = False, idle_timeout: int = IDLE_TIMEOUT) -> BrokerServer:
    """The real broker where its jars are present, the double everywhere else (in this process,
    or with `own_process` in one of its own, as the real one always is); `idle_timeout` is the
    seconds after which it closes a silent admin websocket."""
    lib = classpath()
    if lib is not None:
        return RealBroker(lib, directory, idle_timeout=idle_timeout)
    # Imported here: the double builds on this module's BrokerServer.
    from tests.broker_double.server import BrokerDouble, BrokerDoubleProcess

    if own_process:
        return BrokerDoubleProcess(directory, idle_timeout)
    return BrokerDouble(directory, idle_timeout=idle_timeout)


def write_api_keys(directory: Path) -> None:
    keys = [f"{ADMIN_KEY}=CN=Admin,O=AKTIN,OU=admin"]
    keys += [f"{key}=CN={name},O={name},L=Test" for name, key in NODE_KEYS.items()]
    (directory / "api-keys.properties").write_text("\n".join(keys) + "\n", encoding="iso-8859-1")


def request_xml(title: str, tags: list[str], prefix: str = "") -> str:
    """A minimal query request definition; `prefix` writes it with a namespace prefix."""
    p = f"{prefix}:" if prefix else ""
    ns = f"xmlns{':' + prefix if prefix else ''}=\"http://aktin.org/ns/exchange\""
    tag_xml = "".join(f"<{p}tag>{escape(tag)}</{p}tag>" for tag in tags)
    return (
        f'<{p}queryRequest {ns} xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<{p}id>1</{p}id><{p}reference>2026-01-01T00:00:00Z</{p}reference>"
        f"<{p}query><{p}title>{escape(title)}</{p}title><{p}description/>"
        f"<{p}principal><{p}name/><{p}organisation/><{p}email/><{p}phone/><{p}tags>{tag_xml}</{p}tags></{p}principal>"
        f'<{p}schedule xsi:type="{p}singleExecution"><{p}duration>-P1Y</{p}duration></{p}schedule>'
        f"</{p}query></{p}queryRequest>"
    )


class BrokerServer:
    """An AKTIN Broker on 127.0.0.1 and the calls the tests make on it as its administrator
    and as hospitals (`nodes`, by name: `submit` a result); `kind` says which broker it is,
    `version` which release it answers as. Its admin websocket is at `websocket_url`."""

    kind = ""
    short = ""
    version = ""
    port = 0

    def _ready(self, alive: Callable[[], str | None], hospitals: bool) -> None:
        """Waits until the broker answers (`alive` says why it never will), then registers the
        hospitals unless told not to."""
        self._wait(alive)
        self.admin = requests.Session()
        self.admin.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        self.nodes = {name: Hospital(self.url, key) for name, key in NODE_KEYS.items()} if hospitals else {}

    def _wait(self, alive: Callable[[], str | None]) -> None:
        self.url = f"http://127.0.0.1:{self.port}"
        self.websocket_url = f"ws://127.0.0.1:{self.port}/broker/websocket"
        deadline = time.monotonic() + 90
        while True:
            problem = alive()
            if problem:
                raise RuntimeError(problem)
            try:
                if requests.get(f"{self.url}/broker/status", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not start within 90 s")
            time.sleep(0.3)

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self, down: float = 0.0) -> None:
        """Stops the broker, which drops every connection (websockets included) and refuses new
        ones for `down` seconds, then starts it again on the same port with the same requests,
        nodes and results, and waits until it answers."""
        raise NotImplementedError

    def create_request(self, tags: list[str], title: str = "test", prefix: str = "", publish: bool = True) -> int:
        response = self.admin.post(
            f"{self.url}/broker/request", data=request_xml(title, tags, prefix).encode(),
            headers={"Content-Type": REQUEST_TYPE},
        )
        assert response.status_code == 201, response.text
        request_id = int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])
        if publish:
            assert self.admin.post(f"{self.url}/broker/request/{request_id}/publish").ok
        return request_id

    def set_tags(self, request_id: int, tags: list[str]) -> None:
        response = self.admin.put(
            f"{self.url}/broker/request/{request_id}", data=request_xml("test", tags).encode(),
            headers={"Content-Type": REQUEST_TYPE},
        )
        assert response.ok, response.text

    def delete_request(self, request_id: int) -> None:
        assert self.admin.delete(f"{self.url}/broker/request/{request_id}").ok

    def export(self, request_id: int) -> dict[str, bytes]:
        """The request's bundle as the broker exports it now: entry name -> content."""
        token = self.admin.post(
            f"{self.url}/broker/export/request-bundle/{request_id}", headers={"Accept": "text/plain"}
        ).text.strip()
        data = requests.get(f"{self.url}/broker/download/{token}").content
        return zip_entries(data)


class Hospital:
    """A node acting through the node API with its own key, as the real client would."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        response = self.session.get(f"{url}/broker/my/request")  # registers the node
        assert response.ok, response.text

    def pending(self) -> list[int]:
        root = ET.fromstring(self.session.get(f"{self.url}/broker/my/request").content)
        return [int(e.get("id", "")) for e in root.iter("{http://aktin.org/ns/exchange}request")]

    def submit(self, request_id: int, result: bytes | BinaryIO, media_type: str = "text/plain") -> None:
        for state in ("retrieved", "processing"):
            assert self.session.post(f"{self.url}/broker/my/request/{request_id}/status/{state}").ok
        response = self.session.put(
            f"{self.url}/aggregator/my/request/{request_id}/result", data=result, headers={"Content-Type": media_type}
        )
        assert response.ok, response.text
        assert self.session.post(f"{self.url}/broker/my/request/{request_id}/status/completed").ok

    def fail(self, request_id: int, message: str) -> None:
        response = self.session.post(
            f"{self.url}/broker/my/request/{request_id}/status/failed", data=message.encode(),
            headers={"Content-Type": "text/plain"},
        )
        assert response.ok, response.text


class RealBroker(BrokerServer):
    """The real broker in a process of its own; its database lives in `directory`, so that a
    restart keeps it."""

    def __init__(self, lib: Path, directory: Path, hospitals: bool = True, idle_timeout: int = IDLE_TIMEOUT) -> None:
        self.version = jar_version(lib)
        self.kind = f"the real AKTIN Broker {self.version}"
        self.short = f"real broker {self.version}"
        self.lib = lib
        self.directory = directory
        self.idle_timeout = idle_timeout
        directory.mkdir(parents=True, exist_ok=True)
        write_api_keys(directory)
        self.port = free_port()
        self._launch()
        self._ready(self._exited, hospitals)

    def _launch(self) -> None:
        self.log = open(self.directory / "broker.log", "ab")
        self.process = subprocess.Popen(
            [
                shutil.which("java") or "java", "-Xmx512m", "-cp", f"{self.lib}/*",
                "-Daktin.broker.password=test-admin-password",
                f"-Daktin.broker.websocket.idletimeoutseconds={self.idle_timeout}",
                "org.aktin.broker.admin.standalone.HttpServer", f"127.0.0.1:{self.port}",
            ],
            cwd=self.directory, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def _exited(self) -> str | None:
        if self.process.poll() is None:
            return None
        return f"broker exited: {(self.directory / 'broker.log').read_text()[-2000:]}"

    def stop(self) -> None:
        stop(self.process, 20)
        self.log.close()

    def restart(self, down: float = 0.0) -> None:
        self.stop()
        time.sleep(down)
        self._launch()
        self._wait(self._exited)


def zip_entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}

