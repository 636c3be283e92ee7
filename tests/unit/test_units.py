"""The shipped systemd units say only what systemd acts on."""

from __future__ import annotations

import configparser
from pathlib import Path

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
