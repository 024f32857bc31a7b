"""Run every benchmark in bench/ (``make bench``); each prints ratios against its peer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    only = set(sys.argv[1:])
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"== {name} ==", flush=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.argv = [str(path)]  # each benchmark parses its own options: give it none
        module.main()
        print(flush=True)


if __name__ == "__main__":
    main()
