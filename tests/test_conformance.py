"""The conformance matrix against real MTAs, in CI (issue 8: "CI runs the matrix for Postfix
and at least one more MTA, both roles"): every cell of Postfix and Exim, as sender and as
receiver, plus the reference column, must match fixtures/expected-matrix.toml exactly, and
no cell that passes or is observed may do so without cited steps."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import CLI, ROOT

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("mta", ["harness", "postfix", "exim"])
def test_the_matrix_column_matches_the_expected_file(open_folder, mta) -> None:
    out = open_folder / "matrix"  # real MTAs deliver as their own users: 0755
    done = subprocess.run(
        [*CLI, "matrix", "--mta", mta, "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert " 0 differ from expected" in done.stdout
    cells = json.loads((out / "matrix.json").read_text())["cells"]
    roles = {(c["mta"], c["role"]) for c in cells}
    assert {(mta, "sender"), (mta, "receiver")} <= roles
    for cell in cells:
        if cell["verdict"] in ("pass", "deviation-known", "observed"):
            assert cell["evidence"], f"{cell['mta']}/{cell['role']}/{cell['check']} cites nothing"
        assert cell["verdict"] != "error", cell
