"""Every key of the configuration file, declared once.

`config` validates against these declarations, and the example config (debian/sftp.toml), the
man page's CONFIGURATION section and the README's configuration table are generated from them
(`make docs`), so that a key's type, range, default and description agree in all four places.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace


class Kind(enum.Enum):
    TEXT = "string"
    NUMBER = "number"
    INTEGER = "integer"
    BOOLEAN = "true or false"
    FILE = "file"
    FILES = "list of files"
    DIRECTORY = "directory"
    # A secret given inline; its file form is a FILE with secret=True.
    SECRET = "secret string"


@dataclass(frozen=True)
class Option:
    section: str
    key: str
    kind: Kind
    description: str
    # TOML text shown in the example config, ready to uncomment.
    example: str
    default: bool | float | str | None = None
    low: float | None = None
    high: float | None = None
    required: bool = False
    # Holds a secret: never shown in messages, and its file must not be readable by every user.
    secret: bool = False
    # The upstream uploader's name (sftp_export.py's config), where it has one.
    upstream: str | None = None

    @property
    def name(self) -> str:
        return f"[{self.section}] {self.key}"


@dataclass(frozen=True)
class Alternatives:
    """Keys of one section that say the same thing in different ways."""

    section: str
    keys: tuple[str, ...]
    # At least one of them must be given.
    required: bool
    # At most one of them may be given.
    exclusive: bool


@dataclass(frozen=True)
class Declaration:
    sections: dict[str, str]
    options: tuple[Option, ...]
    alternatives: tuple[Alternatives, ...]
    # Sections that may be left out as a whole; their required keys are required only in them.
    optional_sections: frozenset[str] = frozenset()

    def option(self, section: str, key: str) -> Option:
        return next(o for o in self.options if (o.section, o.key) == (section, key))

    def keys(self, section: str) -> Sequence[Option]:
        return [o for o in self.options if o.section == section]

    def alternatives_of(self, option: Option) -> Sequence[Alternatives]:
        return [a for a in self.alternatives if a.section == option.section and option.key in a.keys]


SFTP_TOML = Declaration(
    sections={
        "broker": "The AKTIN Broker whose tagged requests are delivered.",
        "sftp": "The recipient's SFTP server and folder.",
        "encryption": "The key every delivered file is encrypted with.",
        "state": "What this service keeps between runs.",
        "watch": "The listener (aktin-broker-sftp watch): a delivery run soon after the broker says something "
        "happened to a request.",
    },
    options=(
        Option(
            "broker", "url", Kind.TEXT, "Root URL of the AKTIN Broker, http:// or https:// (a trailing /broker/ is "
            "accepted).", '"http://localhost:8080"', required=True, upstream="BROKER.URL",
        ),
        Option(
            "broker", "api_key", Kind.SECRET, "The broker's admin API key (its DN contains OU=admin), inline; then "
            "the config file itself must not be readable by every user.", '"..."', secret=True,
            upstream="BROKER.API_KEY",
        ),
        Option(
            "broker", "api_key_file", Kind.FILE, "File holding the broker's admin API key.",
            '"/etc/aktin/sftp-broker-api-key"', secret=True,
        ),
        Option(
            "broker", "tag", Kind.TEXT, "Deliver the requests carrying this tag: 1 to 64 letters, digits, '_', '.' "
            "or '-'.", '"rki"', required=True, upstream="REQUESTS.TAG",
        ),
        Option(
            "broker", "ca_bundle", Kind.FILE, "PEM file with the CA certificate(s) of an https:// broker with a "
            "private CA; then only these are trusted. TLS is always verified.", '"/etc/aktin/broker-ca.pem"',
            upstream="REQUESTS_CA_BUNDLE",
        ),
        Option(
            "broker", "timeout", Kind.NUMBER, "Seconds to wait for a connect, for the broker's answer to begin, and "
            "for each further 64 KiB of it, so that a trickling download is cut too. After an export without an "
            "answer, no further export or download starts in that run.", "60", default=60, low=1, high=3600,
        ),
        Option(
            "broker", "parallel", Kind.INTEGER, "Status calls to the broker at a time; exports still run one at "
            "a time.", "4", default=4, low=1, high=32,
        ),
        Option(
            "broker", "max_download_mib", Kind.INTEGER, "Largest result bundle to download, in MiB.", "16384",
            default=16384, low=1, high=1 << 30,
        ),
        Option(
            "sftp", "host", Kind.TEXT, "Host name or address of the SFTP server.", '"sftp.example.org"',
            required=True, upstream="SFTP.HOST",
        ),
        Option("sftp", "port", Kind.INTEGER, "Port of the SFTP server.", "22", default=22, low=1, high=65535,
               upstream="SFTP.PORT"),
        Option("sftp", "username", Kind.TEXT, "Login name.", '"aktin"', required=True, upstream="SFTP.USERNAME"),
        Option(
            "sftp", "password", Kind.SECRET, "Login password, inline; then the config file itself must not be "
            "readable by every user.", '"..."', secret=True, upstream="SFTP.PASSWORD",
        ),
        Option("sftp", "password_file", Kind.FILE, "File holding the login password.", '"/etc/aktin/sftp-password"',
               secret=True),
        Option(
            "sftp", "private_key_file", Kind.FILE, "Private key file for the login (OpenSSH or PEM format).",
            '"/etc/aktin/sftp-id_ed25519"', secret=True,
        ),
        Option(
            "sftp", "known_hosts", Kind.FILE, "File with the server's verified host key(s), as in "
            "~/.ssh/known_hosts (\"[sftp.example.org]:22 ssh-ed25519 AAAA...\"). Host keys are never learned; an "
            "unknown or changed key is refused.", '"/etc/aktin/sftp-known_hosts"', required=True,
            upstream="SFTP.KNOWN_HOSTS",
        ),
        Option(
            "sftp", "folder", Kind.TEXT, "Remote folder the files go to, relative to the login folder or absolute.",
            '"upload"', required=True, upstream="SFTP.FOLDERNAME",
        ),
        Option(
            "sftp", "timeout", Kind.NUMBER, "Seconds to wait for any answer from the SFTP server (connect, login, "
            "every channel open, listing, write reply, rename and close); while idle, an SSH keepalive goes out "
            "every timeout/2 seconds.", "30", default=30, low=1, high=3600, upstream="SFTP.TIMEOUT",
        ),
        Option(
            "sftp", "parallel", Kind.INTEGER, "Requests delivered at once, each on an SFTP channel of its own. "
            "Beyond the server's sessions per login (OpenSSH: MaxSessions 10) a second login is used; lower it for "
            "a server that allows one login at a time.", "16", default=16, low=1, high=32,
        ),
        Option(
            "encryption", "key_file", Kind.FILE, "The Fernet key shared with the recipient, urlsafe base64; create "
            "one with: aktin-broker-sftp keygen PATH.", '"/etc/aktin/sftp-fernet.key"', required=True, secret=True,
            upstream="SECURITY.PATH_ENCRYPTION_KEY",
        ),
        Option(
            "state", "directory", Kind.DIRECTORY, "Where status.xml, the lock and work files live. For a config "
            "named sftp-NAME.toml the default is /var/lib/aktin/sftp-NAME, the state of the unit instance "
            "aktin-broker-sftp@NAME; the unit can write nowhere else.", '"/var/lib/aktin/sftp"',
            default="/var/lib/aktin/sftp", upstream="MISC.WORKING_DIR",
        ),
        Option(
            "state", "max_delete", Kind.INTEGER, "Most remote files one run may remove; a run that would remove "
            "more removes none and fails.", "5", default=5, low=0, high=1_000_000,
        ),
        Option(
            "watch", "quiet_seconds", Kind.NUMBER, "Seconds without a further event before the listener starts a "
            "run, so that a burst of results gives one run.", "20", default=20, low=1, high=3600,
        ),
        Option(
            "watch", "max_delay_seconds", Kind.NUMBER, "Seconds after the first event at most, however many "
            "follow, before the listener starts a run; at least quiet_seconds.", "120", default=120, low=1,
            high=86400,
        ),
    ),
    alternatives=(
        Alternatives("broker", ("api_key", "api_key_file"), required=True, exclusive=True),
        Alternatives("sftp", ("password", "password_file"), required=False, exclusive=True),
        Alternatives("sftp", ("password", "password_file", "private_key_file"), required=True, exclusive=False),
    ),
)


def _receiving(option: Option) -> Option:
    if option.key == "folder":
        return replace(option, description="Remote folder the sender delivers to, relative to the login folder or "
                       "absolute.", upstream=None)
    return replace(option, upstream=None)


RECEIVE_TOML = Declaration(
    sections={
        "source": "Where the sender's files are, when they are on this machine.",
        "sftp": "Where the sender's files are, when they are on an SFTP server (instead of [source]).",
        "keys": "The keys the files are encrypted with.",
        "inbox": "Where the decrypted result bundles go.",
        "state": "What receive keeps between runs.",
    },
    options=(
        Option(
            "source", "folder", Kind.DIRECTORY, "Local folder the sender delivers to, holding its status.xml (the "
            "recipient's own SFTP upload directory). Give either this or an [sftp] section.", '"/srv/sftp/aktin/upload"',
        ),
        *(_receiving(o) for o in SFTP_TOML.keys("sftp") if o.key != "parallel"),
        Option(
            "keys", "files", Kind.FILES, "Fernet key files, as the sender's [encryption] key_file; during a key "
            "change the old and the new one. Each file is picked by the key id status.xml records for it.",
            '["/etc/aktin/receive-fernet.key"]', required=True, secret=True,
        ),
        Option(
            "inbox", "directory", Kind.DIRECTORY, "Where export_ID.zip is placed, decrypted, mode 0600; the "
            "previous version of a changed request goes to its previous/ folder as export_ID.N.zip. Created with "
            "mode 0700; one open to other users, or inside [source] folder, is refused.",
            '"/var/lib/aktin/receive/inbox"', default="/var/lib/aktin/receive/inbox",
        ),
        Option(
            "inbox", "move_withdrawn", Kind.BOOLEAN, "Move the file of a request the sender withdrew to the inbox's "
            "withdrawn/ folder; otherwise it stays where it is.", "false", default=False,
        ),
        Option(
            "state", "directory", Kind.DIRECTORY, "Where received.json, the lock and the downloaded tokens live. "
            "Created with mode 0700; one open to other users, or inside [source] folder, is refused.",
            '"/var/lib/aktin/receive"', default="/var/lib/aktin/receive",
        ),
        Option(
            "state", "mismatch_runs", Kind.INTEGER, "Runs in a row a file may differ from what status.xml says "
            "(the sender may be replacing it) before that is an error.", "3", default=3, low=1, high=1000,
        ),
    ),
    alternatives=SFTP_TOML.alternatives[1:],
    optional_sections=frozenset({"source", "sftp"}),
)
