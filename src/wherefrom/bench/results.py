"""Results of ``wherefrom bench``: one row per method, the markdown table, strict JSON and what the run ran on.

The JSON is strict (RFC 8259): a missing or undefined number is ``null``, never ``NaN``; every file is written
atomically (a temporary file renamed over the old one), so a run killed while writing leaves the previous version.

Layout of ``<out>/<stem>.json``::

    {"run":          {"status": "running" | "complete" | "failed" | "interrupted", "started", "finished",
                      "command", "failures": [...]},
     "versions":     {"wherefrom", "torch", "numpy", "python"},
     "machine":      {"platform", "cpu", "cpus", "torch_threads", "memory_gb", "accelerator"},
     "setting":      the setting's spec,  "metrics": [...],  "options": {...},
     "ground_truth": {"loo": {"build_s", "compute_s", "load_s", ...}, ...},
     "rows":         [{"method", "key", "options", "ensemble_size", "fit_s", "score_s", "metric_s", "peak_mb",
                       "metrics", "metric_errors", "error", "started", "finished", "resumed"}, ...]}
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (``2025-01-31T12:00:00+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def strict(obj: Any) -> Any:
    """``obj`` made JSON-safe: NaN/±inf → ``None``, numpy scalars/arrays → Python, tuples → lists, else ``str``."""
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def dumps_strict(obj: Any) -> str:
    """Strict JSON text of ``obj`` (``allow_nan=False`` after :func:`strict`)."""
    return json.dumps(strict(obj), indent=2, allow_nan=False)


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def environment() -> dict[str, dict]:
    """Library versions and the machine a run ran on."""
    import torch

    import wherefrom

    accel = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "versions": {"wherefrom": wherefrom.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "memory_gb": _memory_gb(), "accelerator": accel},
    }


@dataclass
class MethodResult:
    """One row of the results table.

    ``error`` is set when building, fitting or scoring the method failed (then no metric exists); a metric that
    failed on its own is in ``metric_errors`` and the others are kept. Times in seconds (``nan``: not measured).
    """

    method: str
    fit_s: float = math.nan
    score_s: float = math.nan
    peak_mb: float = math.nan
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    metric_errors: dict[str, str] = field(default_factory=dict)
    metric_s: float = math.nan
    options: dict[str, Any] = field(default_factory=dict)
    ensemble_size: int | None = None
    key: str = ""
    started: str | None = None
    finished: str | None = None
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.metric_errors

    def value(self, name: str) -> float:
        v = self.metrics.get(name)
        if isinstance(v, dict) and v.get("value") is not None:
            return float(v["value"])
        return math.nan

    def not_applicable(self, name: str) -> str | None:
        """Why metric entry ``name`` does not apply to this method (e.g. no self-influence), else ``None``."""
        v = self.metrics.get(name)
        return v.get("not_applicable") if isinstance(v, dict) else None

    def failures(self) -> list[str]:
        """``"method: error"`` or ``"method (metric m): error"`` for everything that failed in this row."""
        if self.error is not None:
            return [f"{self.method}: {_first_line(self.error)}"]
        return [f"{self.method} (metric {m}): {_first_line(e)}" for m, e in self.metric_errors.items()]

    def to_dict(self) -> dict:
        return {"method": self.method, "key": self.key, "options": self.options,
                "ensemble_size": self.ensemble_size, "fit_s": self.fit_s, "score_s": self.score_s,
                "metric_s": self.metric_s, "peak_mb": self.peak_mb, "metrics": self.metrics,
                "metric_errors": self.metric_errors, "error": self.error, "started": self.started,
                "finished": self.finished, "resumed": self.resumed}

    @classmethod
    def from_dict(cls, d: dict) -> MethodResult:
        def num(x):
            return math.nan if x is None else float(x)

        return cls(d["method"], num(d.get("fit_s")), num(d.get("score_s")), num(d.get("peak_mb")),
                   dict(d.get("metrics") or {}), d.get("error"), dict(d.get("metric_errors") or {}),
                   num(d.get("metric_s")), dict(d.get("options") or {}), d.get("ensemble_size"), d.get("key", ""),
                   d.get("started"), d.get("finished"), bool(d.get("resumed", False)))


def _first_line(text: str, width: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= width else line[: width - 1] + "…"


@dataclass
class BenchResult:
    """All rows of a benchmark run plus what it ran on (``run``: status and times; ``env``: versions, machine)."""

    setting: dict
    metrics: list[str]
    rows: list[MethodResult]
    ground_truth: dict
    options: dict
    run: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    COLUMNS: ClassVar = (("fit s", "fit_s"), ("score s", "score_s"), ("peak MB", "peak_mb"))
    METRIC_COLUMNS: ClassVar = {"loo": [("LOO P", "loo_pearson"), ("LOO S", "loo_spearman")],
                                "lds": [("LDS", "lds")], "auc": [("AUC", "auc")],
                                "brittle": [("brittle k", "brittle_mean_k")]}
    METRIC_OF: ClassVar = {key: m for m, cols in METRIC_COLUMNS.items() for _, key in cols}

    # ------------------------------------------------------------------ table
    def columns(self) -> list[tuple[str, str]]:
        cols = list(self.COLUMNS)
        for m in self.metrics:
            cols += self.metric_columns(m)
        return cols

    def metric_columns(self, metric: str) -> list[tuple[str, str]]:
        """Columns of one metric: one LDS column per kept fraction ``α`` (key ``lds@α``) when several were measured."""
        fractions = self.ground_truth.get("lds", {}).get("fractions", [])
        if metric == "lds" and len(fractions) > 1:
            return [(f"LDS α={f:g}", f"lds@{f:g}") for f in fractions]
        return self.METRIC_COLUMNS[metric]

    @classmethod
    def metric_of(cls, key: str) -> str | None:
        """The metric a column key belongs to (``lds@0.99`` → ``lds``; ``None`` for resource columns)."""
        return "lds" if key.startswith("lds@") else cls.METRIC_OF.get(key)

    def header(self) -> str:
        """The two header lines of the markdown table."""
        cols = self.columns()
        return "| method | " + " | ".join(c for c, _ in cols) + " |\n" + "|---" * (len(cols) + 1) + "|"

    def row_line(self, r: MethodResult) -> str:
        """One markdown table line (``failed`` in a metric's cell when that metric failed)."""
        cells = []
        for _, key in self.columns():
            v = getattr(r, key) if hasattr(r, key) else r.value(key)
            if self.metric_of(key) in r.metric_errors:
                cells.append("failed")
            elif r.not_applicable(key):
                cells.append("n/a")
            elif self.metric_of(key) == "lds" and not math.isnan(v):
                ci = r.metrics[key]["ci"]
                cells.append(f"{v:.3f} ± {(ci[1] - ci[0]) / 2:.3f}")
            elif math.isnan(v):
                cells.append("—")
            elif key in ("fit_s", "score_s"):
                cells.append(f"{v:.2f}")
            elif key == "peak_mb":
                cells.append(f"{v:.0f}")
            else:
                cells.append(f"{v:.3f}")
        name = r.method if r.error is None else f"{r.method} (failed: {_first_line(r.error, 60)})"
        return f"| {name} | " + " | ".join(cells) + " |"

    def table(self, fmt: str = "markdown") -> str:
        """The results as a markdown table (method, fit s, score s, peak MB, then the metrics)."""
        return "\n".join([self.header(), *(self.row_line(r) for r in self.rows)])

    def failures(self) -> list[str]:
        """Every failed method and metric, one line each (empty when everything succeeded)."""
        return [f for r in self.rows for f in r.failures()]

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return {"run": {**self.run, "failures": self.failures()}, **self.env, "setting": self.setting,
                "metrics": self.metrics, "options": self.options, "ground_truth": self.ground_truth,
                "rows": [r.to_dict() for r in self.rows]}

    def to_json(self) -> str:
        """Strict JSON (``null`` for missing numbers)."""
        return dumps_strict(self.to_dict())

    def save(self, out_dir: str, stem: str | None = None, chart: bool = True) -> tuple[str, str]:
        """Write ``<stem>.json``, ``<stem>.md`` (the table) and, with ``chart``, ``<stem>.png`` to ``out_dir``."""
        from wherefrom.bench.chart import plot_result

        os.makedirs(out_dir, exist_ok=True)
        stem = stem or self.setting["name"]
        jpath, ppath = os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.png")
        write_atomic(jpath, self.to_json())
        write_atomic(os.path.join(out_dir, f"{stem}.md"), self.table() + "\n")
        if chart:
            tmp = os.path.join(out_dir, f".{stem}.tmp{os.getpid()}.png")
            plot_result(self, tmp)
            os.replace(tmp, ppath)
        return jpath, ppath

    def plot(self, path: str) -> None:
        """The chart (see :func:`wherefrom.bench.chart.plot_result`)."""
        from wherefrom.bench.chart import plot_result

        plot_result(self, path)
