"""Reading and validating the TOML configuration, ours or the upstream uploader's.

Everything is checked here, before any network call, against the declaration in `options`, and
every error names the file, the key and what is wrong. Secret values are wrapped in `Secret` so
that they never end up in a message.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aktin_sftp import options
from aktin_sftp.crypto import InvalidKeyError, load_key
from aktin_sftp.errors import ConfigError
from aktin_sftp.options import Declaration, Kind, Option

try:
    import tomllib  # type: ignore[import-not-found, unused-ignore]
except ModuleNotFoundError:  # Python 3.10 (Ubuntu 22.04): python3-tomli
    import tomli as tomllib  # type: ignore[no-redef, unused-ignore]

DEFAULT_PATH = Path("/etc/aktin/sftp.toml")
# /etc/aktin/sftp-NAME.toml belongs to the unit instance aktin-broker-sftp@NAME.
INSTANCE_CONFIG = re.compile(r"sftp-([A-Za-z0-9_.-]+)\.toml")
DEFAULT_STATE_DIR = Path(str(options.SFTP_TOML.option("state", "directory").default))
DEFAULT_MAX_DELETE = int(options.SFTP_TOML.option("state", "max_delete").default or 0)
# Upstream had no known_hosts setting; the system-wide file is where an operator would look first.
UPSTREAM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
# Conservative on purpose: anything beyond these characters could change the meaning of the
# XPath predicate the broker evaluates, so such a tag is refused instead of quoted.
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def default_state_dir(config_path: Path) -> Path:
    """One state per recipient: an instance's config (sftp-NAME.toml) keeps its state in
    /var/lib/aktin/sftp-NAME, where its unit lets it write; any other config in /var/lib/aktin/sftp."""
    instance = INSTANCE_CONFIG.fullmatch(config_path.name)
    return DEFAULT_STATE_DIR.with_name(f"sftp-{instance[1]}") if instance else DEFAULT_STATE_DIR


class Secret:
    """A string that does not show itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class BrokerConfig:
    url: str
    api_key: Secret
    tag: str
    ca_bundle: Path | None
    timeout: float
    parallel: int
    max_download_mib: int


@dataclass(frozen=True)
class SftpConfig:
    host: str
    port: int
    username: str
    password: Secret | None
    private_key_file: Path | None
    known_hosts: Path
    folder: str
    timeout: float
    parallel: int

    @property
    def destination(self) -> str:
        """Where files land, as recorded in the state: a relative folder depends on the login."""
        return f"{self.username}@{self.host}:{self.port}:{self.folder}"


@dataclass(frozen=True)
class WatchConfig:
    quiet: float
    max_delay: float


