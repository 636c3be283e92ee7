"""Records the real AKTIN Broker 1.5.1 answering the fixed conversation into recording.json:
`python -m tests.broker_double.record` (or `make broker-recording`).

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
        print(f"recording needs the real AKTIN Broker {broker_peer.BROKER_VERSION}: {broker_peer.NO_JARS}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="aktin-broker-recording-") as directory:
        broker = broker_peer.RealBroker(lib, Path(directory), hospitals=False)
        try:
            exchanges = conversation.Talker(broker.url).run()
        finally:
            broker.stop()
    conversation.save(exchanges)
    print(f"{len(exchanges)} exchanges recorded into {conversation.RECORDING}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
