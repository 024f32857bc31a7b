"""``python -m harness.mta prepare [NAME ...]``: fetch, unpack and set up the real MTAs.

Rules kept here:
- It calls each adapter's ``prepare()`` (idempotent: a second run only checks), in the
  order given (default: every adapter ``harness.mta.base.adapters()`` finds), and prints
  one line per MTA: its name, upstream version, exact Debian package version and unpacked
  trees.
- Any failure is one line on stderr naming the MTA and the reason, exit status 2 (the
  Makefile's ``make mtas`` stops there); an unknown name is such a failure.
"""

from __future__ import annotations

import sys

from harness.errors import HarnessError
from harness.mta import debs
from harness.mta.base import MtaAdapter, adapters

USAGE = "usage: python -m harness.mta prepare [NAME ...]"


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "prepare":
        print(USAGE, file=sys.stderr)
        return 2
    try:
        found = adapters()
        for name in argv[1:] or list(found):
            if name not in found:
                raise HarnessError(f"{name}: no such MTA adapter (known: {', '.join(found)})")
            prepare(name, found[name])
    except HarnessError as exc:
        print(f"harness.mta: error: {exc}", file=sys.stderr)
        return 2
    return 0


def prepare(name: str, adapter: type[MtaAdapter]) -> None:
    adapter.prepare()
    trees = ", ".join(str(debs.unpacked(p)) for p in adapter.packages)
    debian = adapter.package_version()
    print(f"{name} {adapter.version()} (Debian {debian}): ready ({trees})")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
