"""The version floors and pins that live in several files agree: the library floor (the floor
run's constraints, setup.cfg, requirements.txt, debian/control), the Toxiproxy the Makefile builds,
and the broker releases the Makefile, the tests and the recording know."""

from __future__ import annotations

import configparser
import re

import pytest

from tests.broker_double import conversation
from tests.conftest import ROOT
from tests.peers import broker, toxiproxy

# The booted Debian tests run the unit tests from a copy of tests/ alone.
pytestmark = pytest.mark.skipif(not (ROOT / "setup.cfg").exists(), reason="no source tree around tests/")


def floors() -> dict[str, str]:
    """setup.cfg's runtime requirements: name -> the lowest version allowed."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    found = {}
    for line in config["options"]["install_requires"].strip().splitlines():
        match = re.fullmatch(r"([a-z0-9-]+)>=([0-9.]+)(;.*)?", line.strip())
        assert match, line
        found[match[1]] = match[2]
    return found


def make_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*\??=\s*(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, name
    return match[1].strip()


def test_the_floor_run_installs_the_floors_that_setup_cfg_requirements_and_the_package_state() -> None:
    pins = dict(re.findall(r"^([a-z0-9-]+)==([0-9.]+)", (ROOT / "constraints-floor.txt").read_text(), re.MULTILINE))
    requirements = dict(re.findall(r"^([a-z0-9-]+)>=([0-9.]+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE))
    # Debian names websocket-client after the module it installs.
    packages = {"websocket": "websocket-client"}
    depends = {
        packages.get(name, name): version
        for name, version in re.findall(r"python3-([a-z0-9]+) \(>= ([0-9.]+)\)", (ROOT / "debian" / "control").read_text())
    }
    wanted = floors()
    assert set(wanted) == {"paramiko", "cryptography", "defusedxml", "requests", "urllib3", "tomli", "websocket-client"}
    assert {name: pins[name] for name in wanted} == wanted
    assert requirements == wanted
    assert depends == wanted


def test_the_makefile_builds_the_toxiproxy_the_tests_start() -> None:
    assert make_variable("TOXIPROXY_VERSION") == toxiproxy.VERSION


def test_the_broker_releases_are_those_the_recording_was_checked_against() -> None:
    assert tuple(make_variable("BROKER_VERSIONS").split()) == broker.RELEASES
    checked = conversation.brokers()
    assert set(checked) == set(broker.RELEASES)
    assert checked[broker.DOUBLE_VERSION] == conversation.RECORDED
