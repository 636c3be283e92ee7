"""Config validation: every mistake is named with file, key and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from aktin_sftp import config
from aktin_sftp.errors import ConfigError
from tests.peers.certificate import self_signed


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "fernet.key").write_bytes(Fernet.generate_key())
    (tmp_path / "known_hosts").write_text("[sftp.example.org]:22 ssh-ed25519 AAAA\n")
    (tmp_path / "api.key").write_text("secret-api-key\n")
    for name in ("fernet.key", "api.key"):
        (tmp_path / name).chmod(0o600)
    return tmp_path


def ours(directory: Path, **changes: str) -> str:
    sections = {
        "broker": {"url": '"https://broker.example.org/broker/"', "api_key_file": '"api.key"', "tag": '"rki"'},
        "sftp": {
            "host": '"sftp.example.org"', "username": '"aktin"', "password": '"pw"',
            "known_hosts": f'"{directory}/known_hosts"', "folder": '"upload/aktin"',
        },
        "encryption": {"key_file": '"fernet.key"'},
        "state": {"directory": f'"{directory}/state"'},
    }
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        if value == "DROP":
            sections[section].pop(key)
        else:
            sections[section][key] = value
    return "\n".join(
        f"[{name}]\n" + "\n".join(f"{key} = {value}" for key, value in body.items()) for name, body in sections.items()
    )


def write(directory: Path, text: str, mode: int = 0o600) -> Path:
    path = directory / "sftp.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_full_config_loads_with_defaults(files: Path) -> None:
    loaded = config.load(write(files, ours(files)))
    assert loaded.broker.url == "https://broker.example.org"
    assert loaded.broker.api_key.reveal() == "secret-api-key"
    assert loaded.broker.timeout == 60
    assert loaded.sftp.port == 22
    assert loaded.sftp.password is not None and loaded.sftp.password.reveal() == "pw"
    assert loaded.key_file == files / "fernet.key"
    assert loaded.max_delete == config.DEFAULT_MAX_DELETE


def test_secrets_do_not_show_in_reprs(files: Path) -> None:
    loaded = config.load(write(files, ours(files)))
    assert "secret-api-key" not in repr(loaded) and "'pw'" not in repr(loaded)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"broker__colour": '"blue"'}, r"\[broker\] colour: unknown key"),
        ({"broker__tag": '"rki\' or \'1\'=\'1"'}, r"\[broker\] tag: .* not allowed"),
        ({"broker__tag": '"a]/b"'}, r"\[broker\] tag: .* not allowed"),
        ({"broker__tag": "DROP"}, r"\[broker\] tag: missing"),
        ({"broker__tag": "5"}, r"\[broker\] tag: must be a non-empty string"),
        ({"broker__url": '"ftp://x"'}, r"\[broker\] url: 'ftp://x' is not an http"),
        ({"broker__timeout": '"10"'}, r"\[broker\] timeout: must be a number"),
        ({"broker__timeout": "0"}, r"\[broker\] timeout: must be between 1 and 3600"),
        ({"broker__api_key": '"k"'}, r"\[broker\] api_key: give either api_key or api_key_file"),
        ({"broker__api_key_file": '"nope"'}, r"\[broker\] api_key_file: .*nope: no such file"),
        ({"broker__ca_bundle": '"/nonexistent/ca.pem"'}, r"\[broker\] ca_bundle: /nonexistent/ca.pem: no such file"),
        ({"broker__ca_bundle": '"known_hosts"'}, r"\[broker\] ca_bundle: .*known_hosts: holds no PEM certificates"),
        ({"broker__url": '"https://broker.example.org:99999/"'}, r"\[broker\] url: .*if a port is given, one from 1 to 65535"),
        ({"broker__url": '"http://:8080/broker"'}, r"\[broker\] url: .* needs a host name"),
        ({"sftp__password": "DROP"}, r"\[sftp\] password: missing \(give password, password_file or private_key_file\)"),
        ({"sftp__port": "70000"}, r"\[sftp\] port: must be between 1 and 65535"),
        ({"sftp__known_hosts": "DROP"}, r"\[sftp\] known_hosts: missing"),
        ({"sftp__folder": '"../etc"'}, r"\[sftp\] folder: .* without '\.\.'"),
        ({"encryption__key_file": '"api.key"'}, r"\[encryption\] key_file: .* is not a Fernet key"),
        ({"state__max_delete": "-1"}, r"\[state\] max_delete: must be between 0"),
    ],
)
def test_each_mistake_names_file_key_and_problem(files: Path, changes: dict[str, str], message: str) -> None:
    path = write(files, ours(files, **changes))
    with pytest.raises(ConfigError, match=rf"^{path}: {message}"):
        config.load(path)


def test_unknown_section_and_broken_toml(files: Path) -> None:
    path = write(files, ours(files) + "\n[extra]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"\[extra\]: unknown section"):
        config.load(path)
    path = write(files, "[broker\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(path)
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(files / "missing.toml")


def test_world_readable_secrets_are_refused(files: Path) -> None:
    (files / "api.key").chmod(0o644)
    with pytest.raises(ConfigError, match=r"api_key_file: .* readable by every user.*chmod o-rwx"):
        config.load(write(files, ours(files)))
    (files / "api.key").chmod(0o600)
    with pytest.raises(ConfigError, match=r"\[sftp\] password: is stored inline, but .* readable by every user"):
        config.load(write(files, ours(files), mode=0o644))


def test_secret_values_never_appear_in_errors(files: Path) -> None:
    path = write(files, ours(files, broker__url='"not a url"'), mode=0o600)
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert "secret-api-key" not in str(error.value) and "pw" not in str(error.value).replace("password", "")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"broker__api_key_file": "DROP", "broker__api_key": '"""\nsecret-api-key\n"""'}, None),
        ({"broker__api_key_file": "DROP", "broker__api_key": '"secret\\u0007key"'}, r"\[broker\] api_key: contains control"),
        ({"broker__api_key_file": "DROP", "broker__api_key": '"secret-äpi-key"'}, r"api_key: contains control or non-ASCII"),
        ({"sftp__password": '"pw\\tpw"'}, r"\[sftp\] password: contains control"),
        ({"sftp__password": '"  "'}, r"\[sftp\] password: is empty"),
    ],
    ids=["multi-line", "control", "non-ASCII", "tab", "blank"],
)
def test_inline_secrets_are_stripped_and_must_be_plain_ascii(files: Path, changes: dict[str, str], message: str | None) -> None:
    path = write(files, ours(files, **changes))
    if message is None:
        assert config.load(path).broker.api_key.reveal() == "secret-api-key"
        return
    with pytest.raises(ConfigError, match=message) as error:
        config.load(path)
    shown = str(error.value).replace(str(files), "")
    assert "secret" not in shown and "pw" not in shown.replace("password", "")


@pytest.mark.parametrize("content", [b"secret\xffkey\n", b"secret\x00key", "secret-äpi".encode()])
def test_a_secret_file_with_odd_bytes_is_refused_without_showing_them(files: Path, content: bytes) -> None:
    (files / "api.key").write_bytes(content)
    with pytest.raises(ConfigError, match=r"\[broker\] api_key_file: .*api.key: contains control or non-ASCII") as error:
        config.load(write(files, ours(files)))
    assert "secret" not in str(error.value).replace(str(files), "")


def test_credentials_in_the_broker_url_are_refused_and_not_echoed(files: Path) -> None:
    path = write(files, ours(files, broker__url='"https://admin:hunter2@broker.example.org/broker/"'))
    with pytest.raises(ConfigError, match=r"\[broker\] url: must not contain a user name or password") as error:
        config.load(path)
    assert "hunter2" not in str(error.value)


UPSTREAM = """
[BROKER]
URL = "http://localhost:8080"
API_KEY = "upstream-key"

