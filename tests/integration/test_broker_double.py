"""The broker double answers the fixed conversation exactly as the real AKTIN Broker did when it
was recorded (tests/broker_double/recording.json, from 1.5.1 and checked against 1.5.2, which
answers alike but for its version; README says how to refresh it)."""

from __future__ import annotations

from pathlib import Path

from tests.broker_double import conversation
from tests.broker_double.server import BrokerDouble


def test_the_double_answers_as_the_recorded_real_broker(tmp_path: Path) -> None:
    double = BrokerDouble(tmp_path, hospitals=False)
    try:
        answers = conversation.Talker(double.url).run()
    finally:
        double.stop()
    recorded = conversation.load()
    assert [a["step"] for a in answers] == [r["step"] for r in recorded]
    for answer, expected in zip(answers, recorded, strict=True):
        assert answer == expected, f"step {expected['step']!r}"
