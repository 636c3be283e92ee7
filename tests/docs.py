"""The parts of the docs generated from the config declaration (aktin_sftp/options.py).

`make docs` (python -m tests.docs) rewrites them: the example configs debian/sftp.toml and
debian/receive.toml, the keys in the man page's CONFIGURATION and RECEIVE sections and the
README's configuration tables. A unit test
fails when a checked-in copy differs from what the declaration gives.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from aktin_sftp.options import RECEIVE_TOML, SFTP_TOML, Declaration, Kind, Option

ROOT = Path(__file__).resolve().parent.parent
MAN_PAGE = Path("debian/aktin-broker-sftp.1")
README = Path("README.md")


@dataclass(frozen=True)
class ConfigFile:
    name: str
    declaration: Declaration
    sample: Path
    sample_header: str

    def markers(self, part: Path) -> tuple[str, str]:
        """The lines the generated part of the man page and of the README lies between."""
        if part == MAN_PAGE:
            return (f'.\\" Generated from the declaration of {self.name} (aktin_sftp/options.py) by "make docs": '
                    "edit it there.", f'.\\" End of the generated part ({self.name}).')
        return (f"<!-- Generated from the declaration of {self.name} (aktin_sftp/options.py) by `make docs`: "
                "edit it there. -->", f"<!-- End of the generated part ({self.name}). -->")


SFTP = ConfigFile("sftp.toml", SFTP_TOML, Path("debian/sftp.toml"), """\
# /etc/aktin/sftp.toml: configuration of aktin-broker-sftp (see aktin-broker-sftp(1)).
#
# Fill in every key that is not marked optional, put the secrets into the files named below
# (owned root:aktin-sftp, mode 0640), then check with:  aktin-broker-sftp check
# Until then the hourly run fails with exit status 78 (configuration error).
# Relative paths are relative to /etc/aktin/. Unknown keys are errors.
""")
RECEIVE = ConfigFile("receive.toml", RECEIVE_TOML, Path("debian/receive.toml"), """\
# /etc/aktin/receive.toml: configuration of the recipient's side, aktin-broker-sftp receive
# (see aktin-broker-sftp(1), RECEIVE). The package installs this example as
# /usr/share/doc/aktin-broker-sftp/examples/receive.toml; copy it to /etc/aktin/receive.toml.
#
# Uncomment either the [source] section (the sender's folder is on this machine) or the [sftp]
# section, name the key file(s), then check with:  aktin-broker-sftp receive --dry-run
# Relative paths are relative to the config file's folder. Unknown keys are errors.
""")
CONFIG_FILES = (SFTP, RECEIVE)


def facts(declaration: Declaration, option: Option) -> str:
    """Whether a key must be given, its type, default and range, in a few words."""
    choices = declaration.alternatives_of(option)
    said = [f"one of {_listed(c.keys, 'or')} is required" for c in choices if c.required]
    said += [f"not together with {_listed([k for k in c.keys if k != option.key], 'or')}" for c in choices if c.exclusive]
    if option.required and option.section in declaration.optional_sections:
        said.insert(0, f"required in [{option.section}]")
    elif option.required:
        said.insert(0, "required")
    elif not said:
        said.append("optional")
    kind = {Kind.FILE: "secret file", Kind.FILES: "list of secret files"}.get(option.kind) if option.secret else None
    said.append(kind or option.kind.value)
    if option.default is not None:
        said.append(f"default {_number(option.default)}")
    if option.low is not None and option.high is not None:
        said.append(f"{_number(option.low)} to {_number(option.high)}")
    return ", ".join(said)


def _number(value: bool | float | str) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) and value != int(value) else str(value)


def _listed(words: Sequence[str], conjunction: str) -> str:
    *first, last = words
    return f"{', '.join(first)} {conjunction} {last}" if first else last


def upstream_name(option: Option) -> str:
    if not option.upstream:
        return ""
    section, _, key = option.upstream.rpartition(".")
    return f"[{section}] {key}" if section else key


def sample(config: ConfigFile) -> str:
    declaration = config.declaration
    lines = [config.sample_header.rstrip("\n")]
    for section, about in declaration.sections.items():
        # A section that may be left out is commented out as a whole: an empty one counts as given.
        comment = "#" if section in declaration.optional_sections else ""
        lines += ["", f"# {about}", f"{comment}[{section}]"]
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


def between_markers(text: str, begin: str, end: str, generated: str) -> str:
    head, found, rest = text.partition(begin + "\n")
    _, found_end, tail = rest.partition("\n" + end)
    if not found or not found_end:
        raise ValueError(f"lacks the lines {begin!r} and {end!r} around its generated part")
    return f"{head}{begin}\n{generated}\n{end}{tail}"


def rendered(root: Path, configs: tuple[ConfigFile, ...] = CONFIG_FILES) -> dict[Path, str]:
    """Each generated file as the declarations make it, the rest of it as checked in."""
    files = {config.sample: sample(config) for config in configs}
    for part, render in ((MAN_PAGE, man_section), (README, readme_table)):
        text = (root / part).read_text()
        for config in configs:
            try:
                text = between_markers(text, *config.markers(part), render(config.declaration))
            except ValueError as exc:
                raise ValueError(f"{part} {exc}") from None
        files[part] = text
    return files


def with_declaration(config: ConfigFile, declaration: Declaration) -> tuple[ConfigFile, ...]:
    """The config files, with one of them declared differently."""
    return tuple(replace(c, declaration=declaration) if c == config else c for c in CONFIG_FILES)


def stale(root: Path, configs: tuple[ConfigFile, ...] = CONFIG_FILES) -> list[Path]:
    """The generated files whose checked-in copy is not what the declarations give."""
    return [part for part, text in rendered(root, configs).items() if _checked_in(root / part) != text]


def _checked_in(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def main() -> int:
    for part, text in rendered(ROOT).items():
        if _checked_in(ROOT / part) != text:
            (ROOT / part).write_text(text)
            print(f"rewrote {part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
