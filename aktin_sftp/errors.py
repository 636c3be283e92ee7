"""Failures and the exit codes operators and systemd see for them (sysexits.h)."""

EX_FAILURE = 1
# What the sender's status.xml vouches for and what its folder holds disagree (receive).
EX_DATAERR = 65
EX_UNAVAILABLE = 69
# receive: a listed file that cannot be read for a reason other than permissions.
EX_IOERR = 74
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78


class SyncError(Exception):
    """A failure with a one-line message meant for the operator."""

    exit_code = EX_FAILURE


class ConfigError(SyncError):
    exit_code = EX_CONFIG


class UnavailableError(SyncError):
    """The broker or the SFTP server could not be reached or refused us."""

    exit_code = EX_UNAVAILABLE


class Cancelled(Exception):
    """A delivery whose turn came after the run had already failed; it was not started."""


class LockedError(SyncError):
    exit_code = EX_TEMPFAIL