@dataclass(frozen=True)
class Config:
    path: Path
    broker: BrokerConfig
    sftp: SftpConfig
    key_file: Path
    state_dir: Path
    max_delete: int
    watch: WatchConfig


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            raw: dict[str, Any] = tomllib.load(handle)
            return raw
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (give another one with --config)") from None
    except PermissionError:
        raise ConfigError(f"{path}: config file is not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load(path: Path) -> Config:
    raw = read_toml(path)
    declaration = options.SFTP_TOML
    if any(name.isupper() or name == "REQUESTS_CA_BUNDLE" for name in raw):
        values = Values(path, _from_upstream(path, raw, declaration), declaration, upstream=True, rules=RULES)
    else:
        values = Values(path, raw, declaration, upstream=False, rules=RULES)
    return _config(values)


def _from_upstream(path: Path, raw: dict[str, Any], declaration: Declaration) -> dict[str, Any]:
    """The upstream uploader's flattened keys (`[SFTP] HOST`), placed where they live in ours."""
    ours = {o.upstream: o for o in declaration.options if o.upstream}
    flat: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{key}": inner for key, inner in value.items()})
        else:
            flat[name] = value
    converted: dict[str, Any] = {}
    for name, value in flat.items():
        if name not in ours:
            raise ConfigError(f"{path}: {name}: unknown key in an upstream-style config")
        option = ours[name]
        # Upstream reads its optional keys with a fallback, so that an empty value there means "not set".
        optional = not option.required or option.key == "known_hosts"
        if optional and not declaration.alternatives_of(option) and isinstance(value, str) and not value.strip():
            continue
        if option.kind in (Kind.NUMBER, Kind.INTEGER) and isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        converted.setdefault(option.section, {})[option.key] = value
    converted.setdefault("sftp", {}).setdefault("known_hosts", str(UPSTREAM_KNOWN_HOSTS))
    return converted


class Invalid(Exception):
    """What is wrong with one value; `Values` adds the file and the key."""


class Values:
    """The parsed TOML validated against a declaration: known sections and keys, types, ranges,
    alternatives, files that exist and, where they hold secrets, are not readable by every user.
    `get` gives a key's typed value or its default."""

    def __init__(
        self, path: Path, raw: dict[str, Any], declaration: Declaration, upstream: bool,
        rules: dict[tuple[str, str], Callable[[Any], Any]] | None = None,
    ) -> None:
        self.file = path
        self.declaration = declaration
        self.upstream = upstream
        self.values: dict[tuple[str, str], Any] = {}
        self.given: set[tuple[str, str]] = set()
        for section, body in raw.items():
            if section not in declaration.sections:
                self.fail(section, None, f"unknown section (known: {', '.join(declaration.sections)})")
            if not isinstance(body, dict):
                self.fail(section, None, "must be a table")
            known = sorted(o.key for o in declaration.keys(section))
            for key in body:
                if key not in known:
                    self.fail(section, key, f"unknown key (known: {', '.join(known)})")
        for option in declaration.options:
            given = raw.get(option.section, {}).get(option.key)
            if option.section not in raw and option.section in declaration.optional_sections:
                self.values[option.section, option.key] = None
                continue
            self.alternatives(option, raw.get(option.section, {}))
            if given is None:
                if option.required:
                    self.fail(option.section, option.key, "missing")
                self.values[option.section, option.key] = self.default(option)
                continue
            self.given.add((option.section, option.key))
            try:
                value = self.typed(option, given)
                rule = (rules or {}).get((option.section, option.key))
                self.values[option.section, option.key] = rule(value) if rule else value
            except Invalid as problem:
                self.fail(option.section, option.key, str(problem))

    def get(self, section: str, key: str) -> Any:
        return self.values[section, key]

    def name(self, section: str, key: str | None) -> str:
        if key is None:
            return f"[{section}]"
        if self.upstream:
            upstream = next((o.upstream for o in self.declaration.keys(section) if o.key == key), None)
            return upstream or f"{section}.{key}"
        return f"[{section}] {key}"

    def fail(self, section: str, key: str | None, problem: str) -> None:
        raise ConfigError(f"{self.file}: {self.name(section, key)}: {problem}")

    def alternatives(self, option: Option, body: dict[str, Any]) -> None:
        for choice in self.declaration.alternatives_of(option):
            if option.key != choice.keys[0]:
                continue
            given = [key for key in choice.keys if body.get(key) is not None]
            if choice.exclusive and len(given) > 1:
                self.fail(option.section, given[0], f"give either {' or '.join(given)}, not both")
            if choice.required and not given:
                *others, last = choice.keys
                self.fail(option.section, option.key, f"missing (give {', '.join(others)} or {last})")

    def default(self, option: Option) -> Any:
        if option.default is None:
            return None
        if option.kind is Kind.DIRECTORY:
            return Path(str(option.default))
        return self.typed(option, option.default)

    def typed(self, option: Option, value: Any) -> Any:
        if option.kind is Kind.BOOLEAN:
            if not isinstance(value, bool):
                raise Invalid("must be true or false")
            return value
        if option.kind is Kind.FILES:
            if not isinstance(value, list) or not value:
                raise Invalid("must be a list of file names")
            return [self.typed(replace(option, kind=Kind.FILE), item) for item in value]
        if option.kind in (Kind.NUMBER, Kind.INTEGER):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Invalid("must be a number")
            if option.kind is Kind.INTEGER and value != int(value):
                raise Invalid(f"must be a whole number, not {value}")
            low, high = option.low, option.high
            if low is not None and high is not None and not low <= value <= high:
                raise Invalid(f"must be between {low:g} and {high:g}, not {value}")
            return int(value) if option.kind is Kind.INTEGER else float(value)
        # A TOML multi-line string ends in a newline that is no part of the value.
        text = value.strip() if isinstance(value, str) else ""
        if option.kind is Kind.SECRET and isinstance(value, str):
            _usable_secret(text, "")
            problem = _private_file(self.file)
            if problem:
                raise Invalid(f"is stored inline, but {self.file} {problem}")
            return Secret(text)
        if not text:
            raise Invalid("must be a non-empty string")
        if option.kind in (Kind.FILE, Kind.DIRECTORY):
            path = Path(text)
            path = path if path.is_absolute() else self.file.parent / path
            if option.kind is Kind.FILE:
                problem = (_private_file if option.secret else _readable_file)(path)
                if problem:
                    raise Invalid(f"{path}: {problem}")
            return path
        return text

    def secret(self, section: str, inline: str, in_file: str) -> Secret | None:
        """The secret given inline, or read from the file given instead."""
        path = self.get(section, in_file)
        if path is None:
            inline_value: Secret | None = self.get(section, inline)
            return inline_value
        # Latin-1 reads any bytes, so that the check can refuse what is not ASCII.
        text = path.read_bytes().decode("latin-1").strip()
        try:
            _usable_secret(text, f"{path}: ")
        except Invalid as problem:
            self.fail(section, in_file, str(problem))
        return Secret(text)


def _usable_secret(text: str, where: str) -> None:
    """Keys and passwords travel in HTTP headers and SSH packets, where control and non-ASCII
    characters fail late, with the value in the traceback; the value is never shown."""
    if not text:
        raise Invalid(f"{where}is empty")
    if not re.fullmatch(r"[\x20-\x7e]+", text):
        raise Invalid(f"{where}contains control or non-ASCII characters (not shown here)")


def _config(values: Values) -> Config:
    api_key = values.secret("broker", "api_key", "api_key_file")
    assert api_key is not None, "a required alternative"
    get = values.get
    return Config(
        path=values.file,
        broker=BrokerConfig(
            url=get("broker", "url"), api_key=api_key, tag=get("broker", "tag"), ca_bundle=get("broker", "ca_bundle"),
            timeout=get("broker", "timeout"), parallel=get("broker", "parallel"),
            max_download_mib=get("broker", "max_download_mib"),
        ),
        sftp=_sftp(values, parallel=get("sftp", "parallel")),
        key_file=get("encryption", "key_file"),
        state_dir=get("state", "directory") if ("state", "directory") in values.given else default_state_dir(values.file),
        max_delete=get("state", "max_delete"),
        watch=_watch(values),
    )


def _watch(values: Values) -> WatchConfig:
    quiet, max_delay = values.get("watch", "quiet_seconds"), values.get("watch", "max_delay_seconds")
    if max_delay < quiet:
        values.fail("watch", "max_delay_seconds", f"must be at least quiet_seconds ({quiet:g}), not {max_delay:g}")
    return WatchConfig(quiet, max_delay)


def _sftp(values: Values, parallel: int) -> SftpConfig:
    get = values.get
    return SftpConfig(
        host=get("sftp", "host"), port=get("sftp", "port"), username=get("sftp", "username"),
        password=values.secret("sftp", "password", "password_file"),
        private_key_file=get("sftp", "private_key_file"), known_hosts=get("sftp", "known_hosts"),
        folder=get("sftp", "folder"), timeout=get("sftp", "timeout"), parallel=parallel,
    )


DEFAULT_RECEIVE_PATH = Path("/etc/aktin/receive.toml")


@dataclass(frozen=True)
class ReceiveConfig:
    path: Path
    # Exactly one of the two.
    folder: Path | None
    sftp: SftpConfig | None
    key_files: list[Path]
    inbox: Path
    move_withdrawn: bool
    state_dir: Path
    mismatch_runs: int


def load_receive(path: Path) -> ReceiveConfig:
    rules = {**RULES, ("keys", "files"): lambda paths: [_fernet_key(p) for p in paths], ("source", "folder"): _folder_exists}
    values = Values(path, read_toml(path), options.RECEIVE_TOML, upstream=False, rules=rules)
    folder = values.get("source", "folder")
    if (folder is None) == (values.get("sftp", "host") is None):
        values.fail("source", "folder", "give either [source] folder or an [sftp] section" + (", not both" if folder else ""))
    get = values.get
    return ReceiveConfig(
        path=path, folder=folder, sftp=None if folder else _sftp(values, parallel=1), key_files=get("keys", "files"),
        inbox=get("inbox", "directory"), move_withdrawn=get("inbox", "move_withdrawn"),
        state_dir=get("state", "directory"), mismatch_runs=get("state", "mismatch_runs"),
    )


def _folder_exists(path: Path) -> Path:
    if not path.is_dir():
        raise Invalid(f"{path}: no such folder")
    return path


def _broker_url(url: str) -> str:
    if "@" in urlsplit(url).netloc:
        # Never sent and easily echoed: the API key is the broker's only credential.
        raise Invalid("must not contain a user name or password (the url is not shown here); "
                      "the broker takes the API key only")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        raise Invalid(f"{url!r} is not an http:// or https:// URL")
    parts = urlsplit(url)
    try:
        usable = bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is no number or out of range
        usable = False
    if not usable:
        raise Invalid(f"{url!r} needs a host name and, if a port is given, one from 1 to 65535")
    # Both the server root and its /broker/ endpoint are common ways to write the address.
    return re.sub(r"/broker/?$", "", url.rstrip("/"))


def _tag(tag: str) -> str:
    if not TAG_PATTERN.fullmatch(tag):
        raise Invalid(
            f"{tag!r} is not allowed: use 1 to 64 letters, digits, '_', '.' or '-' "
            "(quotes and XPath syntax cannot be passed to the broker safely)"
        )
    return tag


def _host(host: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", host):
        raise Invalid(f"{host!r} is not a host name or address")
    return host


def _folder(folder: str) -> str:
    if "\\" in folder or any(part == ".." for part in folder.split("/")):
        raise Invalid(f"{folder!r} must be a plain path without '..'")
    return folder.rstrip("/") or "/"


def _certificates(path: Path) -> Path:
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise Invalid(f"{path}: holds no PEM certificates TLS could use ({exc.reason or exc})") from None
    return path


def _fernet_key(path: Path) -> Path:
    try:
        load_key(path)
    except InvalidKeyError as exc:
        raise Invalid(f"{path}: {exc}") from None
    return path


# What a value must be beyond its declared type and range.
RULES: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("broker", "url"): _broker_url,
    ("broker", "tag"): _tag,
    ("broker", "ca_bundle"): _certificates,
    ("sftp", "host"): _host,
    ("sftp", "folder"): _folder,
    ("encryption", "key_file"): _fernet_key,
}


def _readable_file(path: Path) -> str | None:
    if not path.is_file():
        return "no such file"
    if not os.access(path, os.R_OK):
        return "not readable by this user"
    return None


def _private_file(path: Path) -> str | None:
    problem = _readable_file(path)
    if problem:
        return problem
    if path.stat().st_mode & stat.S_IROTH:
        return f"is readable by every user: holds a secret, so run 'chmod o-rwx {path}'"
    return None
