"""JSON lines: one encoding, whichever encoder writes a line (harness.render.jsonl)."""

from __future__ import annotations

import json

import pytest

from harness.ladder.model import Step, StepKind
from harness.render import jsonl


def _json(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


STEP = Step(
    7,
    1_700_000_000_123_456_789,
    "client.example.org",
    "[2001:db8::25]:25",
    StepKind.REPLY,
    '250-mx \\xff "quoted" é\u2028\n250 \x00\x1f\x7f tab\there',
    (3, 4),
    2,
    (("code", 250), ("lines", 2), ("in_order", True), ("records", (("answer", "a", "A", "x"),))),
)


@pytest.mark.parametrize(
    "record",
    [
        {"type": "step", "session": None, **STEP.to_dict()},
        {"type": "summary", "source": "ünïcode/ψ.pcap", "hosts": {"192.0.2.1": "a"}, "n": 0},
        {"empty": {}, "list": [], "nested": [[1, [2, []]], {"k": False}], "neg": -(2**63)},
    ],
)
def test_a_line_is_what_json_writes(record):
    assert jsonl.line(record) == _json(record)


@pytest.mark.parametrize(
    "record",
    [{"text": "bytes \udcff not UTF-8"}, {"big": 2**70}, {"both": ["\udc80", -(2**64)]}],
)
def test_what_orjson_refuses_is_written_by_json(record):
    assert jsonl.line(record) == _json(record)