[REQUESTS]
TAG = "rki"

[SFTP]
HOST = "sftp.example.org"
USERNAME = "aktin"
PASSWORD = "upstream-pw"
TIMEOUT = "25"
FOLDERNAME = "rki"

[SECURITY]
PATH_ENCRYPTION_KEY = "fernet.key"

[MISC]
WORKING_DIR = "/var/lib/aktin/sftp-old"
"""


def test_the_upstream_config_is_accepted(files: Path) -> None:
    with pytest.raises(ConfigError, match=r"SFTP.KNOWN_HOSTS: /etc/ssh/ssh_known_hosts: no such file"):
        config.load(write(files, UPSTREAM))
    text = UPSTREAM.replace("[SFTP]", f'[SFTP]\nKNOWN_HOSTS = "{files}/known_hosts"')
    ca, _ = self_signed(files)
    loaded = config.load(write(files, f'REQUESTS_CA_BUNDLE = "{ca}"\n' + text))
    assert loaded.broker.url == "http://localhost:8080"
    assert loaded.broker.api_key.reveal() == "upstream-key"
    assert loaded.broker.ca_bundle == ca
    assert loaded.sftp.timeout == 25
    assert loaded.sftp.folder == "rki"
    assert loaded.sftp.known_hosts == files / "known_hosts"
    assert loaded.state_dir == Path("/var/lib/aktin/sftp-old")
    assert loaded.key_file == files / "fernet.key"


def test_upstream_mistakes_are_named_in_upstream_terms(files: Path) -> None:
    with pytest.raises(ConfigError, match=r"SFTP.COLOUR: unknown key"):
        config.load(write(files, UPSTREAM.replace("[SFTP]", '[SFTP]\nCOLOUR = "x"')))
    with pytest.raises(ConfigError, match=r"REQUESTS.TAG: 'a b' is not allowed"):
        config.load(write(files, UPSTREAM.replace('TAG = "rki"', 'TAG = "a b"')))


def test_an_empty_optional_upstream_value_means_not_set(files: Path) -> None:
    """Upstream reads these with a fallback; an empty value there is no mistake."""
    text = UPSTREAM.replace("[SFTP]", f'[SFTP]\nKNOWN_HOSTS = "{files}/known_hosts"\nPORT = ""')
    loaded = config.load(write(files, 'REQUESTS_CA_BUNDLE = ""\n' + text.replace('TIMEOUT = "25"', 'TIMEOUT = " "')))
    assert loaded.broker.ca_bundle is None
    assert (loaded.sftp.port, loaded.sftp.timeout) == (22, 30)
    with pytest.raises(ConfigError, match=r"SFTP.HOST: must be a non-empty string"):
        config.load(write(files, text.replace('HOST = "sftp.example.org"', 'HOST = ""')))


def test_without_tomllib_tomli_reads_the_config(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "tomllib", None)
    reloaded = importlib.reload(config)
    try:
        assert reloaded.tomllib.__name__ == "tomli"
        assert reloaded.load(write(files, ours(files))).broker.tag == "rki"
    finally:
        monkeypatch.undo()
        importlib.reload(config)
