"""Errors a user can act on.

Rule: anything caused by bad input (a file, a key, a value, an offset) or by the machine
(missing privilege, a tool not installed) is raised as ``HarnessError`` with a one-line
message that names the culprit.  The CLI prints it as ``smtp-harness: error: ...`` and
exits 2; it never shows a traceback for these.
"""


class HarnessError(Exception):
    """A one-line, user-facing error (bad input or an unusable machine)."""


class LabError(HarnessError):
    """The lab could not be built, entered or removed."""
