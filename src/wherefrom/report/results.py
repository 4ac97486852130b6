"""Saved results of ``wherefrom attribute``: what ``wherefrom report DIR`` re-renders without recomputing.

A results folder holds

- ``results.json``: the configuration (method, options, spec, test indices, k, library and torch versions), the
  test labels and predictions, timings, and a ``key`` that says which inputs produced the results;
- ``scores.safetensors``: ``scores`` ``[n_train, m]`` for the ``m`` selected test examples (positive = helpful);
- ``topk.safetensors``: ``helpful_indices``, ``helpful_values``, ``harmful_indices``, ``harmful_values``, each
  ``[m, k]`` (training indices sorted by decreasing / increasing score);
- ``extras.safetensors``: ``self_influence`` ``[n_train]`` and ``train_labels`` ``[n_train]`` when available;
- ``examples.json``: the views (thumbnails, tokens, rows) of every example the report shows;
- ``report.html``, and optionally ``bench/*.json`` (``wherefrom bench`` results shown in the report).

``results.json`` is written last, so a folder whose run was interrupted is not mistaken for a complete one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wherefrom.report.errors import ResultsError
from wherefrom.store import TopK

FORMAT = 1
RESULTS_JSON = "results.json"
SCORES_FILE = "scores.safetensors"
TOPK_FILE = "topk.safetensors"
EXTRAS_FILE = "extras.safetensors"
EXAMPLES_FILE = "examples.json"
REPORT_FILE = "report.html"
BENCH_DIR = "bench"


@dataclass
class AttributionResults:
    """Scores, top-k, self-influence and example views of one ``wherefrom attribute`` run."""

    config: dict[str, Any]
    scores: torch.Tensor
    top: TopK
    self_influence: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None
    views: dict[str, dict[int, dict[str, Any]]] = field(default_factory=lambda: {"train": {}, "test": {}})

    def save(self, directory: str | os.PathLike) -> None:
        """Write the files listed in the module docstring (``results.json`` last)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({"scores": self.scores.detach().cpu().contiguous()}, d / SCORES_FILE)
        save_file({name: getattr(self.top, name).detach().cpu().contiguous()
                   for name in ("helpful_indices", "helpful_values", "harmful_indices", "harmful_values")},
                  d / TOPK_FILE)
        extras = {name: t.detach().cpu().contiguous() for name, t in
                  (("self_influence", self.self_influence), ("train_labels", self.train_labels)) if t is not None}
        save_file(extras or {"empty": torch.zeros(0)}, d / EXTRAS_FILE)
        views = {part: {str(i): v for i, v in sorted(items.items())} for part, items in self.views.items()}
        (d / EXAMPLES_FILE).write_text(json.dumps(views))
        config = dict(self.config, format=FORMAT)
        tmp = d / (RESULTS_JSON + ".tmp")
        tmp.write_text(json.dumps(config, indent=2, default=str))
        os.replace(tmp, d / RESULTS_JSON)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AttributionResults:
        """Read a results folder; :class:`ResultsError` when it is missing, incomplete or corrupt."""
        d = Path(directory)
        config = read_config(d)
        if config is None:
            raise ResultsError(f"{os.fspath(d)!r} holds no {RESULTS_JSON}: run `wherefrom attribute SPEC --out "
                               f"{os.fspath(d)}` first.")
        try:
            scores = load_file(d / SCORES_FILE)["scores"]
            t = load_file(d / TOPK_FILE)
            top = TopK(t["helpful_indices"], t["helpful_values"], t["harmful_indices"], t["harmful_values"])
            extras = load_file(d / EXTRAS_FILE)
            raw_views = json.loads((d / EXAMPLES_FILE).read_text())
        except (OSError, KeyError, SafetensorError, json.JSONDecodeError) as exc:
            raise ResultsError(f"The results in {os.fspath(d)!r} are incomplete or corrupt ({type(exc).__name__}: "
                               f"{exc}). Run `wherefrom attribute` again with this --out.") from exc
        views = {part: {int(i): v for i, v in items.items()} for part, items in raw_views.items()}
        m = len(config.get("test_indices", []))
        if scores.ndim != 2 or scores.shape[1] != m or top.helpful_indices.shape[0] != m:
            raise ResultsError(f"The results in {os.fspath(d)!r} are inconsistent: scores {tuple(scores.shape)} and "
                               f"top-k {tuple(top.helpful_indices.shape)} for {m} test examples.")
        return cls(config, scores, top, extras.get("self_influence"), extras.get("train_labels"), views)


def read_config(directory: str | os.PathLike) -> dict[str, Any] | None:
    """``results.json`` of ``directory`` as a dict, or None when there is none."""
    path = Path(directory) / RESULTS_JSON
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{os.fspath(path)!r} is not valid JSON ({exc}). Run `wherefrom attribute` again.") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ResultsError(f"{os.fspath(path)!r} was written by another version of wherefrom (format "
                           f"{config.get('format') if isinstance(config, dict) else '?'}, expected {FORMAT}).")
    return config


def is_bench_result(data: Any) -> bool:
    """Whether a parsed JSON document looks like the output of ``wherefrom bench``."""
    return isinstance(data, dict) and isinstance(data.get("rows"), list) and isinstance(data.get("setting"), dict)


def find_bench_results(directory: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """``(file name, data)`` of every ``wherefrom bench`` JSON in ``directory`` and ``directory/bench``, sorted."""
    found = []
    for folder in (Path(directory), Path(directory) / BENCH_DIR):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            if path.name == RESULTS_JSON:
                continue
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if is_bench_result(data):
                found.append((path.name, data))
    return found
