"""Reading and validating the TOML configuration, ours or the upstream uploader's.

Everything is checked here, before any network call, and every error names the file, the key and
what is wrong. Secret values are wrapped in `Secret` so that they never end up in a message.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aktin_sftp.crypto import InvalidKeyError, load_key
from aktin_sftp.errors import ConfigError

try:
    import tomllib  # type: ignore[import-not-found, unused-ignore]
except ModuleNotFoundError:  # Python 3.10 (Ubuntu 22.04): python3-tomli
    import tomli as tomllib  # type: ignore[no-redef, unused-ignore]

DEFAULT_PATH = Path("/etc/aktin/sftp.toml")
DEFAULT_STATE_DIR = Path("/var/lib/aktin/sftp")
# /etc/aktin/sftp-NAME.toml belongs to the unit instance aktin-broker-sftp@NAME.
INSTANCE_CONFIG = re.compile(r"sftp-([A-Za-z0-9_.-]+)\.toml")


def default_state_dir(config_path: Path) -> Path:
    """One state per recipient: an instance's config (sftp-NAME.toml) keeps its state in
    /var/lib/aktin/sftp-NAME, where its unit lets it write; any other config in /var/lib/aktin/sftp."""
    instance = INSTANCE_CONFIG.fullmatch(config_path.name)
    return DEFAULT_STATE_DIR.with_name(f"sftp-{instance[1]}") if instance else DEFAULT_STATE_DIR
DEFAULT_MAX_DELETE = 5
# Upstream had no known_hosts setting; the system-wide file is where an operator would look first.
UPSTREAM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
# Conservative on purpose: anything beyond these characters could change the meaning of the
# XPath predicate the broker evaluates, so such a tag is refused instead of quoted.
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


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
class Config:
    path: Path
    broker: BrokerConfig
    sftp: SftpConfig
    key_file: Path
    state_dir: Path
    max_delete: int


def load(path: Path) -> Config:
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (give another one with --config)") from None
    except PermissionError:
        raise ConfigError(f"{path}: config file is not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if any(name.isupper() or name == "REQUESTS_CA_BUNDLE" for name in raw):
        return _Reader(path, _from_upstream(path, raw), upstream=True).config()
    return _Reader(path, raw, upstream=False).config()


# The upstream uploader's flattened keys and where they live in our layout.
UPSTREAM_KEYS: dict[str, tuple[str, str]] = {
    "BROKER.URL": ("broker", "url"),
    "BROKER.API_KEY": ("broker", "api_key"),
    "REQUESTS.TAG": ("broker", "tag"),
    "REQUESTS_CA_BUNDLE": ("broker", "ca_bundle"),
    "SFTP.HOST": ("sftp", "host"),
    "SFTP.PORT": ("sftp", "port"),
    "SFTP.USERNAME": ("sftp", "username"),
    "SFTP.PASSWORD": ("sftp", "password"),
    "SFTP.TIMEOUT": ("sftp", "timeout"),
    "SFTP.FOLDERNAME": ("sftp", "folder"),
    "SFTP.KNOWN_HOSTS": ("sftp", "known_hosts"),
    "SECURITY.PATH_ENCRYPTION_KEY": ("encryption", "key_file"),
    "MISC.WORKING_DIR": ("state", "directory"),
}
_OURS_TO_UPSTREAM = {ours: flat for flat, ours in UPSTREAM_KEYS.items()}
# Upstream reads these with a fallback, so that an empty value there means "not set".
UPSTREAM_OPTIONAL = {"REQUESTS_CA_BUNDLE", "SFTP.PORT", "SFTP.TIMEOUT", "SFTP.KNOWN_HOSTS", "MISC.WORKING_DIR"}


def _from_upstream(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{key}": inner for key, inner in value.items()})
        else:
            flat[name] = value
    converted: dict[str, Any] = {}
    for name, value in flat.items():
        if name not in UPSTREAM_KEYS:
            raise ConfigError(f"{path}: {name}: unknown key in an upstream-style config")
        if name in UPSTREAM_OPTIONAL and isinstance(value, str) and not value.strip():
            continue
        section, key = UPSTREAM_KEYS[name]
        if key in ("timeout", "port") and isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        converted.setdefault(section, {})[key] = value
    converted.setdefault("sftp", {}).setdefault("known_hosts", str(UPSTREAM_KNOWN_HOSTS))
    return converted


SCHEMA: dict[str, set[str]] = {
    "broker": {"url", "api_key", "api_key_file", "tag", "ca_bundle", "timeout", "parallel", "max_download_mib"},
    "sftp": {
        "host", "port", "username", "password", "password_file", "private_key_file",
        "known_hosts", "folder", "timeout", "parallel",
    },
    "encryption": {"key_file"},
    "state": {"directory", "max_delete"},
}


class _Reader:
    """Pulls typed values out of the parsed TOML, naming the offending key on every error."""

    def __init__(self, path: Path, raw: dict[str, Any], upstream: bool) -> None:
        self.file = path
        self.raw = raw
        self.upstream = upstream
        for section, body in raw.items():
            if section not in SCHEMA:
                self.fail(section, None, f"unknown section (known: {', '.join(SCHEMA)})")
            if not isinstance(body, dict):
                self.fail(section, None, "must be a table")
            for key in body:
                if key not in SCHEMA[section]:
                    self.fail(section, key, f"unknown key (known: {', '.join(sorted(SCHEMA[section]))})")

    def name(self, section: str, key: str | None) -> str:
        if key is None:
            return f"[{section}]"
        if self.upstream:
            return _OURS_TO_UPSTREAM.get((section, key), f"{section}.{key}")
        return f"[{section}] {key}"

    def fail(self, section: str, key: str | None, problem: str) -> None:
        raise ConfigError(f"{self.file}: {self.name(section, key)}: {problem}")

    def value(self, section: str, key: str) -> Any:
        return self.raw.get(section, {}).get(key)

    def string(self, section: str, key: str, default: str | None = None) -> str:
        value = self.value(section, key)
        if value is None:
            if default is not None:
                return default
            self.fail(section, key, "missing")
        if not isinstance(value, str) or not value.strip():
            self.fail(section, key, "must be a non-empty string")
        return str(value).strip()

    def number(self, section: str, key: str, default: float, low: float, high: float) -> float:
        value = self.value(section, key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(section, key, "must be a number")
        if not low <= value <= high:
            self.fail(section, key, f"must be between {low:g} and {high:g}, not {value}")
        return float(value)

    def path(
        self, section: str, key: str, default: Path | None = None, check: Callable[[Path], str | None] | None = None
    ) -> Path:
        text = self.value(section, key)
        if text is None and default is not None:
            path = default
        else:
            path = Path(self.string(section, key))
            if not path.is_absolute():
                path = self.file.parent / path
        if check is not None:
            problem = check(path)
            if problem:
                self.fail(section, key, f"{path}: {problem}")
        return path

    def optional_path(self, section: str, key: str, check: Callable[[Path], str | None]) -> Path | None:
        if self.value(section, key) is None:
            return None
        return self.path(section, key, check=check)

    def secret(self, section: str, inline_key: str, file_key: str, required: bool) -> Secret | None:
        inline, from_file = self.value(section, inline_key), self.value(section, file_key)
        if inline is not None and from_file is not None:
            self.fail(section, inline_key, f"give either {inline_key} or {file_key}, not both")
        if from_file is not None:
            path = self.path(section, file_key, check=_private_file)
            # Latin-1 reads any bytes, so that the check below can refuse what is not ASCII.
            text = path.read_bytes().decode("latin-1").strip()
            self.usable_secret(section, file_key, text, f"{path}: ")
            return Secret(text)
        if inline is None:
            if required:
                self.fail(section, inline_key, f"missing (give {inline_key} or {file_key})")
            return None
        if not isinstance(inline, str):
            self.fail(section, inline_key, "must be a non-empty string")
        # A TOML multi-line string ends in a newline that is no part of the secret.
        text = inline.strip()
        self.usable_secret(section, inline_key, text, "")
        problem = _private_file(self.file)
        if problem:
            self.fail(section, inline_key, f"is stored inline, but {self.file} {problem}")
        return Secret(text)

    def usable_secret(self, section: str, key: str, text: str, where: str) -> None:
        """Keys and passwords travel in HTTP headers and SSH packets, where control and
        non-ASCII characters fail late, with the value in the traceback; the value is never shown."""
        if not text:
            self.fail(section, key, f"{where}is empty")
        if not re.fullmatch(r"[\x20-\x7e]+", text):
            self.fail(section, key, f"{where}contains control or non-ASCII characters (not shown here)")

    def config(self) -> Config:
        return Config(
            path=self.file,
            broker=self.broker(),
            sftp=self.sftp(),
            key_file=self.path("encryption", "key_file", check=_fernet_key_file),
            state_dir=self.path("state", "directory", default=default_state_dir(self.file)),
            max_delete=int(self.number("state", "max_delete", DEFAULT_MAX_DELETE, 0, 1_000_000)),
        )

    def broker(self) -> BrokerConfig:
        url = self.string("broker", "url")
        if "@" in urlsplit(url).netloc:
            # Never sent and easily echoed: the API key is the broker's only credential.
            self.fail("broker", "url", "must not contain a user name or password (the url is not shown here); "
                      "the broker takes the API key only")
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            self.fail("broker", "url", f"{url!r} is not an http:// or https:// URL")
        parts = urlsplit(url)
        try:
            usable = bool(parts.hostname) and parts.port != 0
        except ValueError:  # a port that is no number or out of range
            usable = False
        if not usable:
            self.fail("broker", "url", f"{url!r} needs a host name and, if a port is given, one from 1 to 65535")
        # Both the server root and its /broker/ endpoint are common ways to write the address.
        url = re.sub(r"/broker/?$", "", url.rstrip("/"))
        tag = self.string("broker", "tag")
        if not TAG_PATTERN.fullmatch(tag):
            self.fail(
                "broker", "tag",
                f"{tag!r} is not allowed: use 1 to 64 letters, digits, '_', '.' or '-' "
                "(quotes and XPath syntax cannot be passed to the broker safely)",
            )
        api_key = self.secret("broker", "api_key", "api_key_file", required=True)
        assert api_key is not None
        return BrokerConfig(
            url=url,
            api_key=api_key,
            tag=tag,
            ca_bundle=self.optional_path("broker", "ca_bundle", _certificates_file),
            timeout=self.number("broker", "timeout", 60, 1, 3600),
            # A few status calls at a time keep a run over hundreds of requests short without
            # loading the broker, which also serves the hospitals.
            parallel=int(self.number("broker", "parallel", 4, 1, 32)),
            # A bound on what one download may write into the state directory.
            max_download_mib=int(self.number("broker", "max_download_mib", 16384, 1, 1 << 30)),
        )

    def sftp(self) -> SftpConfig:
        host = self.string("sftp", "host")
        if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", host):
            self.fail("sftp", "host", f"{host!r} is not a host name or address")
        password = self.secret("sftp", "password", "password_file", required=False)
        key_file = self.optional_path("sftp", "private_key_file", _private_file)
        if password is None and key_file is None:
            self.fail("sftp", "password", "missing (give password, password_file or private_key_file)")
        folder = self.string("sftp", "folder")
        if "\\" in folder or any(part == ".." for part in folder.split("/")):
            self.fail("sftp", "folder", f"{folder!r} must be a plain path without '..'")
        return SftpConfig(
            host=host,
            port=int(self.number("sftp", "port", 22, 1, 65535)),
            username=self.string("sftp", "username"),
            password=password,
            private_key_file=key_file,
            known_hosts=self.path("sftp", "known_hosts", check=_readable_file),
            folder=folder.rstrip("/") or "/",
            timeout=self.number("sftp", "timeout", 30, 1, 3600),
            # Deliveries at once, each on an SFTP channel of its own: over a WAN a file waits
            # three round trips, which the others fill. 16 keep a 100 Mbit/s link with 50 ms
            # round trips busy (BENCHMARKS.md); beyond OpenSSH's MaxSessions (10) a second login
            # serves the rest.
            parallel=int(self.number("sftp", "parallel", 16, 1, 32)),
        )


def _readable_file(path: Path) -> str | None:
    if not path.is_file():
        return "no such file"
    if not os.access(path, os.R_OK):
        return "not readable by this user"
    return None


def _certificates_file(path: Path) -> str | None:
    problem = _readable_file(path)
    if problem:
        return problem
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        return f"holds no PEM certificates TLS could use ({exc.reason or exc})"
    return None


def _private_file(path: Path) -> str | None:
    problem = _readable_file(path)
    if problem:
        return problem
    if path.stat().st_mode & stat.S_IROTH:
        return f"is readable by every user: holds a secret, so run 'chmod o-rwx {path}'"
    return None


def _fernet_key_file(path: Path) -> str | None:
    problem = _private_file(path)
    if problem:
        return problem
    try:
        load_key(path)
    except InvalidKeyError as exc:
        return str(exc)
    return None
