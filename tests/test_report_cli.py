"""``wherefrom attribute`` / ``wherefrom report`` on tiny specs: outputs, exact scores, reuse, exit codes."""

import json
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

import wherefrom
from report_specs import TABULAR, TOKENS, write
from wherefrom.cli import app
from wherefrom.report import ExitCode, load_spec
from wherefrom.report.attribute import fit_or_load

runner = CliRunner()
SRC = pathlib.Path(__file__).resolve().parents[1] / "src"


def _attribute(*args):
    return runner.invoke(app, ["attribute", *map(str, args), "--quiet"])


def test_scores_topk_and_report_match_a_brute_force_reference(tmp_path):
    spec = write(tmp_path, "toy_spec.py", TABULAR)
    out = tmp_path / "out"
    res = _attribute(spec, "--method", "graddot", "--test", "2:7", "--top-k", "4", "--out", out)
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("report.html")
    config = json.loads((out / "results.json").read_text())
    assert config["method"] == "grad-dot" and config["test_indices"] == [2, 3, 4, 5, 6]
    assert config["wherefrom_version"] == wherefrom.__version__ and config["top_k"] == 4
    # reference: g_i · q_j with per-example autograd gradients of the cross-entropy, one example at a time
    s = load_spec(str(spec))
    (Xtr, ytr), (Xte, yte) = s.train, s.test

    def grad(x, y):
        loss = F.cross_entropy(s.model(x[None]), y[None])
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(s.model.parameters()))])

    G = torch.stack([grad(Xtr[i], ytr[i]) for i in range(40)])
    Q = torch.stack([grad(Xte[j], yte[j]) for j in range(2, 7)])
    scores = load_file(out / "scores.safetensors")["scores"]
    torch.testing.assert_close(scores.double(), G @ Q.T, rtol=1e-5, atol=1e-8)
    top = load_file(out / "topk.safetensors")
    assert torch.equal(top["helpful_indices"], (G @ Q.T).topk(4, dim=0).indices.T)
    assert torch.equal(top["harmful_indices"], (-(G @ Q.T)).topk(4, dim=0).indices.T)
    assert config["test_labels"] == yte[2:7].tolist()
    assert config["test_predictions"] == s.model(Xte[2:7]).argmax(1).tolist()
    html = (out / "report.html").read_text()
    assert html.count('data-role="helpful" data-train-index') == 5 * 4
    assert "tabular &lt;i&gt;toy&lt;/i&gt;" in html and "&lt;script&gt;window.__wf_xss" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert '<table class="row thumb"><tr><th>a</th>' in html   # tabular rows with the spec's feature names


def test_rerun_reuses_saved_results_and_refit_recomputes(tmp_path, monkeypatch):
    spec = write(tmp_path, "toy_spec.py", TABULAR)
    out = tmp_path / "out"
    args = [spec, "--method", "explicit", "--test", "0:4", "--top-k", "3", "--out", out]
    assert _attribute(*args).exit_code == 0
    first = load_file(out / "scores.safetensors")["scores"]
    report = (out / "report.html").read_bytes()
    assert "predicted to raise the test loss" in report.decode()  # influence: leave-one-out wording

    def no_fit(self, train):
        raise AssertionError("fit must not run when the saved results are reused")

    monkeypatch.setattr(wherefrom.InfluenceFunction, "fit", no_fit)
    res = runner.invoke(app, ["attribute", *map(str, args)])          # not quiet: says what it reused
    assert res.exit_code == 0, res.output
    assert "reusing the saved results" in res.output
    assert (out / "report.html").read_bytes() == report
    assert _attribute(*args, "--refit").exit_code == ExitCode.ATTRIBUTION_FAILED  # --refit really fits again
    monkeypatch.undo()
    assert _attribute(*args[:-1], out, "--test", "1:3").exit_code == 0      # another selection: recomputed
    second = load_file(out / "scores.safetensors")["scores"]
    torch.testing.assert_close(second, first[:, 1:3])


@pytest.mark.parametrize("method", ["grad-dot", "if-cg"])
def test_fit_or_load_saves_then_loads_the_real_fit(tmp_path, monkeypatch, method):
    """A rerun loads the saved fit with ``wf.load`` (CG needs the training data again) and scores identically."""
    from wherefrom.registry import MethodContext, make_method

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()  # convex: CG on the Hessian is well defined
    X, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=8)
    task = wherefrom.Task(model, weight_decay=0.1)
    make = lambda: make_method(method, MethodContext(task=task, options={"progress": False}))  # noqa: E731
    first, how = fit_or_load(make(), task, train, str(tmp_path), "key-1")
    assert how == "fitted"
    calls = []
    monkeypatch.setattr(type(first), "fit", lambda self, train: calls.append(1) or self)
    second, how = fit_or_load(make(), task, train, str(tmp_path), "key-1")
    assert how == "loaded" and not calls
    test = (X[:5], y[:5])
    assert torch.equal(first.score(test), second.score(test))
    _, how = fit_or_load(make(), task, train, str(tmp_path), "key-2")      # stale key: refit
    assert how == "fitted" and calls


def test_tokens_are_rendered_as_text(tmp_path):
    spec = write(tmp_path, "tok_spec.py", TOKENS)
    out = tmp_path / "out"
    res = _attribute(spec, "--method", "grad-dot", "--test", "0:3", "--top-k", "2", "--out", out)
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    assert '<span class="tok">film</span>' in html or '<span class="tok">plot</span>' in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold</b>" not in html


