"""The upload progress line: on a terminal only, and ending with a newline when complete."""

from __future__ import annotations

import io

from aktin_sftp import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_shown_on_a_terminal_with_size_and_rate() -> None:
    screen = Terminal()
    line = progress.for_terminal("export_1.zip", screen)
    assert line is not None
    line(1 << 20, 4 << 20)
    line(4 << 20, 4 << 20)
    text = screen.getvalue()
    assert text.startswith("\rexport_1.zip: 1.0 of 4.0 MiB, ")
    assert "\rexport_1.zip: 4.0 of 4.0 MiB, " in text and text.endswith("\n")
    assert " MB/s" in text


def test_updates_are_throttled_but_the_last_one_always_shows() -> None:
    screen = Terminal()
    line = progress.for_terminal("f", screen)
    assert line is not None
    for sent in range(1, 101):
        line(sent, 100)
    assert screen.getvalue().count("\r") == 2


def test_nothing_when_not_a_terminal() -> None:
    assert progress.for_terminal("f", io.StringIO()) is None
