"""``wherefrom bench`` on a tiny setting: table, JSON, PNG, clear errors."""

import json
import pathlib
import subprocess
import sys

from typer.testing import CliRunner

from wherefrom.cli import app

runner = CliRunner()
SRC = pathlib.Path(__file__).resolve().parents[1] / "src"


def test_list_shows_settings_methods_metrics():
    res = runner.invoke(app, ["bench", "--list"])
    assert res.exit_code == 0, res.output
    for name in ("mnist-lr", "mnist-mlp", "fmnist-mlp", "digits-lr", "if-explicit", "tracin", "lds", "auc"):
        assert name in res.output


def test_unknown_names_list_valid_ones(tmp_path):
    res = runner.invoke(app, ["bench", "nope", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "digits-lr" in res.output
    res = runner.invoke(app, ["bench", "digits-lr", "--methods", "if-magic", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "if-explicit" in res.output
    res = runner.invoke(app, ["bench", "digits-lr", "--metrics", "loo,xyz", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "lds" in res.output


def test_bench_tiny_end_to_end(tmp_path):
    out = tmp_path / "out"
    args = ["bench", "digits-lr", "--n-train", "50", "--n-test", "6", "--methods", "if-explicit,grad-dot",
            "--metrics", "loo,lds,auc", "--loo-first", "8", "--subsets", "10", "--workers", "1",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-progress",
            "--option", "grad-dot.batch_size=16"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "| if-explicit |" in res.output and "LOO P" in res.output and "AUC" in res.output
    data = json.loads((out / "digits-lr.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["if-explicit"]["error"] is None
    assert rows["if-explicit"]["metrics"]["loo_pearson"]["value"] > 0.9
    assert 0.0 <= rows["grad-dot"]["metrics"]["auc"]["value"] <= 1.0
    assert (out / "digits-lr.png").stat().st_size > 1000
    # second run loads everything from the cache and gives the same numbers
    res2 = runner.invoke(app, args)
    assert res2.exit_code == 0
    rows2 = {r["method"]: r for r in json.loads((out / "digits-lr.json").read_text())["rows"]}
    assert rows2["if-explicit"]["metrics"]["lds"]["value"] == rows["if-explicit"]["metrics"]["lds"]["value"]


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "wherefrom", "bench", "--list"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert "mnist-lr" in res.stdout
