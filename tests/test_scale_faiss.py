"""FAISS top-k equals the streaming top-k (brute force), on random and on real features; recall of an approximate
index is measured against the exact search."""

import numpy as np
import pytest
import torch

import wherefrom as wf
from scale_helpers import small_problem
from wherefrom.scale.faiss_search import exact_search
from wherefrom.store import StreamingTopK


def _reference(X: torch.Tensor, Y: torch.Tensor, k: int, block: int):
    top = StreamingTopK(k)
    for start in range(0, len(X), block):
        top.update(start, X[start:start + block].double() @ Y.double().T)
    return top.result()


def test_exact_search_equals_streaming_top_k_on_random_features():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(5000, 24, generator=g)
    Y = torch.randn(40, 24, generator=g)
    ref = _reference(X, Y, 10, 700)
    blocks = ((s, X[s:s + 700]) for s in range(0, len(X), 700))
    (hv, hi), (lv, li) = exact_search(blocks, Y.numpy(), 10)
    assert np.array_equal(hi, ref.helpful_indices.numpy())
    assert np.array_equal(li, ref.harmful_indices.numpy())
    np.testing.assert_allclose(hv, ref.helpful_values.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(-lv, ref.harmful_values.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda task, ex: wf.GradDot(task, execution=ex),
    lambda task, ex: wf.GradCos(task, execution=ex),  # row and column factors folded in
    lambda task, ex: wf.TRAK(task, proj_dim=16, execution=ex),  # row weights 1 - p, margin sign
    lambda task, ex: wf.LoGra(task, execution=ex),
    lambda task, ex: wf.TracInCP(task, checkpoints=[task.state(None)] * 2, learning_rates=[0.1, 0.3],
                                 execution=ex),  # factored layer rows, expanded for the search
], ids=["graddot", "gradcos", "trak", "logra", "tracin"])
def test_faiss_top_k_equals_streaming_on_real_features(tmp_path, make):
    task, train, test = small_problem(n=400)
    att = make(task, wf.Execution(batch_size=50, block_size=100, store="zarr", cache_dir=str(tmp_path)))
    att.fit(train)
    ref = att.top_k(test, 7)
    dense = att.score(test)
    got = wf.scale.top_k(att, test, 7)
    assert torch.equal(got.helpful_indices, ref.helpful_indices)
    assert torch.equal(got.harmful_indices, ref.harmful_indices)
    scale = dense.abs().max()
    torch.testing.assert_close(got.helpful_values.double(), ref.helpful_values.double(), rtol=1e-5,
                               atol=1e-6 * scale)
    torch.testing.assert_close(got.harmful_values.double(), ref.harmful_values.double(), rtol=1e-5,
                               atol=1e-6 * scale)


def test_approximate_indexes_report_recall(tmp_path):
    task, train, test = small_problem(n=400)
    att = wf.GradDot(task, execution=wf.Execution(batch_size=50)).fit(train)
    exact = wf.scale.top_k(att, test, 5)
    hnsw = wf.scale.top_k(att, test, 5, index="hnsw")
    assert hnsw.index == "hnsw" and 0.0 <= hnsw.recall <= 1.0
    helpful = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(hnsw.helpful_indices, exact.helpful_indices)]
    harmful = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(hnsw.harmful_indices, exact.harmful_indices)]
    assert hnsw.recall == pytest.approx((sum(helpful) + sum(harmful)) / (2 * 9 * 5))
    every_list = wf.scale.top_k(att, test, 5, index="ivf", nprobe=10_000)  # every list probed: exact
    assert every_list.recall == 1.0
    assert torch.equal(every_list.helpful_indices, exact.helpful_indices)


def test_bad_requests_are_named():
    task, train, test = small_problem(n=20)
    att = wf.GradDot(task).fit(train)
    with pytest.raises(wf.WherefromError, match="index"):
        wf.scale.top_k(att, test, 3, index="lsh")
    with pytest.raises(wf.WherefromError, match="k must"):
        wf.scale.top_k(att, test, 0)
    with pytest.raises(wf.WherefromError, match="backend"):
        wf.scale.top_k(att, test, 3, backend="annoy")
