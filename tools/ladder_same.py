"""Proof that a change leaves every ladder as it was: the JSON ladder (``--format json``) and
the JSON lines (``--format jsonl``) of each capture, made by two source trees, byte for byte.

Rules this script keeps:

- The baseline is another tree of this repository (e.g. ``git archive main | tar -x -C
  DIR``); both trees run under this checkout's interpreter, each as ``python -m harness``
  from its own root, so each imports its own ``harness`` package.
- The captures are every file the dissector's tests read (tests/data, tests/crafted,
  pcaps/seed.pcap) plus any given; a capture is compared in both formats, exit code,
  stdout and stderr together.
- It prints one line per capture that differs and a summary; exit 1 if any differs.

Usage: .venv/bin/python tools/ladder_same.py BASE_TREE [CAPTURE ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("json", "jsonl")


def captures() -> list[Path]:
    """The captures the dissector's tests read, in a stable order."""
    found = [
        *(ROOT / "tests" / "data").rglob("*.pcap*"),
        *(ROOT / "tests" / "crafted").glob("*/*.pcap"),
    ]
    return [*sorted(found), ROOT / "pcaps" / "seed.pcap"]


def ladder(tree: Path, capture: Path, fmt: str) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) of ``ladder --format fmt capture`` run from *tree*."""
    argv = [sys.executable, "-m", "harness", "ladder", "--format", fmt, str(capture)]
    done = subprocess.run(argv, cwd=tree, capture_output=True, check=False)
    return done.returncode, done.stdout, done.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the baseline source tree")
    parser.add_argument("extra", type=Path, nargs="*", help="more captures to compare")
    args = parser.parse_args()
    files = [*captures(), *(p.resolve() for p in args.extra)]
    differ = 0
    for capture in files:
        for fmt in FORMATS:
            if ladder(args.base, capture, fmt) != ladder(ROOT, capture, fmt):
                differ += 1
                print(f"DIFFERS: {capture} --format {fmt}")
    print(f"{len(files)} captures x {len(FORMATS)} formats: {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
