"""Journal message ids, one per kind of event, so operators can filter with MESSAGE_ID=."""

DELIVERED = "2c5d32c0819e4ec5a9fcb4091f2860f9"
REDELIVERED = "615cb59283c84bdcb735e9c383d17e04"
REMOVED = "daaaff6ee1b7452696c35978b0fbf893"
RUN_FAILED = "0bb679b9727947bebb571a174afdff38"
RUN_FINISHED = "cc67f2b0047b4838899aa75c6a617141"
