"""The planner's featurise stage against a measured zarr featurisation (peak RSS growth and bytes on disk)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import wherefrom as wf
from wherefrom.errors import WherefromError

HELPER = os.path.join(os.path.dirname(__file__), "scale_helpers.py")
SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "src"))


def _probe(n: int, cache: str) -> dict:
    env = {**os.environ, "PYTHONPATH": SRC, "WHEREFROM_PROGRESS": "0"}
    out = subprocess.run([sys.executable, HELPER, "planner", str(n), cache], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n", [500, 2000])  # one partial chunk; two chunks (1024 rows each)
def test_plan_predicts_measured_featurisation_memory_and_disk(tmp_path, n):
    r = _probe(n, str(tmp_path))
    # disk: raw float32 rows (zstd saves little on gradients) within ±20 %
    assert 0.8 <= r["measured_disk"] / r["predicted_disk"] <= 1.2, r
    # memory: peak resident growth during the fit within a factor 2 of the featurise stage (baseline excluded)
    assert 0.5 <= r["measured_memory"] / r["predicted_memory"] <= 2.0, r
    # top-k and self-influence after it: never more than twice the plan (memory freed by the stage before is
    # reused, so a measured growth can be far below it)
    assert set(r["stages"]) == {"top-k (faiss)", "top-k (stream)", "self-influence"}
    for stage, v in r["stages"].items():
        assert v["measured"] <= 2.0 * v["predicted"], (stage, r)


def test_plan_counts_by_hand():
    task = wf.Task(torch.nn.Linear(10, 3))  # p = 33
    plan = wf.scale.plan(task, n_train=100, dim=33, batch_size=8, chunk_rows=16, dtype=torch.float16)
    f = plan.stage("featurise")
    assert f.disk == 100 * 33 * 2
    assert f.memory == 3 * 33 * 4 + 2 * 8 * 33 * 4 + 8 * 33 * 4 + 4 * 16 * 33 * 2
    assert plan.peak_memory == plan.baseline + max(s.memory for s in plan.stages)
    read = 3 * 16 * 33 * 2 + 16 * 33 * 4  # a float16 chunk compressed, decoded, copied out; the previous block
    queries = 1000 * 33 * 12
    assert plan.stage("top-k (faiss)").memory == queries + read + 16 * 33 * 4 + 2 * 2 * 1000 * 10 * 12
    assert plan.stage("top-k (stream)").memory == queries + read + 16 * 1000 * 4 + 2 * (16 + 10) * 1000 * 12
    assert plan.stage("self-influence").memory == read + 16 * 33 * 8 + 100 * 4
    weighted = wf.scale.plan(task, n_train=100, dim=33, batch_size=8, chunk_rows=16, dtype=torch.float16,
                             weighted_rows=True)  # TRAK's 1 - p: rows weighted in float64 before the search
    assert weighted.stage("top-k (faiss)").memory - plan.stage("top-k (faiss)").memory == 16 * 33 * 16
    small = wf.scale.plan(task, n_train=5, dim=33, batch_size=8, chunk_rows=16)  # a chunk holds at most n rows
    assert small.stage("featurise").terms["chunk (parts, joined, checksum bytes, compressed)"] == 4 * 5 * 33 * 4
    with pytest.raises(WherefromError, match="dim="):
        wf.scale.plan(task, n_train=100)
