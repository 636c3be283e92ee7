"""The example config, the man page and the README describe the keys the declaration declares."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from aktin_sftp import config, options
from tests import docs


def test_the_checked_in_docs_are_what_the_declaration_generates() -> None:
    assert docs.stale(docs.ROOT) == [], "run 'make docs' and commit what it rewrote"


def test_a_hand_edited_copy_is_found_stale(tmp_path: Path) -> None:
    for part in docs.rendered(docs.ROOT):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(docs.ROOT / part, tmp_path / part)
    readme = tmp_path / docs.README
    readme.write_text(readme.read_text().replace("default 60, 1 to 3600", "default 90, 1 to 3600"))
    man = tmp_path / docs.MAN_PAGE
    man.write_text(man.read_text().replace(".B tag\n", ".B tags\n"))
    assert docs.stale(tmp_path) == [docs.MAN_PAGE, docs.README]


def filled_in_example(directory: Path) -> Path:
    """What an operator does with the shipped file: uncomments the keys, one per alternative."""
    (directory / "known_hosts").write_text("[sftp.example.org]:22 ssh-ed25519 AAAA\n")
    secrets = {"api.key": "secret-api-key", "password": "pw", "fernet.key": Fernet.generate_key().decode()}
    for name, value in secrets.items():
        (directory / name).write_text(value)
        (directory / name).chmod(0o600)
    settings = {
        "url": '"https://broker.example.org"', "api_key_file": '"api.key"', "tag": '"rki"', "host": '"sftp.example.org"',
        "username": '"aktin"', "password_file": '"password"', "known_hosts": '"known_hosts"', "folder": '"upload"',
        "key_file": '"fernet.key"', "directory": f'"{directory}/state"',
    }
    lines = (docs.ROOT / docs.SFTP.sample).read_text().splitlines()
    for key, value in settings.items():
        lines[lines.index(next(line for line in lines if line.startswith(f"#{key} = ")))] = f"{key} = {value}"
    path = directory / "sftp.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def test_the_example_config_loads_once_filled_in(tmp_path: Path) -> None:
    loaded = config.load(filled_in_example(tmp_path))
    assert (loaded.broker.timeout, loaded.sftp.parallel, loaded.max_delete) == (60, 16, config.DEFAULT_MAX_DELETE)
    assert loaded.state_dir == tmp_path / "state"


def test_one_change_in_the_declaration_changes_all_four_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    declared = options.SFTP_TOML
    changed = dataclasses.replace(
        declared,
        options=tuple(
            dataclasses.replace(o, default=45, description="How long to wait for the broker, in seconds.")
            if (o.section, o.key) == ("broker", "timeout") else o
            for o in declared.options
        ),
    )
    generated = docs.rendered(docs.ROOT, docs.with_declaration(docs.SFTP, changed))
    for part, text in generated.items():
        if part == docs.RECEIVE.sample:
            assert text == (docs.ROOT / part).read_text()
            continue
        assert text != (docs.ROOT / part).read_text(), part
        assert "How long to wait for the broker" in " ".join(text.split()), part
        assert "default 45" in text, part
    monkeypatch.setattr(options, "SFTP_TOML", changed)
    assert config.load(filled_in_example(tmp_path)).broker.timeout == 45
