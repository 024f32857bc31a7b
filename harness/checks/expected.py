"""The expected matrix: what each MTA version is known to do, and how a result compares.

Rules kept here:
- The file (fixtures/expected-matrix.toml) is ``[MTA."VERSION".ROLE]`` tables of
  ``"check.id" = { verdict = "...", reason = "one line" }``.  VERSION is a version prefix
  ("3.7" matches 3.7.11; the longest matching prefix wins, "*" matches any); only that one
  table is used.  A cell not listed is expected to pass.
- Validated whole on load: an unknown verdict, a missing reason, an unknown check or role,
  or a check that does not play that role is a one-line ``HarnessError`` naming the key.
- A result that differs from its expectation is an improvement when it ranks higher
  (error < fail < n/a < deviation-known < pass), a regression otherwise; both fail the run.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.checks.base import ROLES, VERDICTS, Check
from harness.errors import HarnessError
from harness.scenario import FIXTURES

DEFAULT_EXPECTED = FIXTURES / "expected-matrix.toml"
CELL_VERDICTS = (*VERDICTS, "error")
RANK = {"error": 0, "fail": 1, "n/a": 2, "deviation-known": 3, "pass": 4}
ANY_VERSION = "*"


@dataclass(frozen=True)
class Entry:
    verdict: str
    reason: str


PASS = Entry("pass", "")

# mta -> version prefix -> role -> check id -> entry
Table = dict[str, dict[str, dict[str, dict[str, Entry]]]]


@dataclass(frozen=True)
class Expected:
    table: Table
    source: str = ""

    def entry(self, mta: str, version: str, role: str, check_id: str) -> Entry:
        versions = self.table.get(mta, {})
        fitting = [v for v in versions if _fits(v, version)]
        if not fitting:
            return PASS
        best = max(fitting, key=lambda v: (v != ANY_VERSION, len(v)))
        return versions[best].get(role, {}).get(check_id, PASS)


def _fits(prefix: str, version: str) -> bool:
    return prefix == ANY_VERSION or version == prefix or version.startswith(prefix + ".")


def difference(expected: str, actual: str) -> str:
    """ "match", "improvement" or "regression"."""
    if expected == actual:
        return "match"
    return "improvement" if RANK[actual] > RANK[expected] else "regression"


def load_expected(path: Path, checks: dict[str, Check]) -> Expected:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such expected-matrix file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise HarnessError(f"{path}: cannot read: {exc}") from None
    try:
        return Expected(_table(data, checks), str(path))
    except HarnessError as exc:
        raise HarnessError(f"{path}: {exc}") from None


def _table(data: dict, checks: dict[str, Check]) -> Table:
    table: Table = {}
    for mta, versions in data.items():
        for version, roles in _tables(versions, mta).items():
            for role, cells in _tables(roles, f"{mta}.{version}").items():
                where = f"{mta}.{version}.{role}"
                if role not in ROLES:
                    raise HarnessError(f"{where}: role must be one of {ROLES}")
                entries = {
                    check_id: _entry(value, f"{where}.{check_id}", checks.get(check_id), role)
                    for check_id, value in _tables(cells, where).items()
                }
                table.setdefault(mta, {}).setdefault(version, {})[role] = entries
    return table


def _tables(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise HarnessError(f"{where}: must be a table")
    return value


def _entry(value: object, where: str, check: Check | None, role: str) -> Entry:
    if check is None:
        raise HarnessError(f"{where}: no such check")
    if role not in check.roles:
        raise HarnessError(f"{where}: the check does not run with the MTA as {role}")
    table = _tables(value, where)
    unknown = set(table) - {"verdict", "reason"}
    if unknown:
        raise HarnessError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    verdict, reason = table.get("verdict"), table.get("reason")
    if verdict not in CELL_VERDICTS:
        raise HarnessError(f"{where}.verdict: {verdict!r} is not one of {CELL_VERDICTS}")
    if not isinstance(reason, str) or not reason.strip() or "\n" in reason:
        raise HarnessError(f"{where}.reason: one non-empty line required")
    return Entry(verdict, reason)
