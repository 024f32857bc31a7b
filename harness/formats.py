"""Formats that last: the files other tools keep and read, each with a ``schema_version``.

Rules kept here:
- Each format (``Format``) has the one version this release writes (``WRITES``) and the
  versions it reads (``READS``).  A change to a format is a new version, and a line in
  CHANGELOG.md under that format's heading.
- A file of a version this release does not read is a ``HarnessError`` (bad input, exit 2)
  naming the file, the key and the versions it reads: never a misreading.  A version is an
  integer (a bool or a string is not one).
- ``read_json`` reads a JSON format's file: a JSON object of a version this release reads,
  or one line naming the file.
- A file without the key was written before formats had versions, in version 1's shape:
  it is read as version 1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

KEY = "schema_version"


class Format(StrEnum):
    RUN = "run.json"
    MATRIX = "matrix.json"
    LADDER = "JSON ladder"
    SCENARIO = "scenario"


WRITES: dict[Format, int] = {
    Format.RUN: 1,
    Format.MATRIX: 1,
    Format.LADDER: 1,
    Format.SCENARIO: 1,
}
READS: dict[Format, frozenset[int]] = {fmt: frozenset({1}) for fmt in Format}
UNVERSIONED = 1  # the version of a file written before versions
SHOWN = 40  # at most this much of a bad version in an error


def version_of(data: Mapping[str, Any], fmt: Format, where: str) -> int:
    """The ``schema_version`` of ``data`` (a parsed file of format ``fmt``), if this release
    reads it; else one line naming ``where``."""
    version = data.get(KEY, UNVERSIONED)
    if type(version) is int and version in READS[fmt]:
        return version
    reads = ", ".join(str(v) for v in sorted(READS[fmt]))
    shown = json.dumps(version, default=repr, ensure_ascii=True)
    shown = shown if len(shown) <= SHOWN else shown[: SHOWN - 3] + "..."
    raise HarnessError(
        f"{where}: {KEY} {shown}: this release of smtp-harness reads {fmt} version "
        f"{reads} (see CHANGELOG.md)"
    )


def read_json(path: Path, fmt: Format) -> dict:
    """The JSON object in the file at ``path``, a file of format ``fmt`` in a version this
    release reads; else one line naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # not UTF-8, or not JSON
        raise HarnessError(f"{path}: not a {fmt}: {exc}") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: not a {fmt}: not a JSON object")
    version_of(data, fmt, str(path))
    return data
