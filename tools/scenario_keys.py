"""Write (or, with --check, compare) the README's table of scenario keys.

Rules kept here:
- The table is ``harness.scenario.schema_markdown()``, rendered from the schema itself; the
  README holds it between ``<!-- scenario-keys:start -->`` and ``<!-- scenario-keys:end -->``
  and nothing else there is kept.
- ``--check`` changes nothing: exit 0 when the README's table is the schema's, 1 (with the
  command that fixes it) when it differs; a README without both markers is exit 2.

Usage: .venv/bin/python tools/scenario_keys.py [--check] [README]
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.scenario import schema_markdown
from harness.verdict import ExitCode

START, END = "<!-- scenario-keys:start -->", "<!-- scenario-keys:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def with_table(text: str, where: str) -> str:
    """``text`` with the schema's table between the markers (exit 2 without them)."""
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not (start and end):
        print(f"{where}: no {START} ... {END} markers", file=sys.stderr)
        sys.exit(ExitCode.BAD_INPUT)
    return f"{head}{START}\n{schema_markdown()}{END}{tail}"


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    readme = Path(paths[0]) if paths else README
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"{readme}: cannot read: {exc.strerror}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    wanted = with_table(text, str(readme))
    if wanted == text:
        return 0
    if check:
        print(f"{readme}: the table of scenario keys differs from the schema "
              f"(run: .venv/bin/python tools/scenario_keys.py {readme})")  # fmt: skip
        return 1
    readme.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
