"""The `aktin-broker-sftp` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from aktin_sftp import __version__, audit, config, crypto, events, lastrun, maintenance, receive, sync, watch
from aktin_sftp.broker import Broker
from aktin_sftp.errors import EX_FAILURE, EX_SOFTWARE, ConfigError, LockedError, SyncError
from aktin_sftp.files import open_private
from aktin_sftp.lock import exclusive
from aktin_sftp.sftp import Remote
from aktin_sftp.state import StatusFile

log = logging.getLogger("aktin_sftp")
SPEED_PROBE_SIZE = 32 << 20
LOG_HANDLER = "aktin-broker-sftp"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.config is None:
        args.config = args.default_config
    _setup_logging(args.verbose)
    try:
        code: int | None = args.command(args)
    except SyncError as exc:
        log.error("%s", exc, extra={"MESSAGE_ID": message_id(exc)})
        return exc.exit_code
    except (crypto.InvalidKeyError, crypto.InvalidTokenError) as exc:
        log.error("%s", exc)
        return EX_FAILURE
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        log.error("local file error%s: %s", where, exc.strerror or exc, extra={"MESSAGE_ID": events.RUN_FAILED})
        return EX_FAILURE
    except Exception as exc:  # noqa: BLE001
        # The last resort for what no handler above expected: one line, and no values, since
        # an exception's message or a traceback can carry a key or a password.
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        log.error(
            "internal error: %s in %s, line %s (details are not shown, as they could hold secrets); please report it",
            type(exc).__name__, Path(frame.filename).name, frame.lineno, extra={"MESSAGE_ID": events.RUN_FAILED},
        )
        return EX_SOFTWARE
    return code or 0


def message_id(exc: SyncError) -> str:
    """A run that met another one's lock did not fail: monitoring that counts failures by
    MESSAGE_ID must not count it."""
    return events.LOCKED if isinstance(exc, LockedError) else events.RUN_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aktin-broker-sftp",
        description="Deliver results of tagged AKTIN Broker requests, Fernet-encrypted, to an SFTP folder.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    defaults = f"default: {config.DEFAULT_PATH}, for receive {config.DEFAULT_RECEIVE_PATH}"
    parser.add_argument("--config", type=Path, default=None, help=defaults)
    parser.set_defaults(default_config=config.DEFAULT_PATH)
    parser.add_argument("-v", "--verbose", action="store_true", help="also log debug messages")
    # The same options after the command (`run --config x.toml`); SUPPRESS keeps an omitted
    # one from overriding what was given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=defaults)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="also log debug messages")
    commands = parser.add_subparsers(metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=help)

    run = command("run", help="deliver new and changed results, remove gone ones")
    run.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    run.set_defaults(command=_run)

    status = command("status", help="show what was delivered")
    status.set_defaults(command=_status)

    check = command("check", help="validate the config and reach broker and SFTP server")
    check.add_argument(
        "--speed", action="store_true", help="also show the SSH cipher and measure upload speed (writes and removes a probe file)"
    )
    check.set_defaults(command=_check)

    redeliver = command("redeliver", help="deliver requests again on the next run (or at once with --now)")
    chosen = redeliver.add_mutually_exclusive_group(required=True)
    chosen.add_argument("ids", type=int, nargs="*", default=[], metavar="ID", help="request ids")
    chosen.add_argument("--all", action="store_true", help="every delivered request")
    redeliver.add_argument("--now", action="store_true", help="run the delivery at once, in this process")
    redeliver.set_defaults(command=_redeliver)

    verify = command("verify", help="compare the SFTP folder with what the state says was delivered")
    verify.add_argument("--deep", action="store_true", help="also download each file and check its SHA-256 and token")
    verify.add_argument("--repair", action="store_true", help="queue missing and damaged files for re-delivery")
    verify.set_defaults(command=_verify)

    keygen = command("keygen", help="write a new Fernet key (mode 0600)")
    keygen.add_argument("path", type=Path)
    keygen.set_defaults(command=_keygen)

    adopt = command(
        "import", help="take over another uploader's status.xml (for instance upstream's WORKING_DIR) as the state"
    )
    adopt.add_argument("file", type=Path, help="the status.xml to take over; it is read, not moved")
    adopt.set_defaults(command=_import)

    decrypt = command("decrypt", help="turn a delivered file back into the zip")
    decrypt.add_argument("input", type=Path)
    decrypt.add_argument("output", type=Path)
    decrypt.add_argument(
        "--key-file", type=Path, required=True, action="append",
        help="a Fernet key file; give it more than once (old and new key) during a key change",
    )
    decrypt.set_defaults(command=_decrypt)

    health = command("health", help="one line for monitoring (Nagios plugin format): did the last run succeed, and when")
    health.add_argument("--warn", default="2h", help="WARNING when the last success is older (default: %(default)s)")
    health.add_argument("--crit", default="6h", help="CRITICAL when the last success is older (default: %(default)s)")
    health.set_defaults(command=_health)

    listen = command("watch", help="listen to the broker's events and ask for a delivery run soon after each")
    listen.add_argument(
        "--trigger", type=Path, default=watch.DEFAULT_TRIGGER,
        help="the file to create when a run is due, which aktin-broker-sftp.path watches (default: %(default)s)",
    )
    listen.set_defaults(command=_watch)

    take = command("receive", help="the recipient's side: take in, check and decrypt what status.xml vouches for")
    take.add_argument("--dry-run", action="store_true", help="print what would be received, change nothing")
    take.add_argument("--status", action="store_true", help="list what was received")
    take.set_defaults(command=_receive, default_config=config.DEFAULT_RECEIVE_PATH)
    return parser


def _setup_logging(verbose: bool) -> None:
    handler = journal_handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.set_name(LOG_HANDLER)
    root = logging.getLogger()
    # A second main() in one process (the tests) replaces its handler rather than adding one.
    for old in [h for h in root.handlers if h.get_name() == LOG_HANDLER]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # paramiko logs every channel event at INFO, and a channel the server refuses beyond its
    # session limit (which a second login then serves) as an ERROR; what matters reaches the
    # operator as our own one-line errors.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def journal_handler() -> logging.Handler | None:
    """The journal's own handler when stderr is connected to the journal (systemd says so in
    JOURNAL_STREAM) and python3-systemd is installed; otherwise None, and plain stderr lines."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return None
    if stream != f"{stat.st_dev}:{stat.st_ino}":
        return None
    try:
        from systemd.journal import JournalHandler  # type: ignore[import-not-found]
    except ImportError:
        return None
    # A unit instance (aktin-broker-sftp@NAME) names itself, so that its lines can be told apart.
    identifier = os.environ.get("AKTIN_SFTP_IDENTIFIER", "aktin-broker-sftp")
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=identifier)
    return handler


