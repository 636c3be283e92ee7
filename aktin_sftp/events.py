"""Journal message ids, one per kind of event, so operators can filter with MESSAGE_ID=; each has
an entry in systemd/aktin-broker-sftp.catalog, which `journalctl -x` shows."""

DELIVERED = "2c5d32c0819e4ec5a9fcb4091f2860f9"
REDELIVERED = "615cb59283c84bdcb735e9c383d17e04"
REMOVED = "daaaff6ee1b7452696c35978b0fbf893"
RUN_FAILED = "0bb679b9727947bebb571a174afdff38"
RUN_FINISHED = "cc67f2b0047b4838899aa75c6a617141"
# A run that found another one holding the lock (exit 75): no failure, nothing changed.
LOCKED = "20631eaf703e41b3a11fd66eff4abb0d"
STATUS_UNREADABLE = "68a3a1f5a41b4dffb6007a2609b1078b"
KEY_CHANGED = "c9555af2199342abbadf2565c18fd8a8"
DESTINATION_CHANGED = "cb121f629efe41c39d63f8013e0db88f"
# The listener (watch) asked for a delivery run; it lost the broker's websocket.
RUN_REQUESTED = "496fcd9a09de4155b850094b34eda734"
LISTENER_LOST = "5cada06944b842c283c934821fcf85cb"
