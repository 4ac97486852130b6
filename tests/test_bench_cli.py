"""``wherefrom bench`` is honest and incremental: failures exit non-zero, rows are written as they finish, a killed
run resumes, the JSON is strict, bad requests fail before any work."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from wherefrom import registry
from wherefrom.bench import get_setting
from wherefrom.bench.plan import accepted_options, plan_methods
from wherefrom.cli import app

runner = CliRunner()
TINY = ["digits-lr", "--n-train", "40", "--n-test", "5", "--loo-first", "5", "--subsets", "8", "--workers", "1",
        "--no-progress"]
FITS: list[str] = []  # call log: one entry per fit() of a fake method


class _Fake:
    """A tiny attributor: scores = X_train @ X_testᵀ; ``behaviour`` makes it fail in chosen ways."""

    def __init__(self, name: str, behaviour: str) -> None:
        self.name, self.behaviour = name, behaviour

    def fit(self, train):
        FITS.append(self.name)
        if self.behaviour == "raise":
            raise RuntimeError("boom in fit")
        if self.behaviour == "interrupt-once" and FITS.count(self.name) == 1:
            raise KeyboardInterrupt
        self.X = train.tensors[0]
        return self

    def score(self, test):
        S = self.X @ test.tensors[0].T
        return torch.full_like(S, math.nan) if self.behaviour == "nan" else S

    def self_influence(self):
        return (self.X ** 2).sum(1)


@pytest.fixture
def fakes(monkeypatch):
    """Register fake methods ``fake-<behaviour>`` for one test."""
    FITS.clear()
    for behaviour in ("ok", "raise", "nan", "interrupt-once"):
        name = f"fake-{behaviour}"
        spec = registry.MethodSpec(name, "test method", lambda ctx, n=name, b=behaviour: _Fake(n, b))
        monkeypatch.setitem(registry.METHODS, name, spec)
    yield


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_failing_method_and_metric_exit_nonzero_and_keep_the_other_rows(fakes, cache, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["bench", *TINY, "--methods", "if-explicit,fake-raise,fake-nan", "--metrics",
                              "loo,lds", "--cache-dir", str(cache), "--out", str(out)])
    assert res.exit_code == 1, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("FAILED (3)") and "fake-raise: RuntimeError: boom in fit" in last
    assert "fake-nan (metric loo)" in last and "fake-nan (metric lds)" in last
    assert "| if-explicit |" in res.output and "| fake-raise (failed: RuntimeError: boom in fit) |" in res.output
    data = _strict_json(out / "digits-lr.json")  # strict: NaN would raise
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["if-explicit"]["error"] is None and rows["if-explicit"]["metrics"]["loo_pearson"]["value"] > 0.9
    assert rows["fake-raise"]["fit_s"] is None and "boom" in rows["fake-raise"]["error"]
    assert set(rows["fake-nan"]["metric_errors"]) == {"loo", "lds"} and rows["fake-nan"]["fit_s"] >= 0
    assert data["run"]["status"] == "failed" and len(data["run"]["failures"]) == 3
    assert data["versions"]["torch"] == torch.__version__ and data["versions"]["wherefrom"]
    assert data["machine"]["cpus"] >= 1 and data["run"]["started"] <= data["run"]["finished"]
    assert data["ground_truth"]["loo"]["build_s"] > 0 and data["ground_truth"]["reference"]["train_s"] > 0
    assert (out / "digits-lr.png").stat().st_size > 1000 and "| fake-nan |" in (out / "digits-lr.md").read_text()


def test_interrupted_run_resumes_without_recomputing_finished_methods(fakes, cache, tmp_path):
    out = tmp_path / "out"
    args = ["bench", *TINY, "--methods", "fake-ok,fake-interrupt-once,grad-dot", "--metrics", "loo",
            "--cache-dir", str(cache), "--out", str(out)]
    first = runner.invoke(app, args)
    assert first.exit_code == 130, first.output
    assert FITS == ["fake-ok", "fake-interrupt-once"]
    data = _strict_json(out / "digits-lr.json")  # written after the first method, before the interruption
    assert [r["method"] for r in data["rows"]] == ["fake-ok"] and data["run"]["status"] == "interrupted"
    built = data["ground_truth"]["loo"]["build_s"]

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert FITS == ["fake-ok", "fake-interrupt-once", "fake-interrupt-once"]  # fake-ok was not fitted again
    data = _strict_json(out / "digits-lr.json")
    assert [(r["method"], r["resumed"]) for r in data["rows"]] == [
        ("fake-ok", True), ("fake-interrupt-once", False), ("grad-dot", False)]
    assert data["run"]["status"] == "complete"
    assert data["ground_truth"]["loo"]["build_s"] == built  # the real build time, not this run's load time

    third = runner.invoke(app, [*args, "--fresh"])
    assert third.exit_code == 0 and FITS.count("fake-ok") == 2


def test_bad_option_key_fails_before_any_work(tmp_path):
    res = runner.invoke(app, ["bench", *TINY, "--methods", "if-ekfac", "--option", "if-ekfac.dampin=0.1",
                              "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "dampin" in res.output and "damping" in res.output and "curvature" in res.output
    assert not list(tmp_path.rglob("*.pt"))  # nothing was trained
    res = runner.invoke(app, ["bench", *TINY, "--methods", "if-cg", "--option", "if-cgg.max_iter=3",
                              "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "if-cgg" in res.output and "'if-cg'" in res.output
    res = runner.invoke(app, ["bench", *TINY, "--methods", "if-cg", "--option", "if-lissa.depth=3",
                              "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "if-lissa" in res.output and "--methods" in res.output
    res = runner.invoke(app, ["bench", *TINY, "--methods", "if-cg", "--option", "if-cg.damping=-1",
                              "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "if-cg.damping=-1" in res.output
    assert not list(tmp_path.rglob("*.pt"))


def test_trak_m_names_the_flag_or_trains_what_it_needs(tmp_path):
    res = runner.invoke(app, ["bench", *TINY, "--methods", "trak-10", "--ensemble-size", "5",
                              "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--ensemble-size 10" in res.output
    assert not list(tmp_path.rglob("*.pt"))
    setting = get_setting("digits-lr", n_train=40, n_test=5)
    plans = plan_methods(setting, ["trak-10", "trak-1", "trak", "grad-dot"], {"trak": {"num_models": 7}}, None)
    assert [p.ensemble_size for p in plans] == [10, 5, 7, None]


def test_accepted_options_come_from_the_constructors():
    setting = get_setting("digits-lr", n_train=40, n_test=5)
    from wherefrom.bench.plan import _DryRun

    cg, _ = _DryRun(setting).build("if-cg", {}, 1)
    names = accepted_options(cg)
    assert {"damping", "curvature", "batch_size", "max_iter"} <= set(names) and "task" not in names


def test_list_shows_rough_costs():
    res = runner.invoke(app, ["bench", "--list"])
    assert res.exit_code == 0
    assert "Rough cost" in res.output and "if-explicit" in res.output
