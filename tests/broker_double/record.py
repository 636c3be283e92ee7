"""Records a real AKTIN Broker answering the fixed conversation into recording.json:
`python -m tests.broker_double.record` (or `make broker-recording`). The broker's release is
that of its jars, its websocket idle timeout the conversation's. Answers that differ from the
recording only in that version add the release to those the recording was checked against, and
leave the answers as they are; other answers replace the recording, and the releases it was
checked against are marked as checked against an earlier conversation only.

Runs only where the broker's jars are present (AKTIN_BROKER_LIB or the Maven cache), since
they are on no registry this project reaches; the recording is committed and the replay test
holds the double to it everywhere else.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.broker_double import conversation
from tests.peers import broker as broker_peer


def main() -> int:
    lib = broker_peer.classpath()
    if lib is None:
        print(f"recording needs a real AKTIN Broker: {broker_peer.NO_JARS}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="aktin-broker-recording-") as directory:
        broker = broker_peer.RealBroker(lib, Path(directory), hospitals=False, idle_timeout=conversation.IDLE_SECONDS)
        try:
            exchanges = conversation.Talker(broker.url).run()
        finally:
            broker.stop()
    print(f"{len(exchanges)} exchanges: {conversation.record(broker.version, exchanges)} ({conversation.RECORDING})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
