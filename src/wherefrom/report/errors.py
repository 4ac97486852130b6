"""Errors of ``wherefrom attribute`` / ``wherefrom report`` and the exit code each one gives on the command line.

| exit code | meaning |
|---|---|
| 0 | success |
| 2 | bad command-line usage: unknown method, bad ``--test`` range, bad ``--option`` (also typer's own usage errors) |
| 3 | the spec cannot be found: missing file, module or function |
| 4 | the spec's own code raised an exception |
| 5 | the spec returned something that is not a spec (wrong type, missing or wrong fields) |
| 6 | attribution failed on the spec's model or data (an error while fitting or scoring) |
| 7 | ``wherefrom report DIR``: DIR holds no saved results, or they are incomplete or corrupt |
"""

from __future__ import annotations

from enum import IntEnum

from wherefrom.errors import WherefromError


class ExitCode(IntEnum):
    """Process exit codes of the ``attribute`` and ``report`` commands (documented in ``docs/report.md``)."""

    OK = 0
    USAGE = 2
    SPEC_NOT_FOUND = 3
    SPEC_FAILED = 4
    SPEC_INVALID = 5
    ATTRIBUTION_FAILED = 6
    RESULTS_INVALID = 7


class ReportError(WherefromError):
    """Base class of the errors of the report front; ``exit_code`` is the command-line exit status."""

    exit_code: ExitCode = ExitCode.ATTRIBUTION_FAILED


class UsageError(ReportError):
    """A command-line value is wrong (unknown method, bad test range, bad option)."""

    exit_code = ExitCode.USAGE


class SpecNotFoundError(ReportError):
    """The spec file, module or function does not exist."""

    exit_code = ExitCode.SPEC_NOT_FOUND


class SpecFailedError(ReportError):
    """The spec's code raised an exception while it was imported or called."""

    exit_code = ExitCode.SPEC_FAILED


class SpecInvalidError(ReportError):
    """The spec returned something that is not a valid spec."""

    exit_code = ExitCode.SPEC_INVALID


class ResultsError(ReportError):
    """A results folder holds no saved results, or they are incomplete or corrupt."""

    exit_code = ExitCode.RESULTS_INVALID


def exit_code_of(exc: BaseException) -> ExitCode:
    """The exit code for an error raised by the report front (6 for any other :class:`WherefromError`)."""
    if isinstance(exc, ReportError):
        return exc.exit_code
    return ExitCode.ATTRIBUTION_FAILED
