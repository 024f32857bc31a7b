"""The README against what it describes: the table of scenario keys against the schema, the
fixtures example against the plugin (it is run)."""

from __future__ import annotations

import subprocess

import pytest
from conftest import PYTHON, ROOT

from harness import scenario
from harness.scenario import SCHEMA, Key, schema_markdown

README = ROOT / "README.md"
TOOL = ROOT / "tools" / "scenario_keys.py"


def between(text: str, name: str) -> str:
    """The README's text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""
    return text.split(f"<!-- {name}:start -->\n")[1].split(f"<!-- {name}:end -->")[0]


def test_readme_lists_every_scenario_key_as_the_schema_does() -> None:
    """Issue 13: writing a test took a trip into the scenario SCHEMA.  The README's table is
    the schema's, rendered (regenerate: tools/scenario_keys.py)."""
    table = between(README.read_text(encoding="utf-8"), "scenario-keys")
    assert table == schema_markdown()
    keys = {line.split("`")[1] for line in table.splitlines()[2:]}
    assert keys >= {f"{section}.{key}" for section, spec in SCHEMA.items() for key in spec}
    assert {"hosts.name", "hosts.ipv4", "hosts.ipv6", "hosts.fqdn"} <= keys


def test_a_key_added_to_the_schema_is_a_difference_from_the_readme(monkeypatch) -> None:
    """The comparison above can fail: a key the README does not list makes the tables
    differ, and `tools/scenario_keys.py --check` says so (exit 1)."""
    table = between(README.read_text(encoding="utf-8"), "scenario-keys")
    extended = {**SCHEMA, "sender": {**SCHEMA["sender"], "pipelining": Key(bool, False)}}
    monkeypatch.setattr(scenario, "SCHEMA", extended)
    drifted = schema_markdown()
    assert drifted != table
    assert "| `sender.pipelining` | true or false | `false` |  |" in drifted.splitlines()


@pytest.mark.parametrize(
    ("edit", "code", "said"),
    [
        (lambda text: text, 0, ""),
        (lambda text: text.replace("| `sender.ehlo` |", "| `sender.ehl0` |"), 1, "differs"),
        (lambda text: text.replace("<!-- scenario-keys:end -->", ""), 2, "no <!--"),
    ],
    ids=["same", "drifted", "no markers"],
)
def test_scenario_keys_check_exit_codes(tmp_path, edit, code, said) -> None:
    copy = tmp_path / "README.md"
    copy.write_text(edit(README.read_text(encoding="utf-8")), encoding="utf-8")
    before = copy.read_text(encoding="utf-8")
    done = subprocess.run(
        [PYTHON, str(TOOL), "--check", str(copy)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == code, done.stdout + done.stderr
    assert said in done.stdout + done.stderr
    assert copy.read_text(encoding="utf-8") == before  # --check changes nothing


@pytest.mark.parametrize(
    ("argv", "code", "said"),
    [(["--help"], 0, "Usage:"), (["--check", "/nonexistent/README.md"], 2, "cannot read")],
    ids=["help", "missing README"],
)
def test_scenario_keys_tool_help_and_a_missing_file(argv, code, said) -> None:
    """--help prints the usage, and a README that is not there is one line, exit 2 (it was a
    traceback: the tool took --help for a path)."""
    done = subprocess.run([PYTHON, str(TOOL), *argv], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == code and said in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.lab
def test_the_readme_fixtures_example_passes(pytester) -> None:
    """The three tests of the README's "pytest plugin" section, run as a user would, from a
    folder holding pcaps/ as the repository's root does."""
    code = between(README.read_text(encoding="utf-8"), "fixtures-example")
    code = code.removeprefix("```python\n").removesuffix("```\n")
    pytester.makepyfile(test_example=code)
    (pytester.path / "pcaps").symlink_to(ROOT / "pcaps")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
