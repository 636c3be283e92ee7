"""The booted-Debian tests take their mirror from the host's apt sources, so that a machine
behind a local mirror works too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers import container


def test_both_source_formats_are_read(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# a comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.local/debian bookworm main\n"
        "deb-src http://mirror.local/debian bookworm main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://other.local/debian\nSuites: trixie trixie-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://off.local/debian\nSuites: bookworm\nEnabled: no\n"
    )
    assert container.apt_sources(tmp_path) == [
        ("http://mirror.local/debian", ["bookworm"]),
        ("http://other.local/debian", ["trixie", "trixie-updates"]),
    ]


def test_the_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(container.MIRROR_VARIABLE, "http://mirror.example/debian")
    assert container.debian_mirror() == "http://mirror.example/debian"
