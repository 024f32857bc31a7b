"""Fuzz the pcap reader and the dissector with mutated captures, offline, and classify.

    .venv/bin/python tools/pcap_fuzz.py [--count 100000] [--jobs 2] [--out DIR] SEED...

Each mutant (``pcap_mutate.mutants``) is dissected and every ladder rendered in every
format.  Rules kept here:

1. What may happen: a ladder, or a ``PcapError`` of one line naming the file (and an
   offset).  Anything else is a *finding*, classified by ``examine``: an exception by its
   type and the innermost harness frame that raised it; a PcapError without file or on
   several lines; a document that is not valid UTF-8; a JSON ladder that does not read
   back equal; a mutant that took over ``SLOW_S`` seconds.
2. The first mutant of each class is written to ``--out`` as ``<class>.pcap`` with its
   mutations; the summary prints every class with its count, so a run reproduces the
   figures.  Mutants are drawn from ``random.Random(f"{seed name}:{--rng}")``, so the same
   arguments give the same mutants.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pcap_mutate import mutants

SLOW_S = 5.0


def examine(path: str) -> str | None:
    """The class of what went wrong dissecting and rendering *path*; None if nothing did."""
    from harness.capture.pcapfile import PcapError
    from harness.ladder.dissect import dissect
    from harness.ladder.model import Ladder
    from harness.render import FORMATS, render

    try:
        ladder = dissect(path)
    except PcapError as exc:
        message = str(exc)
        if "\n" in message or not message.startswith(f"{path}: "):
            return f"PcapError not one line naming the file: {message[:80]!r}"
        return None
    except Exception as exc:
        return _crash_class(exc)
    try:
        for fmt in FORMATS:
            document = render(ladder, fmt)
            document.encode("utf-8")  # lone surrogates (raw bytes let through) raise here
            if fmt == "json" and Ladder.from_json(document) != ladder:
                return "JSON ladder does not read back equal"
    except UnicodeEncodeError as exc:
        return f"{fmt} output is not valid UTF-8 ({exc.reason})"
    except Exception as exc:
        return _crash_class(exc)
    if [s.index for s in ladder.steps] != list(range(1, len(ladder.steps) + 1)):
        return "steps not numbered 1, 2, ..."
    return None


def _crash_class(exc: BaseException) -> str:
    """``Type: message at file:function`` of the innermost harness frame; numbers masked."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/harness/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "?"
    message = re.sub(r"\d+", "N", str(exc).splitlines()[0] if str(exc) else "")[:80]
    return f"{type(exc).__name__}: {message} at {where}"


def _batch(job: tuple[str, int, int, int, str]) -> tuple[int, Counter, dict[str, str]]:
    """Run mutants [start, start + n) of one seed; (count, classes, first reproducer each)."""
    seed_path, rng_seed, start, n, out = job
    seed = Path(seed_path).read_bytes()
    rng = random.Random(f"{Path(seed_path).name}:{rng_seed}")
    stream = mutants(seed, rng)
    for _ in range(start):
        next(stream)
    classes: Counter[str] = Counter()
    kept: dict[str, str] = {}
    fd, path = tempfile.mkstemp(
        suffix=".pcap", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    os.close(fd)
    try:
        for index in range(start, start + n):
            kinds, data = next(stream)
            Path(path).write_bytes(data)
            began = time.monotonic()
            found = examine(path)
            if found is None and time.monotonic() - began > SLOW_S:
                found = f"slow: over {SLOW_S:.0f} s"
            if found is None:
                continue
            classes[found] += 1
            if found not in kept:
                kept[found] = _keep(
                    out, found, data, f"{seed_path} rng {rng_seed} #{index} {kinds}"
                )
    finally:
        os.unlink(path)
    return n, classes, kept


def _keep(out: str, found: str, data: bytes, origin: str) -> str:
    name = hashlib.sha256(found.encode()).hexdigest()[:12]
    target = Path(out) / f"{name}.pcap"
    if not target.exists():
        target.write_bytes(data)
        target.with_suffix(".txt").write_text(f"{found}\n{origin}\n")
    return str(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", nargs="+", type=Path)
    parser.add_argument("--count", type=int, default=100_000, help="mutants in all")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rng", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    per_seed, batch = args.count // len(args.seeds), 500
    jobs = [
        (str(seed), args.rng, start, min(batch, per_seed - start), str(args.out))
        for seed in args.seeds
        for start in range(0, per_seed, batch)
    ]
    total, classes, kept = 0, Counter(), {}
    began = time.monotonic()
    with ProcessPoolExecutor(args.jobs) as pool:
        for n, found, reproducers in pool.map(_batch, jobs):
            total += n
            classes.update(found)
            kept = {**reproducers, **kept}
    print(f"{total} mutants of {len(args.seeds)} seeds in {time.monotonic() - began:.0f} s")
    print(f"{sum(classes.values())} findings in {len(classes)} classes")
    for found, count in classes.most_common():
        print(f"{count:8}  {found}\n          {kept[found]}")


if __name__ == "__main__":
    main()
