"""Report front, unit level: the spec protocol, --test ranges, method aliases, views, heatmap maths, wording."""

import base64
import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from report_specs import BROKEN_IMPORT, TABULAR, write
from wherefrom.report import Spec, SpecFailedError, SpecInvalidError, SpecNotFoundError, UsageError, load_spec
from wherefrom.report.memory import estimate_memory
from wherefrom.report.options import parse_options, parse_test_range, resolve_method
from wherefrom.report.panels import panels
from wherefrom.report.panels.class_heatmap import class_contributions
from wherefrom.report.panels.examples import explain
from wherefrom.report.views import ViewOptions, make_view
from wherefrom.task import Task


# ---------------------------------------------------------------------------------------------- spec loading
def test_spec_forms(tmp_path, monkeypatch):
    path = write(tmp_path, "toy_spec.py", TABULAR)
    s = load_spec(str(path))
    assert isinstance(s, Spec) and isinstance(s.model, nn.Linear) and s.class_names[0] == "low"
    assert load_spec(f"{path}:as_dict").name is None
    assert isinstance(load_spec(f"{path}:as_tuple").model, nn.Linear)
    monkeypatch.chdir(tmp_path)  # package.module:function resolves from the working directory
    monkeypatch.delitem(sys.modules, "toy_spec", raising=False)
    assert load_spec("toy_spec:with_kwargs").name == "default"
    toml = tmp_path / "spec.toml"
    toml.write_text('spec = "toy_spec.py:with_kwargs"\nname = "from toml"\nclass_names = ["x", "y", "z"]\n'
                    '[kwargs]\nname = "ignored by the override"\n')
    s = load_spec(str(toml))
    assert s.name == "from toml" and s.class_names == ["x", "y", "z"]


@pytest.mark.parametrize(("source", "error", "words"), [
    ("missing_file.py", SpecNotFoundError, "does not exist"),
    ("{path}:no_such_function", SpecNotFoundError, "has no function 'no_such_function'"),
    ("no_such_package_xyz.module:spec", SpecNotFoundError, "cannot be found"),
    ("{path}:raises", SpecFailedError, "RuntimeError: checkpoint model.pt is missing"),
    ("{broken}", SpecFailedError, "ImportError"),
    ("{path}:wrong_type", SpecInvalidError, "returned int"),
    ("{path}:wrong_model", SpecInvalidError, "model of type str"),
])
def test_spec_errors_name_the_culprit(tmp_path, source, error, words):
    path = write(tmp_path, "toy_spec.py", TABULAR)
    broken = write(tmp_path, "broken_spec.py", BROKEN_IMPORT)
    with pytest.raises(error, match=None) as info:
        load_spec(source.format(path=path, broken=broken))
    assert words in str(info.value)
    if error is SpecFailedError and "raises" in source:
        assert "toy_spec.py:" in str(info.value)  # the line of the user's code


def test_bad_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("spec = \n")
    with pytest.raises(SpecInvalidError, match="not valid TOML"):
        load_spec(str(bad))
    bad.write_text('spec = "x.py"\ncolour = "red"\n')
    with pytest.raises(SpecInvalidError, match="unknown keys"):
        load_spec(str(bad))


# ---------------------------------------------------------------------------------------------- options
def test_test_ranges():
    assert parse_test_range("0:5", 10) == [0, 1, 2, 3, 4]
    assert parse_test_range("7", 10) == [7]
    assert parse_test_range("0:10:4,1,1", 10) == [0, 4, 8, 1]
    assert parse_test_range("8:", 10) == [8, 9]
    for bad, words in [("0:11", "outside"), ("10", "outside"), ("-1", "outside"), ("a:b", "not a range"),
                       ("5:2", "outside"), ("0:4:0", "step"), (",", "selects no")]:
        with pytest.raises(UsageError, match=words):
            parse_test_range(bad, 10)


def test_method_aliases_and_options():
    known = ["grad-dot", "if-cg", "if-ekfac", "tracin"]
    assert resolve_method("ekfac", known) == "if-ekfac"
    assert resolve_method("EKFAC", known) == "if-ekfac"
    assert resolve_method("cg", known) == "if-cg"
    assert resolve_method("graddot", known) == "grad-dot"
    with pytest.raises(UsageError, match=r"Unknown method 'magic'.*if-ekfac"):
        resolve_method("magic", known)
    assert parse_options(["damping=0.001", "rank=5", "curvature=ggn", "check_curvature=true", "x=none"]) == {
        "damping": 0.001, "rank": 5, "curvature": "ggn", "check_curvature": True, "x": None}
    with pytest.raises(UsageError, match="key=value"):
        parse_options(["damping"])


