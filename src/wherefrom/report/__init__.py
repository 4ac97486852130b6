"""See explanations: ``wherefrom attribute`` for your own model and a self-contained HTML report.

    from wherefrom.report import Spec, render_report
    def spec():                      # in my_spec.py; then: wherefrom attribute my_spec.py --method ekfac
        return Spec(model=model, train=train, test=test, class_names=names)

See ``docs/report.md`` for the spec protocol, the saved files, the panels and the exit codes.
"""

from wherefrom.report.errors import (
    ExitCode,
    ReportError,
    ResultsError,
    SpecFailedError,
    SpecInvalidError,
    SpecNotFoundError,
    UsageError,
)
from wherefrom.report.panels import Panel, register_panel
from wherefrom.report.render import render_report
from wherefrom.report.results import AttributionResults
from wherefrom.report.spec import Spec, load_spec

__all__ = [
    "AttributionResults",
    "ExitCode",
    "Panel",
    "ReportError",
    "ResultsError",
    "Spec",
    "SpecFailedError",
    "SpecInvalidError",
    "SpecNotFoundError",
    "UsageError",
    "load_spec",
    "register_panel",
    "render_report",
]
