"""The torture script (issue 9) cannot rot: its quick run passes and prints figures only."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import PYTHON, ROOT

pytestmark = pytest.mark.lab

FIGURE = re.compile(r"\S.*?\s+-?\d+  (ok|FAIL|noted)")
PARTS = ("pcap ", "DNS ", "SMTP ", "seed, SIGKILL: ", "postfix-receiver, SIGINT: ")


def test_quick_torture_passes_and_every_line_is_a_count_and_its_result(tmp_path) -> None:
    done = subprocess.run(
        [PYTHON, "tools/torture.py", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert [line for line in lines if not FIGURE.fullmatch(line)] == []
    assert [line for line in lines if line.endswith("FAIL")] == [], done.stderr
    assert done.returncode == 0, done.stderr
    assert all(any(line.startswith(part) for line in lines) for part in PARTS), lines
    assert lines[-1].startswith("figures that FAIL ") and lines[-1].endswith(" 0  ok")
