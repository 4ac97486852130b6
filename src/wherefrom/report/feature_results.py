"""Feature-attribution results shown by the report: CD unit scores, the ACD hierarchy and optional baselines.

    entry = explain_input(model, x, target=1, labels=words, baselines=True)   # one input, a JSON-able dict
    FeatureResults(entries, config).save("out")                               # out/features.json
    FeatureResults.load("out")                                                # what the panels read

For one input ``x`` (a batch of one: token ids ``[1, T]`` or an image ``[1, (C,) H, W]``) and a target class ``c``
the *units* are the words, or the ``b × b`` pixel blocks (grid ``[⌈H/b⌉, ⌈W/b⌉]``). Every score reads the logits
``s`` of the model; with ``contrast`` (the text default, as in :func:`wherefrom.features.acd`) the score of a part is
``s_c − mean_{k≠c} s_k`` of that part, otherwise ``s_c``. Positive = supports class ``c``.

- ``cd``: ``[*grid]``, the CD score of every unit alone: ``β_L`` of ``wf.features.cd(model, x, mask_u)`` for the
  one-unit masks ``mask_u`` (one vectorised pass), read through the score above.
- ``hierarchy``: :meth:`wherefrom.features.Hierarchy.to_dict` of ``wf.features.acd(model, x, c, ...)``.
- ``baselines`` (optional): ``[*grid]`` each, with the same output and contrast: integrated gradients (logits,
  zero baseline: zero embeddings for tokens), gradient × input, and occlusion of each unit alone
  (``F(x) − F(x with the unit set to 0)``; token id 0 for text). Pixel attributions are summed over channels and
  blocks.

``wherefrom report DIR`` re-renders from ``features.json`` alone (no model, no data).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wherefrom.errors import WherefromError
from wherefrom.features import (
    Hierarchy,
    Level,
    acd,
    block_masks,
    block_sum,
    cd,
    gradient_times_input,
    integrated_gradients,
    occlusion,
    span_masks,
)
from wherefrom.features.acd import TEXT_DEFAULTS
from wherefrom.features.propagate import is_token_input
from wherefrom.features.scoring import contrast_scores
from wherefrom.report.errors import ResultsError

FEATURES_FILE = "features.json"
FEATURES_FORMAT = 1
BASELINES = ("integrated-gradients", "gradient-x-input", "occlusion")
BASELINE_TITLES = {"integrated-gradients": "Integrated gradients", "gradient-x-input": "Gradient × input",
                   "occlusion": "Occlusion"}


def unit_masks(x: Tensor, block_size: int = 1) -> Tensor:
    """One mask per unit, broadcastable to ``x`` with a leading mask dimension: ``[T, 1, T]`` or ``[K, 1, 1, H, W]``."""
    if is_token_input(x):
        t = x.shape[-1]
        return torch.eye(t, dtype=torch.get_default_dtype(), device=x.device).reshape(t, *([1] * (x.dim() - 1)), t)
    h, w = x.shape[-2:]
    masks = block_masks(h, w, block_size).to(device=x.device, dtype=x.dtype)
    return masks.reshape(masks.shape[0], *([1] * (x.dim() - 2)), h, w)


def cd_unit_scores(model: nn.Module, x: Tensor, target: int, block_size: int = 1,
                   contrast: bool = False) -> np.ndarray:
    """CD score of every unit alone, float64 ``[*grid]`` (see the module docstring)."""
    rel, _ = cd(model, x, unit_masks(x, block_size))               # [K, 1, n_classes]
    scores = contrast_scores(rel[:, 0].double(), target, contrast)
    grid = (x.shape[-1],) if is_token_input(x) else tuple(-(-s // block_size) for s in x.shape[-2:])
    return scores.detach().cpu().numpy().reshape(grid)


def baseline_scores(model: nn.Module, x: Tensor, target: int, block_size: int = 1, contrast: bool = False,
                    ig_steps: int = 32) -> dict[str, np.ndarray]:
    """Integrated gradients, gradient × input and occlusion per unit, float64 ``[*grid]`` each."""
    text = is_token_input(x)
    ig = integrated_gradients(model, x, target, steps=ig_steps, output="logit", contrast=contrast)
    gxi = gradient_times_input(model, x, target, output="logit", contrast=contrast)
    if text:
        masks = span_masks(x.shape[-1], 1).to(x.device).reshape(x.shape[-1], *([1] * (x.dim() - 1)), x.shape[-1])
    else:
        masks = unit_masks(x, block_size)
    occ = occlusion(model, x, target, masks, output="logit", contrast=contrast)[:, 0]

    def units(a: Tensor) -> np.ndarray:
        a = a.detach().double()
        return (a[0] if text else block_sum(a, block_size)[0]).cpu().numpy()

    grid = units(ig).shape
    return {"integrated-gradients": units(ig), "gradient-x-input": units(gxi),
            "occlusion": occ.detach().double().cpu().numpy().reshape(grid)}


def explain_input(model: nn.Module, x: Tensor, target: int | None = None, *, method: str = "cd",
                  block_size: int = 1, percentile: float | None = None, num_iters: int | None = None,
                  labels: list[str] | None = None, baselines: bool = False, ig_steps: int = 32) -> dict[str, Any]:
    """CD unit scores, the ACD hierarchy (and baselines) of ``model`` on one input, as a JSON-able dict."""
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] != 1:
        raise WherefromError("explain_input takes one input with a batch dimension of 1.")
    text = is_token_input(x)
    if target is None:
        with torch.no_grad():
            target = int(model(x)[0].argmax())
    target = int(target)
    contrast = bool(TEXT_DEFAULTS["contrast"]) if text else False
    h = acd(model, x, target, method=method, block_size=block_size, percentile=percentile, num_iters=num_iters,
            contrast=contrast, labels=labels, progress=False)
    entry: dict[str, Any] = {
        "kind": "text" if text else "image", "target": target, "contrast": contrast, "block_size": block_size,
        "cd": cd_unit_scores(model, x, target, block_size, contrast).tolist(), "hierarchy": h.to_dict(),
        "words": list(labels) if labels is not None else None, "baselines": None,
    }
    if baselines:
        entry["baselines"] = {k: v.tolist() for k, v in
                              baseline_scores(model, x, target, block_size, contrast, ig_steps).items()}
    return entry


def hierarchy_from_dict(d: dict[str, Any]) -> Hierarchy:
    """Rebuild a :class:`~wherefrom.features.Hierarchy` from :meth:`~wherefrom.features.Hierarchy.to_dict`."""
    def floats(a: Any) -> np.ndarray | None:
        return None if a is None else np.array(a, dtype=object).astype(float)  # None -> NaN

    levels = [Level(np.array(lv["selected"], dtype=bool), np.array(lv["components"], dtype=np.int64),
                    {int(k): float(v) for k, v in lv["scores"].items()}, floats(lv["unit_scores"]), lv["kind"])
              for lv in d["levels"]]
    unit_scores = floats(d["unit_scores"])
    assert unit_scores is not None
    return Hierarchy(levels, unit_scores, float(d["full_score"]), d.get("method", "cd"), d.get("target"),
                     int(d.get("block_size", 1)), d.get("labels"), None, dict(d.get("params") or {}))


@dataclass
class FeatureResults:
    """The explained inputs of one ``wherefrom features`` run and its configuration."""

    entries: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/features.json`` (atomically) and return its path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (FEATURES_FILE + ".tmp")
        tmp.write_text(json.dumps({"format": FEATURES_FORMAT, "config": self.config, "entries": self.entries},
                                  default=str))
        os.replace(tmp, d / FEATURES_FILE)
        return d / FEATURES_FILE

    @classmethod
    def load(cls, directory: str | os.PathLike) -> FeatureResults | None:
        """Read ``directory/features.json``; None when there is none, :class:`ResultsError` when it is corrupt."""
        path = Path(directory) / FEATURES_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ResultsError(f"{os.fspath(path)!r} is not readable JSON ({exc}). Run `wherefrom features` "
                               "again.") from exc
        if not isinstance(raw, dict) or raw.get("format") != FEATURES_FORMAT or not isinstance(
                raw.get("entries"), list):
            raise ResultsError(f"{os.fspath(path)!r} is not a `wherefrom features` result of this version (format "
                               f"{raw.get('format') if isinstance(raw, dict) else '?'}, expected {FEATURES_FORMAT}).")
        return cls(raw["entries"], raw.get("config") or {})

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The entries of one kind: ``"text"`` or ``"image"``."""
        return [e for e in self.entries if e.get("kind") == kind]
