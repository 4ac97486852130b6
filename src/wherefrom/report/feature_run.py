"""The ``wherefrom features`` pipeline: load a spec, explain test inputs by their features, save ``features.json``.

    opts = FeatureOptions(test="0:3", baselines=True)
    results = run_features("my_spec.py", opts, "out")      # out/features.json; then render_report("out")

Each selected test input (token ids ``[T]`` or an image ``[(C,) H, W]``; the spec's ``input_fn`` or ``batch[0]``)
is explained by :func:`wherefrom.report.feature_results.explain_input` for its target class (the predicted class by
default). Words are spelled by the spec's ``vocabulary`` or ``decode``; images are shown through ``denormalize``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

import wherefrom
from wherefrom.data.loaders import as_loader, collate_indices, dataset_size
from wherefrom.errors import WherefromError
from wherefrom.features.propagate import is_token_input
from wherefrom.features.scoring import METHODS
from wherefrom.progress import track
from wherefrom.report.attribute import _first_tensor, _label_value, _labels_of
from wherefrom.report.errors import ReportError, SpecInvalidError, UsageError
from wherefrom.report.feature_results import FeatureResults, explain_input
from wherefrom.report.options import parse_test_range
from wherefrom.report.spec import Spec, load_spec
from wherefrom.report.views import ViewOptions, _as_image_array, _token_view
from wherefrom.task import default_input_fn


@dataclass
class FeatureOptions:
    """What ``wherefrom features`` computes (the command's options)."""

    test: str | None = None          # None: the first 3 test examples
    target: str = "predicted"        # "predicted", "true" or a class index
    method: str = "cd"               # ACD score: cd, occlusion, build-up
    block_size: int = 1
    percentile: float | None = None
    num_iters: int | None = None
    baselines: bool = False
    ig_steps: int = 32


def _check(opts: FeatureOptions) -> None:
    if opts.method not in METHODS:
        raise UsageError(f"--method {opts.method!r} is not an agglomeration score; choose one of {', '.join(METHODS)}.")
    if opts.block_size < 1:
        raise UsageError(f"--block-size {opts.block_size} must be at least 1.")
    if opts.ig_steps < 2:
        raise UsageError(f"--ig-steps {opts.ig_steps} must be at least 2 (the grid has both endpoints).")
    if opts.percentile is not None and not 0 < opts.percentile <= 100:
        raise UsageError(f"--percentile {opts.percentile} must be in (0, 100].")
    if opts.num_iters is not None and opts.num_iters < 1:
        raise UsageError(f"--num-iters {opts.num_iters} must be at least 1.")
    if opts.target not in ("predicted", "true"):
        try:
            int(opts.target)
        except ValueError as exc:
            raise UsageError(f"--target {opts.target!r}: give 'predicted', 'true' or a class index.") from exc


def _target(opts: FeatureOptions, label: Any, prediction: int, n_classes: int, index: int) -> int:
    if opts.target == "predicted":
        return prediction
    if opts.target == "true":
        if not isinstance(label, int):
            raise UsageError(f"--target true: test example {index} has no integer label; use --target predicted.")
        return label
    target = int(opts.target)
    if not 0 <= target < n_classes:
        raise UsageError(f"--target {target} is out of range for the model's {n_classes} outputs.")
    return target


def _explainable(x: Any) -> bool:
    """Token ids ``[1, T]`` or an image ``[1, (C,) H, W]`` (a batch of one)."""
    if not isinstance(x, torch.Tensor) or x.shape[:1] != (1,):
        return False
    return x.dim() == 2 if is_token_input(x) else x.dim() in (3, 4)


def _display_image(x: torch.Tensor, spec: Spec) -> list[list[float]]:
    """``[H, W]`` grey levels in [0, 1] of one image input (``denormalize`` if given, channels averaged)."""
    pixels = _as_image_array(x.detach().cpu(), spec.denormalize)
    if pixels is None:
        raise SpecInvalidError(f"Cannot show a test input of shape {tuple(x.shape)} as an image.")
    grey = pixels.astype(np.float64) / 255.0
    return (grey.mean(-1) if grey.ndim == 3 else grey).round(4).tolist()


def run_features(source: str, opts: FeatureOptions, out_dir: str,
                 log: Callable[[str], None] = lambda m: None) -> FeatureResults:
    """Explain the selected test inputs of the spec ``source`` and write ``out_dir/features.json``."""
    _check(opts)
    spec = load_spec(source)
    try:
        loader = as_loader(spec.test, what="test")
        n_test = dataset_size(loader)
    except ReportError:
        raise
    except WherefromError as exc:
        raise SpecInvalidError(f"The spec {source!r} cannot be explained: {exc}") from exc
    if n_test == 0:
        raise SpecInvalidError(f"The spec {source!r} has no test examples.")
    indices = parse_test_range(opts.test or f"0:{min(3, n_test)}", n_test)
    model = spec.model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    view = ViewOptions(spec.input_kind, spec.denormalize, spec.vocabulary, spec.decode, spec.feature_names)
    input_fn = spec.input_fn or default_input_fn
    entries = []
    for index in track(indices, "feature attribution", len(indices)):
        batch = collate_indices(loader, [index])
        x = _first_tensor(input_fn(batch))
        if not _explainable(x):
            raise SpecInvalidError(
                f"Test example {index} of {source!r} is not token ids [T] or an image [(C,) H, W] "
                f"(model input of shape {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}); "
                "feature attribution explains those two kinds.")
        x = x.to(device)
        with torch.no_grad():
            logits = model(x)
        logits = getattr(logits, "logits", logits).reshape(1, -1)
        prediction = int(logits[0].argmax())
        label = _label_value(_labels_of(batch), 0)
        target = _target(opts, label, prediction, logits.shape[1], index)
        words = _token_view(x[0].cpu(), view)["tokens"] if is_token_input(x) else None
        if words is not None and len(words) < x.shape[-1]:
            words = None
        entry = explain_input(model, x, target, method=opts.method, block_size=opts.block_size,
                              percentile=opts.percentile, num_iters=opts.num_iters, labels=words,
                              baselines=opts.baselines, ig_steps=opts.ig_steps)
        entry.update(index=index, label=label, prediction=prediction,
                     confidence=float(logits[0].float().softmax(0).max()))
        if entry["kind"] == "image":
            entry["image"] = _display_image(x[0], spec)
        entries.append(entry)
        log(f"explained test example {index} (class {target})")
    config = {"spec": {"source": source, "name": spec.name}, "class_names": spec.class_names,
              "options": asdict(opts), "n_test": n_test, "test_indices": indices,
              "wherefrom_version": wherefrom.__version__, "torch_version": torch.__version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results = FeatureResults(entries, config)
    results.save(out_dir)
    return results
