"""How the broker client behaves on the wire, against a canned HTTP server: keep-alive, retries,
errors, streamed downloads and TLS verification. The same checks run in the package tests on
Debian 12's urllib3 1.26; the real broker is in the integration tests."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from aktin_sftp import broker as broker_module
from aktin_sftp.broker import Broker, NodeStatus, RequestFailed
from aktin_sftp.config import BrokerConfig, Secret
from aktin_sftp.errors import ConfigError, SyncError, UnavailableError
from tests.peers import free_port
from tests.peers.certificate import self_signed
from tests.peers.http_server import LocalHttpServer

KEY = "xxxAdmin1234"


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    cut: int | None = None
    delay: float = 0.0
    hang_up: bool = False
    # Seconds between single bytes of the body; with `chunked`, each byte an HTTP chunk of its own.
    trickle: float = 0.0
    chunked: bool = False


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    client_port: int


class CannedBroker:
    """Answers each path with its list of answers in turn (the last one repeats)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.answers: dict[str, list[Answer]] = {}
        self.seen: list[Seen] = []
        canned = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as separate writes; with Nagle each small answer would
            # wait for a delayed ACK.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def answer(self) -> None:
                path = self.path.split("?", 1)[0]
                canned.seen.append(Seen(self.command, path, self.headers.get("Authorization"), self.client_address[1]))
                queue = canned.answers.get(path) or [Answer(404)]
                answer = queue.pop(0) if len(queue) > 1 else queue[0]
                time.sleep(answer.delay)
                self.send_response(answer.status)
                for key, value in answer.headers:
                    self.send_header(key, value)
                if answer.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if answer.trickle:
                    self.trickle(answer)
                    return
                self.wfile.write(answer.body[: answer.cut])
                # Closed without saying so (no Connection: close), as after an idle timeout.
                if answer.cut is not None or answer.hang_up:
                    self.close_connection = True

            def trickle(self, answer: Answer) -> None:
                try:
                    for byte in answer.body:
                        self.wfile.write(b"1\r\n%c\r\n" % byte if answer.chunked else bytes([byte]))
                        self.wfile.flush()
                        time.sleep(answer.trickle)
                except OSError:
                    self.close_connection = True

            do_GET = do_POST = answer

        self.http = LocalHttpServer(Handler, tls)
        self.url = self.http.url

    def stop(self) -> None:
        self.http.stop()


def settings(url: str, timeout: float = 5, parallel: int = 2, ca_bundle: Path | None = None) -> BrokerConfig:
    return BrokerConfig(url, Secret(KEY), "rki", ca_bundle, timeout, parallel, max_download_mib=2)


def status_list(node: int) -> bytes:
    return (
        b'<ns2:request-status-list xmlns:ns2="http://aktin.org/ns/exchange"><ns2:request-status-info>'
        b"<ns2:node>%d</ns2:node><ns2:completed>2026-01-01T00:00:00Z</ns2:completed>"
        b"</ns2:request-status-info></ns2:request-status-list>" % node
    )


LISTING = b'<request-list xmlns="http://aktin.org/ns/exchange"><request id="1"/><request id="2"/></request-list>'


@pytest.fixture
def canned() -> Iterator[CannedBroker]:
    server = CannedBroker()
    yield server
    server.stop()


def test_status_calls_share_keep_alive_connections_and_carry_the_key(canned: CannedBroker) -> None:
    ids = list(range(40))
    for i in ids:
        canned.answers[f"/broker/request/{i}/status"] = [Answer(body=status_list(i % 7))]
    with Broker(settings(canned.url, parallel=2)) as broker:
        statuses = broker.all_node_statuses(ids)
    assert {i: [s.node for s in nodes] for i, nodes in statuses.items() if isinstance(nodes, list)} == {i: [i % 7] for i in ids}
    assert {seen.authorization for seen in canned.seen} == {f"Bearer {KEY}"}
    assert len({seen.client_port for seen in canned.seen}) <= 2


def test_a_kept_alive_connection_the_server_closed_is_reopened(canned: CannedBroker) -> None:
    canned.answers["/broker/request/5/status"] = [Answer(body=status_list(3), hang_up=True)]
    with Broker(settings(canned.url)) as broker:
        for _ in range(4):
            assert [s.node for s in broker.node_statuses(5)] == [3]
    assert len(canned.seen) == 4
    assert len({seen.client_port for seen in canned.seen}) == 4


def test_a_passing_503_is_retried(canned: CannedBroker) -> None:
    canned.answers["/broker/request/filtered"] = [Answer(503), Answer(body=LISTING)]
    with Broker(settings(canned.url)) as broker:
        assert broker.tagged_request_ids("rki") == [1, 2]
    assert len(canned.seen) == 2


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (Answer(500), UnavailableError, "answered the listing of tagged requests with HTTP 500"),
        (Answer(401), ConfigError, r"refused the API key \(HTTP 401\)"),
        (
            Answer(302, headers=(("Location", "https://elsewhere.example/broker/"),)),
            ConfigError, r"redirect \(HTTP 302\) to 'https://elsewhere.example/broker/'; set \[broker\] url",
        ),
        (Answer(200, LISTING, cut=20), UnavailableError, "the listing of tagged requests failed"),
        (
            Answer(200, LISTING, delay=1.5), UnavailableError,
            "did not answer the listing of tagged requests within \\[broker\\] timeout = 0.5 s",
        ),
    ],
    ids=["500", "401", "redirect", "truncated", "slow"],
)
def test_a_failed_listing_says_why(
    canned: CannedBroker, answer: Answer, error: type[Exception], message: str
) -> None:
    canned.answers["/broker/request/filtered"] = [answer]
    with Broker(settings(canned.url, timeout=0.5)) as broker, pytest.raises(error, match=message):
        broker.tagged_request_ids("rki")
    assert all(seen.path == "/broker/request/filtered" for seen in canned.seen)


