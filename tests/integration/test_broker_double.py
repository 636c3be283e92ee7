"""The broker double answers the fixed conversation exactly as the real AKTIN Broker did when it
was recorded (tests/broker_double/recording.json, from 1.5.2, admin websocket included; README
says how to refresh it), and restarts as the real one does (that test runs against the real one
too, where its jars are present)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket

from tests.broker_double import conversation
from tests.broker_double.server import BrokerDouble
from tests.peers import broker as broker_peer
from tests.peers.broker import ADMIN_KEY, BrokerServer

WAIT = 10


def test_the_double_answers_as_the_recorded_real_broker(tmp_path: Path) -> None:
    double = BrokerDouble(tmp_path, hospitals=False, idle_timeout=conversation.IDLE_SECONDS)
    try:
        answers = conversation.Talker(double.url).run()
    finally:
        double.stop()
    recorded = conversation.load()
    assert [a["step"] for a in answers] == [r["step"] for r in recorded]
    for answer, expected in zip(answers, recorded, strict=True):
        assert answer == expected, f"step {expected['step']!r}"


# The real broker too where its jars are present (not skipped elsewhere: there is nothing to compare).
@pytest.fixture(params=["double", *(["real"] if broker_peer.classpath() else [])])
def own_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerServer]:
    """A broker of this test's own, as it restarts it."""
    server: BrokerServer
    lib = broker_peer.classpath()
    if request.param == "real" and lib is not None:
        server = broker_peer.RealBroker(lib, tmp_path, idle_timeout=60)
    else:
        server = BrokerDouble(tmp_path, idle_timeout=60)
    try:
        yield server
    finally:
        server.stop()


def admin_websocket(server: BrokerServer) -> websocket.WebSocket:
    session = websocket.create_connection(server.websocket_url, header=[f"Authorization: Bearer {ADMIN_KEY}"], timeout=WAIT)
    assert session.recv() == "welcome Admin"
    return session


def submitted(request_id: int, node: int) -> list[str]:
    """The events of Hospital.submit."""
    return [f"status {request_id} {node} retrieved", f"status {request_id} {node} processing",
            f"result {request_id} {node} text/plain", f"status {request_id} {node} completed"]


def test_a_restart_closes_the_websockets_refuses_connections_while_down_and_keeps_the_requests(
    own_broker: BrokerServer,
) -> None:
    server = own_broker
    request_id = server.create_request(["rki"])
    session = admin_websocket(server)
    server.nodes[conversation.FIRST].submit(request_id, b"42 cases\n")
    assert [session.recv() for _ in range(4)] == submitted(request_id, 0)

    restart = threading.Thread(target=server.restart, args=(2.0,))
    restart.start()
    try:
        # Jetty closes its sessions when it stops, with a close frame without a code.
        assert conversation.Talker(server.url).frames(session, seconds=30) == ["<close>"]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=WAIT).close()
    finally:
        restart.join(120)
    assert not restart.is_alive()

    session = admin_websocket(server)
    try:
        assert server.admin.get(f"{server.url}/broker/request/{request_id}").status_code == 200
        assert "completed" in server.admin.get(f"{server.url}/broker/request/{request_id}/status").text
        server.nodes[conversation.SECOND].submit(request_id, b"17 cases\n")
        assert [session.recv() for _ in range(4)] == submitted(request_id, 1)
        assert server.create_request(["rki"]) == request_id + 1
        assert session.recv() == f"created {request_id + 1}"
    finally:
        session.close()
