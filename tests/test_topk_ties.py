"""Exactly tied scores: the streaming top-k orders them by lower training index, whatever the blocks."""

import random

import pytest
import torch

from wherefrom.store import StreamingTopK


def brute_force(scores: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``[m, k]`` indices and values by sorting each column's (value, index) pairs in Python."""
    idx, val = [], []
    for col in scores.T.tolist():
        order = sorted(range(len(col)), key=lambda r: (-col[r] if largest else col[r], r))[:k]
        idx.append(order)
        val.append([col[r] for r in order])
    return torch.tensor(idx), torch.tensor(val, dtype=scores.dtype)


@pytest.mark.parametrize("seed", range(4))
def test_ties_go_to_the_lower_index_whatever_the_blocks(seed):
    g = torch.Generator().manual_seed(seed)
    n, m, k = 300, 7, 10
    scores = torch.randint(-4, 5, (n, m), generator=g).float() / 4  # 9 values: every place is tied many times
    ref_hi, ref_hi_v = brute_force(scores, k, True)
    ref_lo, ref_lo_v = brute_force(scores, k, False)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, n), 12))
    blocks = [(a, b) for a, b in zip([0, *cuts], [*cuts, n])]
    in_order, shuffled = StreamingTopK(k), StreamingTopK(k)
    for a, b in blocks:
        in_order.update(a, scores[a:b])
    rng.shuffle(blocks)
    for a, b in blocks:
        shuffled.update(a, scores[a:b])
    for top in (in_order.result(), shuffled.result()):
        assert torch.equal(top.helpful_indices, ref_hi) and torch.equal(top.helpful_values, ref_hi_v)
        assert torch.equal(top.harmful_indices, ref_lo) and torch.equal(top.harmful_values, ref_lo_v)


def test_partial_top_k_merged_in_any_order_equal_one_scan():
    from wherefrom.scale.distributed import _merge

    g = torch.Generator().manual_seed(5)
    n, m, k = 240, 5, 6
    scores = torch.randint(0, 3, (n, m), generator=g).double()
    ref, ref_v = brute_force(scores, k, True)
    parts = []
    for a in range(0, n, 40):  # each chunk's own top-k, as a Dask task returns it
        part = StreamingTopK(k)
        part.update(a, scores[a:a + 40])
        parts.append((part._hi_v, part._hi_i))
    for order in ([5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 4, 3]):
        v = i = None
        for p in order:
            v, i = _merge(v, i, *parts[p], k, True)
        assert torch.equal(i.T, ref) and torch.equal(v.T, ref_v)