def test_a_failing_status_call_fails_only_that_request(canned: CannedBroker) -> None:
    canned.answers["/broker/request/7/status"] = [Answer(500)]
    canned.answers["/broker/request/8/status"] = [Answer(body=status_list(2))]
    with Broker(settings(canned.url)) as broker:
        statuses = broker.all_node_statuses([7, 8])
    assert isinstance(statuses[7], RequestFailed)
    assert "status of request 7 with HTTP 500" in str(statuses[7])
    assert statuses[8] == [NodeStatus(2, (("completed", "2026-01-01T00:00:00Z"),))]


def test_an_answer_beyond_the_size_limit_is_refused(canned: CannedBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module, "MAX_ANSWER", 1 << 20)
    canned.answers["/broker/request/filtered"] = [Answer(body=LISTING + b" " * (2 << 20))]
    with Broker(settings(canned.url)) as broker, pytest.raises(SyncError, match="an answer longer than 1 MiB; refused"):
        broker.tagged_request_ids("rki")


@pytest.mark.parametrize("timeout", [5, 1])
def test_nobody_listening_is_unreachable(timeout: float) -> None:
    """Also when the retries' back-off (3 s) outlasts the timeout: nothing was waited for."""
    url = f"http://127.0.0.1:{free_port()}"
    with Broker(settings(url, timeout=timeout)) as broker, pytest.raises(
        UnavailableError, match=f"broker at {url} is unreachable"
    ):
        broker.tagged_request_ids("rki")


def test_a_get_cut_by_the_watchdog_and_answered_when_sent_again_succeeds(canned: CannedBroker) -> None:
    canned.answers["/broker/request/filtered"] = [Answer(body=LISTING, delay=3), Answer(body=LISTING)]
    started = time.monotonic()
    with Broker(settings(canned.url, timeout=1)) as broker:
        assert broker.tagged_request_ids("rki") == [1, 2]
    assert len(canned.seen) == 2
    assert time.monotonic() - started < 3


def bundle(size: int) -> bytes:
    """A zip with one stored entry of about `size` bytes, as the broker's bundles are zips."""
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("0_result", bytes(range(256)) * (size // 256))
    return data.getvalue()


@pytest.mark.parametrize(
    ("download", "message"),
    [
        (Answer(body=bundle(1 << 20), cut=300_000), "the download of request 3 broke off"),
        (Answer(body=bundle(3 << 20)), r"is 3 MiB, more than \[broker\] max_download_mib"),
        (Answer(404), "the download of request 3 with HTTP 404"),
    ],
    ids=["cut", "too-large", "expired"],
)
def test_a_failed_download_leaves_a_clear_reason(
    canned: CannedBroker, tmp_path: Path, download: Answer, message: str
) -> None:
    canned.answers["/broker/export/request-bundle/3"] = [Answer(body=b"0b6c-uuid\n")]
    canned.answers["/broker/download/0b6c-uuid"] = [download]
    with Broker(settings(canned.url)) as broker, pytest.raises(RequestFailed, match=message):
        broker.export(3, tmp_path / "export_3.zip", threading.Event())


def test_a_bundle_larger_than_a_read_is_downloaded_whole_and_the_pool_keeps_working(
    canned: CannedBroker, tmp_path: Path
) -> None:
    data = bundle(3 << 19)
    canned.answers["/broker/export/request-bundle/3"] = [Answer(body=b"0b6c-uuid")]
    canned.answers["/broker/download/0b6c-uuid"] = [Answer(body=data, headers=(("Content-Type", "application/zip"),))]
    canned.answers["/broker/request/3/status"] = [Answer(body=status_list(1))]
    target = tmp_path / "export_3.zip"
    with Broker(settings(canned.url)) as broker:
        assert broker.export(3, target, threading.Event()) == len(data)
        assert [s.node for s in broker.node_statuses(3)] == [1]
    assert target.read_bytes() == data
    assert [seen.method for seen in canned.seen] == ["POST", "GET", "GET"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


def test_tls_is_verified_against_the_configured_ca_only(certificate: tuple[Path, Path]) -> None:
    server = CannedBroker(tls=certificate)
    try:
        server.answers["/broker/request/filtered"] = [Answer(body=LISTING)]
        with Broker(settings(server.url)) as broker, pytest.raises(
            UnavailableError, match=r"TLS to the broker at https://127.0.0.1:\d+ failed .*check \[broker\] ca_bundle"
        ):
            broker.tagged_request_ids("rki")
        assert server.seen == []
        with Broker(settings(server.url, ca_bundle=certificate[0])) as broker:
            assert broker.tagged_request_ids("rki") == [1, 2]
    finally:
        server.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_an_answer_trickling_below_64_kib_per_timeout_is_cut(
    tls: bool, chunked: bool, certificate: tuple[Path, Path]
) -> None:
    server = CannedBroker(tls=certificate if tls else None)
    try:
        # 12 s of answer if nothing cut it.
        server.answers["/broker/request/filtered"] = [Answer(body=LISTING + b" " * 140, trickle=0.05, chunked=chunked)]
        started = time.monotonic()
        with Broker(settings(server.url, timeout=1, ca_bundle=certificate[0] if tls else None)) as broker, pytest.raises(
            UnavailableError, match=r"within \[broker\] timeout = 1 s"
        ):
            broker.tagged_request_ids("rki")
        assert time.monotonic() - started < 3
    finally:
        server.stop()
