"""Render a results folder into ONE self-contained HTML file (inline CSS and images, no script, no network).

    from wherefrom.report.render import render_report
    path = render_report("out")        # out/report.html from out/results.json, scores, top-k, examples, bench/*.json

Templates are jinja2 files shipped in ``wherefrom/report/templates`` with autoescaping on, so every user string
(labels, class names, file names, tokens) is shown as text.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

import wherefrom
from wherefrom.report.errors import ResultsError, UsageError
from wherefrom.report.feature_results import FEATURES_FILE, FeatureResults
from wherefrom.report.panels import panels
from wherefrom.report.results import (
    BENCH_DIR,
    REPORT_FILE,
    AttributionResults,
    find_bench_results,
    is_bench_result,
    read_config,
)


@dataclass
class ReportData:
    """What panels read: the attribution results (or None) and the ``wherefrom bench`` results of a folder."""

    directory: Path
    attribution: AttributionResults | None
    bench: list[tuple[str, dict[str, Any]]]

    @property
    def config(self) -> dict[str, Any]:
        return self.attribution.config if self.attribution is not None else {}

    def label_text(self, label: Any) -> str:
        """``class_names[label]`` (with the number) for an integer label; the value itself otherwise."""
        if label is None:
            return "—"
        names = self.config.get("class_names")
        if isinstance(label, int) and names and 0 <= label < len(names):
            return f"{names[label]}"
        return f"{label:.4g}" if isinstance(label, float) else str(label)


def load_report_data(directory: str | os.PathLike) -> ReportData:
    """Read a results folder; :class:`ResultsError` when it holds neither attribution nor bench results."""
    d = Path(directory)
    if not d.is_dir():
        raise ResultsError(f"{os.fspath(d)!r} is not a folder: give the --out folder of `wherefrom attribute` or "
                           "of `wherefrom bench`.")
    attribution = AttributionResults.load(d) if read_config(d) is not None else None
    bench = find_bench_results(d)
    if attribution is None and not bench and not (d / FEATURES_FILE).is_file():
        raise ResultsError(f"{os.fspath(d)!r} holds no results.json, no {FEATURES_FILE} and no `wherefrom bench` JSON: "
                           f"run `wherefrom attribute SPEC --out {os.fspath(d)}` (or `wherefrom features`, "
                           "`wherefrom bench ... --out`) first.")
    return ReportData(d, attribution, bench)


def add_bench_files(directory: str | os.PathLike, files: list[str]) -> None:
    """Copy ``wherefrom bench`` JSON files into ``directory/bench`` so every later render shows them."""
    target = Path(directory) / BENCH_DIR
    for f in files:
        try:
            data = json.loads(Path(f).read_text())
        except FileNotFoundError as exc:
            raise UsageError(f"--bench {f!r}: no such file.") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"--bench {f!r} is not readable JSON ({exc}).") from exc
        if not is_bench_result(data):
            raise UsageError(f"--bench {f!r} is not a `wherefrom bench` result (it needs 'setting' and 'rows').")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target / Path(f).name)


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The jinja2 environment over the shipped templates (autoescape on, undefined names are errors)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("wherefrom.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["basename"] = os.path.basename
    env.filters["signed"] = lambda v: f"{v:+.3g}"
    env.filters["num"] = lambda v, fmt=".3g": "—" if v is None or v != v else format(v, fmt)  # v != v: NaN
    return env


def _untitled(directory: Path) -> str:
    """The title of a report without attribution results: the features run's spec name, or a generic one."""
    features = FeatureResults.load(directory)
    if features is None:
        return "wherefrom bench results"
    return (features.config.get("spec") or {}).get("name") or "wherefrom: feature attribution"


def render_html(data: ReportData) -> str:
    """The report page of ``data``: every panel with something to show, in order."""
    env = environment()
    sections = []
    for panel in panels():
        context = panel.build(data)
        if context is None:
            continue
        html = env.get_template(panel.template).render(data=data, **context)
        sections.append({"name": panel.name, "title": context.get("title", panel.title), "html": Markup(html)})
    config = data.config
    spec = config.get("spec") or {}
    title = spec.get("name") or (f"wherefrom: {config['method']}" if config else _untitled(data.directory))
    return env.get_template("report.html.j2").render(
        title=title, config=config, sections=sections, version=wherefrom.__version__,
        folder=data.directory.name,
    )


def render_report(directory: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Render ``directory``'s saved results to ``out`` (default ``directory/report.html``) and return its path."""
    data = load_report_data(directory)
    path = Path(out) if out is not None else Path(directory) / REPORT_FILE
    html = render_html(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
