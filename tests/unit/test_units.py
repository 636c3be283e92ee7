"""The shipped systemd units say only what systemd acts on."""

from __future__ import annotations

import configparser
from pathlib import Path

from aktin_sftp.config import default_state_dir
from aktin_sftp.watch import DEFAULT_TRIGGER

UNITS = Path(__file__).resolve().parent.parent.parent / "systemd"


def test_restart_settings_come_with_a_restart_policy() -> None:
    for path in UNITS.glob("*.service"):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read(path)
        service = unit["Service"]
        restart = service.get("Restart", "no")
        for setting in ("RestartPreventExitStatus", "RestartForceExitStatus", "RestartSec"):
            assert setting not in service or restart != "no", f"{path.name}: {setting} without Restart="


def service_lines(name: str) -> set[str]:
    return {line for line in (UNITS / name).read_text().splitlines() if line and not line.startswith("#")}


def test_an_instance_is_hardened_exactly_like_the_plain_service() -> None:
    plain, instance = service_lines("aktin-broker-sftp.service"), service_lines("aktin-broker-sftp@.service")
    # The listener (watch) and its trigger belong to the plain service alone.
    assert plain - instance == {
        "Description=Deliver tagged AKTIN Broker results to the recipient's SFTP folder",
        "ExecStartPre=/bin/rm -f /run/aktin-broker-sftp/trigger",
        "ReadWritePaths=-/run/aktin-broker-sftp",
        "ExecStart=/usr/bin/aktin-broker-sftp --config /etc/aktin/sftp.toml run",
        "StateDirectory=aktin/sftp",
        "SyslogIdentifier=aktin-broker-sftp",
    }
    assert all("%i" in line for line in instance - plain)


def test_an_instance_config_keeps_its_state_where_its_unit_lets_it_write() -> None:
    assert default_state_dir(Path("/etc/aktin/sftp-rki.toml")) == Path("/var/lib/aktin/sftp-rki")
    assert default_state_dir(Path("/etc/aktin/sftp.toml")) == Path("/var/lib/aktin/sftp")
    assert default_state_dir(Path("/srv/other.toml")) == Path("/var/lib/aktin/sftp")
    instance = (UNITS / "aktin-broker-sftp@.service").read_text()
    assert "--config /etc/aktin/sftp-%i.toml" in instance and "StateDirectory=aktin/sftp-%i\n" in instance


def test_the_receive_unit_is_hardened_like_the_delivery() -> None:
    plain, receive = service_lines("aktin-broker-sftp.service"), service_lines("aktin-broker-sftp-receive.service")
    assert {line.split("=")[0] for line in plain ^ receive} == {
        "Description", "ExecStart", "StateDirectory", "SyslogIdentifier", "ProtectHome", "ExecStartPre", "ReadWritePaths",
        "Environment",
    }
    assert "ProtectHome=read-only" in receive
    assert "ExecStart=/usr/bin/aktin-broker-sftp --config /etc/aktin/receive.toml receive" in receive


def test_the_listener_is_hardened_like_the_delivery_and_asks_through_the_path_unit() -> None:
    plain, listener = service_lines("aktin-broker-sftp.service"), service_lines("aktin-broker-sftp-watch.service")
    hardening = {line for line in plain if line.split("=")[0] not in {
        "Description", "Type", "ExecStartPre", "ExecStart", "StateDirectory", "StateDirectoryMode", "TimeoutStartSec",
        "SuccessExitStatus", "SyslogIdentifier", "ReadWritePaths", "Wants", "After", "Documentation",
    } and not line.startswith("[")}
    assert hardening <= listener
    trigger = str(DEFAULT_TRIGGER)
    assert f"--trigger {trigger}" in (UNITS / "aktin-broker-sftp-watch.service").read_text()
    assert f"PathExists={trigger}" in service_lines("aktin-broker-sftp.path")
    assert f"ExecStartPre=/bin/rm -f {trigger}" in plain
    assert "RuntimeDirectory=aktin-broker-sftp" in listener and "Type=notify" in listener