# ---------------------------------------------------------------------------------------------- views
def _pixels(view):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(view["png"]))))


def test_image_views_exact_pixels():
    x = torch.linspace(0, 1, 4 * 5).reshape(1, 4, 5)          # one channel, min 0 max 1
    v = make_view(x, ViewOptions())
    assert v["kind"] == "image" and (v["width"], v["height"]) == (5, 4)
    np.testing.assert_array_equal(_pixels(v), np.rint(x[0].numpy() * 255).astype(np.uint8))
    # denormalize maps the stored values back to [0, 1] instead of min-max scaling
    v = make_view((x - 0.5) / 0.25, ViewOptions(denormalize=lambda t: t * 0.25 + 0.5))
    np.testing.assert_array_equal(_pixels(v), np.rint(x[0].numpy() * 255).astype(np.uint8))
    rgb = torch.rand(3, 10, 7)
    assert _pixels(make_view(rgb, ViewOptions())).shape == (10, 7, 3)
    assert _pixels(make_view(rgb.permute(1, 2, 0), ViewOptions())).shape == (10, 7, 3)     # HWC
    big = make_view(torch.rand(3, 300, 150), ViewOptions())
    assert (big["width"], big["height"]) == (32, 64)                                      # shrunk, aspect kept
    flat = make_view(torch.rand(784), ViewOptions(input_kind="image"))
    assert (flat["width"], flat["height"]) == (28, 28)


def test_token_tabular_and_fallback_views():
    ids = torch.tensor([1, 2, 9])
    assert make_view(ids, ViewOptions(vocabulary=["a", "b", "c"]))["tokens"] == ["b", "c", "[9]"]
    assert make_view(ids, ViewOptions(vocabulary={"a": 1, "b": 2}))["tokens"] == ["a", "b", "[9]"]
    assert make_view(ids, ViewOptions(decode=lambda t: f"<{t[0]}>"))["tokens"] == ["<1>", "<2>", "<9>"]
    long = make_view(torch.arange(500) % 3, ViewOptions(vocabulary=["a", "b", "c"]))
    assert len(long["tokens"]) == 120 and long["more"] == 380
    row = make_view(torch.tensor([1.5, -2.0]), ViewOptions(feature_names=["age"]))
    assert row == {"kind": "tabular", "cells": [["age", "1.5"], ["x1", "-2"]], "more": 0}
    assert make_view(torch.zeros(2, 3, 4, 5), ViewOptions())["kind"] == "index"
    assert make_view("a string", ViewOptions())["kind"] == "index"


# ---------------------------------------------------------------------------------------------- panels
def test_class_contributions_brute_force():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(30, 8, generator=g)
    ytr = torch.randint(0, 4, (30,), generator=g)
    yte = torch.tensor([0, 2, 2, 3, 0, 3, 3, 2])
    M, rows, cols = class_contributions(scores, ytr, yte)
    assert cols == [0, 2, 3] and rows == sorted(set(ytr.tolist()))
    for a, k in enumerate(rows):
        for b, c in enumerate(cols):
            cell = [scores[i, j].item() for i in range(30) for j in range(8) if ytr[i] == k and yte[j] == c]
            assert M[a, b] == pytest.approx(sum(cell) / len(cell), rel=1e-9)


def test_score_in_words():
    loo = {"score_scale": "leave-one-out", "target": "loss"}
    assert explain(0.0123, loo) == "Removing this training example is predicted to raise the test loss by 0.0123."
    assert "lower the test loss by 0.5" in explain(-0.5, loo)
    assert "lower the explained test quantity" in explain(2.0, {"score_scale": "leave-one-out",
                                                               "target": "higher-is-better"})
    assert "grad-dot's measure this training example hurt" in explain(-1.0, {"method": "grad-dot"})


def test_panel_registry_has_the_builtin_panels_in_order():
    names = [p.name for p in panels()]
    assert names[:3] == ["examples", "self-influence", "class-heatmap"] and "bench" in names


def test_memory_estimate_counts_kronecker_factors():
    from wherefrom import InfluenceFunction

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
    task = Task(model)
    rows = dict(estimate_memory(InfluenceFunction(task, solver="ekfac", damping=None), task, 100, 7))
    (_, nbytes), = [(k, v) for k, v in rows.items() if "EKFAC" in k]
    a1, g1, a2, g2 = 1 * 9 + 1, 2, 32 + 1, 5
    assert nbytes == 2 * (a1 * a1 + g1 * g1) * 4 + a1 * g1 * 4 + 2 * (a2 * a2 + g2 * g2) * 4 + a2 * g2 * 4
    assert rows["scores [100, 7] (output)"] == 100 * 7 * 4
