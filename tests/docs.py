"""The parts of the docs generated from the config declaration (aktin_sftp/options.py).

`make docs` (python -m tests.docs) rewrites them: the example config debian/sftp.toml, the
keys in the man page's CONFIGURATION section and the README's configuration table. A unit test
fails when a checked-in copy differs from what the declaration gives.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from aktin_sftp.options import SFTP_TOML, Declaration, Kind, Option

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = Path("debian/sftp.toml")
MAN_PAGE = Path("debian/aktin-broker-sftp.1")
README = Path("README.md")
# The generated part of the man page and of the README lies between these lines.
MARKERS = {
    MAN_PAGE: ('.\\" Generated from aktin_sftp/options.py by "make docs": edit it there.', '.\\" End of the generated part.'),
    README: (
        "<!-- Generated from aktin_sftp/options.py by `make docs`: edit it there. -->", "<!-- End of the generated part. -->"
    ),
}
SAMPLE_HEADER = """\
# /etc/aktin/sftp.toml: configuration of aktin-broker-sftp (see aktin-broker-sftp(1)).
#
# Fill in every key that is not marked optional, put the secrets into the files named below
# (owned root:aktin-sftp, mode 0640), then check with:  aktin-broker-sftp check
# Until then the hourly run fails with exit status 78 (configuration error).
# Relative paths are relative to /etc/aktin/. Unknown keys are errors.
"""


def facts(declaration: Declaration, option: Option) -> str:
    """Whether a key must be given, its type, default and range, in a few words."""
    choices = declaration.alternatives_of(option)
    said = [f"one of {_listed(c.keys, 'or')} is required" for c in choices if c.required]
    said += [f"not together with {_listed([k for k in c.keys if k != option.key], 'or')}" for c in choices if c.exclusive]
    if option.required:
        said.insert(0, "required")
    elif not said:
        said.append("optional")
    said.append(f"secret {option.kind.value}" if option.secret and option.kind is Kind.FILE else option.kind.value)
    if option.default is not None:
        said.append(f"default {_number(option.default)}")
    if option.low is not None and option.high is not None:
        said.append(f"{_number(option.low)} to {_number(option.high)}")
    return ", ".join(said)


def _number(value: float | str) -> str:
    return f"{value:g}" if isinstance(value, float) and value != int(value) else str(value)


def _listed(words: Sequence[str], conjunction: str) -> str:
    *first, last = words
    return f"{', '.join(first)} {conjunction} {last}" if first else last


def upstream_name(option: Option) -> str:
    if not option.upstream:
        return ""
    section, _, key = option.upstream.rpartition(".")
    return f"[{section}] {key}" if section else key


def sample(declaration: Declaration) -> str:
    lines = [SAMPLE_HEADER.rstrip("\n")]
    for section, about in declaration.sections.items():
        lines += ["", f"# {about}", f"[{section}]"]
        for option in declaration.keys(section):
            text = f"{option.description} ({facts(declaration, option)})"
            lines += textwrap.wrap(text, 96, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)
            lines.append(f"#{option.key} = {option.example}")
    return "\n".join(lines) + "\n"


def _roff(text: str) -> str:
    escaped = text.replace("\\", "\\e")
    lines = textwrap.wrap(escaped, 96, break_on_hyphens=False)
    # A line starting with a dot or an apostrophe would be read as a request.
    return "\n".join("\\&" + line if line[:1] in ".'" else line for line in lines)


def man_section(declaration: Declaration) -> str:
    lines = []
    for section, about in declaration.sections.items():
        lines += [f".SS [{section}]", _roff(about)]
        for option in declaration.keys(section):
            upstream = f"; upstream: {upstream_name(option)}" if option.upstream else ""
            lines += [".TP", f".B {option.key}", _roff(f"{option.description} ({facts(declaration, option)}{upstream})")]
    return "\n".join(lines)


def readme_table(declaration: Declaration) -> str:
    lines = ["| Key | Value | Meaning | Upstream name |", "|---|---|---|---|"]
    for option in declaration.options:
        cells = [f"`[{option.section}] {option.key}`", facts(declaration, option), option.description,
                 f"`{upstream_name(option)}`" if option.upstream else ""]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def between_markers(text: str, part: Path, generated: str) -> str:
    begin, end = MARKERS[part]
    head, found, rest = text.partition(begin + "\n")
    _, found_end, tail = rest.partition("\n" + end)
    if not found or not found_end:
        raise ValueError(f"{part} lacks the lines {begin!r} and {end!r} around its generated part")
    return f"{head}{begin}\n{generated}\n{end}{tail}"


def rendered(root: Path, declaration: Declaration = SFTP_TOML) -> dict[Path, str]:
    """Each generated file as the declaration makes it, the rest of it as checked in."""
    return {
        SAMPLE: sample(declaration),
        MAN_PAGE: between_markers((root / MAN_PAGE).read_text(), MAN_PAGE, man_section(declaration)),
        README: between_markers((root / README).read_text(), README, readme_table(declaration)),
    }


def stale(root: Path, declaration: Declaration = SFTP_TOML) -> list[Path]:
    """The generated files whose checked-in copy is not what the declaration gives."""
    return [part for part, text in rendered(root, declaration).items() if (root / part).read_text() != text]


def main() -> int:
    for part, text in rendered(ROOT).items():
        if (ROOT / part).read_text() != text:
            (ROOT / part).write_text(text)
            print(f"rewrote {part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