def test_dry_run_plans_without_computing(tmp_path):
    spec = write(tmp_path, "toy_spec.py", TABULAR)
    out = tmp_path / "out"
    res = runner.invoke(app, ["attribute", str(spec), "-m", "ekfac", "--test", "0:5", "--out", str(out),
                              "--dry-run"])
    assert res.exit_code == 0, res.output
    for words in ("if-ekfac", "40 training examples", "5 of 10 test examples", "scores [40 × 5]",
                  "EKFAC factors of 1 layers", "total"):
        assert words in res.output
    assert not out.exists()


def test_dry_run_prints_the_planner_stages_and_writes_nothing(tmp_path):
    spec = write(tmp_path, "toy_spec.py", TABULAR)
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    res = runner.invoke(app, ["attribute", str(spec), "-m", "grad-dot", "--test", "0:5", "--top-k", "3",
                              "--out", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    table = res.output.split("per stage")[1].splitlines()
    assert table[1].split() == ["stage", "peak", "memory", "disk"]
    stages = [line.split()[0] for line in table[2:] if line.strip()]
    assert stages == ["featurise", "preconditioner", "top-k", "top-k", "self-influence", "run"]
    # the featurise row's disk: 40 examples x 21 parameters x 8 bytes (the spec's float64), counted by hand
    assert table[2].split()[-2:] == ["6.72", "KB"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no results folder


def test_report_rerenders_and_adds_bench_results(tmp_path):
    spec = write(tmp_path, "toy_spec.py", TABULAR)
    out = tmp_path / "out"
    assert _attribute(spec, "--method", "grad-dot", "--test", "0:3", "--top-k", "2", "--out", out).exit_code == 0
    original = (out / "report.html").read_bytes()
    spec.unlink()                                    # the spec is not needed: nothing is recomputed
    res = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "again.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again.html").read_bytes() == original
    bench = {"setting": {"name": "digits-lr"}, "metrics": ["loo"], "options": {}, "ground_truth": {},
             "rows": [{"method": "if-explicit", "fit_s": 0.5, "score_s": 0.1, "peak_mb": 12.0, "error": None,
                       "metrics": {"loo_pearson": {"value": 0.97}, "lds": {"value": 0.5, "ci": [0.4, 0.6]}}},
                      {"method": "<img src=x onerror=alert(1)>", "fit_s": None, "score_s": None, "peak_mb": None,
                       "error": "boom\ntrace", "metrics": {}}]}
    (tmp_path / "digits-lr.json").write_text(json.dumps(bench))
    res = runner.invoke(app, ["report", str(out), "--bench", str(tmp_path / "digits-lr.json")])
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    assert 'data-bench-file="digits-lr.json"' in html and "0.970" in html and "0.500 ± 0.100" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "(failed: boom)" in html
    assert (out / "bench" / "digits-lr.json").exists()       # kept: later re-renders show it too
    only_bench = tmp_path / "bench-only"
    only_bench.mkdir()
    (only_bench / "digits-lr.json").write_text(json.dumps(bench))
    assert runner.invoke(app, ["report", str(only_bench)]).exit_code == 0
    assert 'id="panel-bench"' in (only_bench / "report.html").read_text()


@pytest.mark.parametrize(("args", "code", "words"), [
    (["{dir}/nope.py"], ExitCode.SPEC_NOT_FOUND, "does not exist"),
    (["{spec}:missing"], ExitCode.SPEC_NOT_FOUND, "has no function 'missing'"),
    (["{spec}:raises"], ExitCode.SPEC_FAILED, "RuntimeError: checkpoint model.pt is missing"),
    (["{spec}:wrong_type"], ExitCode.SPEC_INVALID, "returned int"),
    (["{spec}", "--method", "magic"], ExitCode.USAGE, "Unknown method 'magic'"),
    (["{spec}", "--test", "5:99"], ExitCode.USAGE, "outside the 10 test examples"),
    (["{spec}", "--top-k", "0"], ExitCode.USAGE, "--top-k 0"),
    (["{spec}", "--method", "grad-dot", "--option", "flavour=3"], ExitCode.USAGE, "flavour"),
    (["{spec}", "--method", "trak"], ExitCode.ATTRIBUTION_FAILED, "ensemble"),
])
def test_bad_input_exit_codes(tmp_path, args, code, words):
    spec = write(tmp_path, "toy_spec.py", TABULAR)
    argv = [a.format(spec=spec, dir=tmp_path) for a in args]
    res = runner.invoke(app, ["attribute", *argv, "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == code, res.output
    assert words in res.output and "Traceback" not in res.output


def test_report_errors(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == ExitCode.RESULTS_INVALID and "is not a folder" in res.output
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == ExitCode.RESULTS_INVALID and "holds no results.json" in res.output
    (tmp_path / "results.json").write_text('{"format": 1, "test_indices": [0]}')
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == ExitCode.RESULTS_INVALID and "incomplete or corrupt" in res.output
    res = runner.invoke(app, ["report", str(tmp_path), "--bench", str(tmp_path / "results.json")])
    assert res.exit_code == ExitCode.USAGE and "not a `wherefrom bench` result" in res.output


def test_exit_code_of_the_real_process(tmp_path):
    res = subprocess.run([sys.executable, "-m", "wherefrom", "attribute", str(tmp_path / "nope.py")],
                         capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin",
                                                              "WHEREFROM_PROGRESS": "0"})
    assert res.returncode == ExitCode.SPEC_NOT_FOUND, res.stderr
    assert "error: Spec file" in res.stderr and "Traceback" not in res.stderr