def _run(args: argparse.Namespace) -> None:
    sync.run(config.load(args.config), dry_run=args.dry_run)


def _health(args: argparse.Namespace) -> int:
    try:
        warn, crit = lastrun.duration(args.warn), lastrun.duration(args.crit)
        if warn > crit:
            raise ValueError(f"--warn {args.warn} is longer than --crit {args.crit}")
    except ValueError as exc:
        code, line = lastrun.unknown(str(exc))
    else:
        try:
            settings = config.load(args.config)
            run = lastrun.load(settings.state_dir)
            entries = StatusFile(settings.state_dir / sync.STATUS_NAME).load() if settings.state_dir.is_dir() else {}
        except (SyncError, OSError) as exc:
            code, line = lastrun.unknown(str(exc))
        else:
            delivered = sum(1 for e in entries.values() if e.deleted is None)
            code, line = lastrun.verdict(run, delivered, datetime.now(timezone.utc), warn, crit)
    print(line)
    return code


def _status(args: argparse.Namespace) -> None:
    settings = config.load(args.config)
    if not settings.state_dir.is_dir():
        raise ConfigError(
            f"state directory {settings.state_dir} does not exist: no run has used it; check [state] directory"
        )
    entries = StatusFile(settings.state_dir / sync.STATUS_NAME).load()
    try:
        run = lastrun.load(settings.state_dir)
    except lastrun.Damaged as exc:
        # The table is what status is for; the next run replaces the record.
        print(f"last run: unknown ({exc})")
    else:
        _show_last_run(run)
    print()
    rows = [("id", "completion", "uploaded", "last update", "deleted")]
    rows += [
        (str(e.id), e.completion, e.uploaded or "-", e.last_update or "-", e.deleted or "-")
        for e in sorted(entries.values(), key=lambda e: e.id)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if not entries:
        print("(nothing delivered yet)")


def _show_last_run(run: lastrun.LastRun | None) -> None:
    if run is None:
        print("last run: none recorded")
        return
    outcome = "succeeded" if run.exit_code == 0 else f"failed (exit {run.exit_code}): {run.reason}"
    print(f"last run: {run.started} to {run.ended} UTC, {outcome}")
    print(f"last successful run: {run.last_success + ' UTC' if run.last_success else 'none recorded'}")


def _check(args: argparse.Namespace) -> None:
    settings = config.load(args.config)
    print(f"config {settings.path}: valid")
    crypto.load_key(settings.key_file)
    print(f"encryption key {settings.key_file}: valid")
    with Broker(settings.broker) as broker:
        version = broker.version()
        tagged = broker.tagged_request_ids(settings.broker.tag)
    print(f"broker {settings.broker.url}: version {version}, {len(tagged)} requests tagged {settings.broker.tag!r}")
    with Remote(settings.sftp) as remote:
        remote.listdir()
        print(
            f"sftp {settings.sftp.username}@{settings.sftp.host}:{settings.sftp.port}: host key verified, "
            f"logged in, folder {settings.sftp.folder!r} readable"
        )
        if args.speed:
            # A run in progress removes leftover probe files: the probe waits for no run.
            sync.prepare(settings.state_dir)
            with exclusive(sync.lock_path(settings.state_dir)):
                rate = remote.measure_upload(SPEED_PROBE_SIZE)
            print(f"sftp cipher {remote.cipher}, upload {rate / 1e6:.0f} MB/s ({SPEED_PROBE_SIZE >> 20} MiB probe)")


def _import(args: argparse.Namespace) -> None:
    settings = config.load(args.config)
    maintenance.import_status(settings.state_dir, args.file)


def _redeliver(args: argparse.Namespace) -> None:
    settings = config.load(args.config)
    maintenance.queue_redelivery(settings.state_dir, None if args.all else args.ids)
    if args.now:
        sync.run(settings)


def _verify(args: argparse.Namespace) -> None:
    audit.verify(config.load(args.config), deep=args.deep, repair=args.repair)


def _watch(args: argparse.Namespace) -> None:
    settings = config.load(args.config)
    # systemctl stop ends the listener at once, also in the middle of a connect.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        watch.watch(settings, args.trigger)
    except KeyboardInterrupt:
        log.info("listener stopped")


def _receive(args: argparse.Namespace) -> None:
    settings = config.load_receive(args.config)
    if args.status:
        for line in receive.status_lines(settings):
            print(line)
        return
    receive.receive(settings, dry_run=args.dry_run)


def _keygen(args: argparse.Namespace) -> None:
    try:
        descriptor = os.open(args.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SyncError(f"{args.path} exists; refusing to overwrite a key (results encrypted with it would be lost)") from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(crypto.generate_key() + b"\n")
    print(f"new Fernet key written to {args.path} (mode 0600); give it to the recipient over a separate, safe channel")


def _decrypt(args: argparse.Namespace) -> None:
    keys = [(path, crypto.load_key(path)) for path in args.key_file]
    # Plain bytes land in a private partial file and take the output's name only once the
    # token's MAC has been checked; whatever goes wrong, the partial file goes.
    partial = args.output.with_name(f".{args.output.name}.part")
    try:
        opened = _decrypt_with_any(keys, args.input, partial)
        os.replace(partial, args.output)
    finally:
        partial.unlink(missing_ok=True)
    print(f"{args.output}: decrypted with {opened} (key id {crypto.key_id(dict(keys)[opened])})")


def _decrypt_with_any(keys: list[tuple[Path, bytes]], source: Path, partial: Path) -> Path:
    """Tries each key in turn, each time in one pass of its own over the whole file."""
    for path, key in keys:
        with open_private(partial) as target:
            try:
                crypto.decrypt_file(key, source, target)
            except crypto.WrongKeyError:
                continue
            except crypto.InvalidTokenError as exc:
                raise crypto.InvalidTokenError(f"{source}: {exc}") from None
        return path
    which = "the key" if len(keys) == 1 else f"none of the {len(keys)} keys"
    raise crypto.InvalidTokenError(f"{source}: {which} opens it (wrong key, or the file was changed or cut short)")
