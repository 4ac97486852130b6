"""Agglomeration: hand-worked hierarchies, planted interactions, invariants, and acd() on small models."""

import itertools
import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

import wherefrom as wf
from wherefrom.features import agglomerate_1d, agglomerate_2d, per_group
from wherefrom.features.agglomerate import threshold_1d, threshold_2d

WORDS = np.array([0.5, -2.0, 0.1, 1.0, 0.3])


def additive(weights, interactions=()):
    """score(S) = Σ_{i∈S} w_i + Σ bonus·[a∈S and b∈S] for planted pairs (a, b, bonus)."""
    w = np.asarray(weights, dtype=float)

    def score(groups):
        g = groups.reshape(len(groups), -1)
        out = g @ w.ravel()
        for a, b, bonus in interactions:
            out = out + bonus * (g[:, a] & g[:, b])
        return out

    return score


def test_hand_worked_1d_hierarchy_of_an_additive_score():
    # thresholds worked by hand with numpy's linear percentile: 5 words left -> p59 picks |s| >= 0.68 (words 1, 3);
    # gains equal the neighbours' own scores; 3 left (0.5, 0.1, 0.3) -> p59 picks word 0; 2 left -> p49 picks
    # word 4; 1 left -> word 2
    h = agglomerate_1d(additive(WORDS), 5)
    assert h.order().tolist() == [1, 0, 3, 0, 2]
    comps = [lv.components.tolist() for lv in h.levels]
    assert comps[0] == [0, 1, 0, 2, 0]
    assert comps[1] == [1, 1, 0, 2, 0]
    assert comps[2] == [1, 1, 0, 2, 2]
    assert comps[3] == [1, 1, 1, 1, 1]
    assert h.levels[1].scores == pytest.approx({1: -1.5, 2: 1.0})
    assert h.top().scores == pytest.approx({1: WORDS.sum()}) and h.full_score == pytest.approx(WORDS.sum())
    # additive score: every join gain equals the joined word's own score (no interaction)
    running = h.levels[1].unit_scores
    assert running[[0, 2, 4]].tolist() == pytest.approx([0.5, 0.1, 0.3])
    assert json.loads(json.dumps(h.to_dict()))["order"] == [1, 0, 3, 0, 2]
    # collapsed display: words; the two phrases {0, 1} and {3, 4} (grown, not merged) on row 1; their merge on row 2
    rows = h.text_rows()
    assert len(rows) == 3
    assert rows[1][0].tolist() == [1, 1, 0, 2, 2] and rows[1][1] == pytest.approx({1: -1.5, 2: 1.3})
    assert rows[2][0].tolist() == [1, 1, 1, 1, 1]


def test_thresholds_follow_the_reference_percentiles():
    assert threshold_1d(np.array([0.1, np.nan, -3.0, 0.2, np.nan]), 99.5, True).tolist() == \
        [False, False, True, False, False]
    s = np.arange(16, dtype=float).reshape(4, 4)
    assert threshold_2d(s, 90.0).sum() == 2                       # 14, 15 >= 90th percentile (13.5)
    s[:2] = np.nan                                                # half selected -> p - 15 = 75
    assert threshold_2d(s, 90.0).sum() == 2 and threshold_2d(s, 90.0)[3, 2:].all()


def test_planted_interaction_is_merged_first_by_build_up():
    class Planted(nn.Module):
        """logit_1 = Σ_t w[x_t] + 5·[x_t = A and x_{t+1} = B]; logit_0 = 0. Token 0 is the zero baseline."""

        def __init__(self):
            super().__init__()
            self.w = torch.tensor([0.0, 0.9, 0.1, 0.6, -0.4, 0.2])    # A = 1, B = 2

        def forward(self, ids):
            s = self.w[ids].sum(1) + 5.0 * ((ids[:, :-1] == 1) & (ids[:, 1:] == 2)).sum(1)
            return torch.stack([torch.zeros_like(s), s], 1)

    ids = torch.tensor([[3, 5, 1, 2, 4]])
    h = wf.features.acd(Planted(), ids, target=1, method="build-up", percentile=50)
    first_multi = next(lv for lv in h.levels if any((lv.components == c).sum() > 1 for c in lv.scores))
    multi = [c for c in first_multi.scores if (first_multi.components == c).sum() > 1]
    assert len(multi) == 1 and np.flatnonzero(first_multi.components == multi[0]).tolist() == [2, 3]
    assert first_multi.scores[multi[0]] == pytest.approx(0.9 + 0.1 + 5.0)  # contrast: logit_1 - logit_0
    # occlusion sees the same interaction: occluding A alone already removes the bonus
    occ = wf.features.acd(Planted(), ids, target=1, method="occlusion")
    assert occ.unit_scores[2] == pytest.approx(0.9 + 5.0)
    # ... and on log-probabilities: log p_1(x) - log p_1(x without A) (the contrast of two log-probabilities
    # would equal the logit difference again)
    logp = wf.features.acd(Planted(), ids, target=1, method="occlusion", output="log_prob", contrast=False)
    full, occluded = 0.9 + 0.1 + 0.6 - 0.4 + 0.2 + 5.0, 0.1 + 0.6 - 0.4 + 0.2
    expected = (full - np.logaddexp(0, full)) - (occluded - np.logaddexp(0, occluded))
    assert logp.unit_scores[2] == pytest.approx(expected)
    with pytest.raises(wf.WherefromError, match="CD decomposes the logits"):
        wf.features.acd(Planted(), ids, target=1, method="cd", output="log_prob")


def test_2d_final_merge_takes_the_planted_pair_over_all_pairs():
    w = np.zeros((6, 6))
    w[0, 0], w[5, 5], w[0, 5] = 3.0, 2.0, 2.5                      # three separate blobs
    score = additive(w, interactions=[(0 * 6 + 0, 5 * 6 + 5, 4.0)])
    h = agglomerate_2d(score, (6, 6), percentile=93.0, num_iters=0)   # picks exactly the 3 blocks
    merges = [lv for lv in h.levels if lv.kind == "merge"]
    assert len(merges) == 2
    first = merges[0].components
    assert first[0, 0] == first[5, 5] != first[0, 5]              # the interacting corners, not neighbours
    assert len(set(merges[-1].scores)) == 1
    assert merges[-1].scores[next(iter(merges[-1].scores))] == pytest.approx(3 + 2 + 2.5 + 4)


def _check_invariants(h):
    grow = h.grow_levels
    for prev, nxt in itertools.pairwise(grow):
        assert (nxt.selected >= prev.selected).all()               # selected masks only grow
    for lv in h.levels:
        assert ((lv.components > 0) == lv.selected).all()          # components cover exactly the selection
        for cid in lv.scores:                                      # ... and each is one connected component
            structure = None if lv.selected.ndim == 1 else np.ones((3, 3))
            assert ndimage.label(lv.components == cid, structure=structure)[1] == 1 or lv.kind == "merge"
        assert set(np.unique(lv.components[lv.components > 0]).tolist()) == set(lv.scores)


def test_invariants_and_final_component_on_a_random_cnn():
    torch.manual_seed(1)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 4)).double()
    x = torch.randn(1, 1, 10, 10, dtype=torch.float64)
    h = wf.features.acd(cnn, x, target=2, percentile=90, num_iters=4, block_size=2)
    _check_invariants(h)
    top = h.top()
    assert len(top.scores) == 1
    union = np.kron(top.components > 0, np.ones((2, 2)))
    direct = wf.features.cd(cnn, x, torch.as_tensor(union)).rel[0, 2]
    assert next(iter(top.scores.values())) == pytest.approx(float(direct))
    assert h.order().shape == (5, 5)


def test_text_top_level_converges_to_the_sentence_score():
    torch.manual_seed(2)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 5)
            self.lstm = nn.LSTM(5, 4, batch_first=True)
            self.fc = nn.Linear(4, 3)

        def forward(self, ids):
            out, _ = self.lstm(self.embed(ids))
            return self.fc(out[:, -1])

    model = Tiny().double().eval()
    ids = torch.randint(0, 20, (1, 8))
    h = wf.features.acd(model, ids, target=1, num_iters=30, labels=[f"w{i}" for i in range(8)])
    _check_invariants(h)
    assert h.grow_levels[-1].selected.all() and len(h.top().scores) == 1
    logits = model(ids)[0].detach()
    contrast = float(logits[1] - (logits[0] + logits[2]) / 2)     # three classes: target against the rest
    assert next(iter(h.top().scores.values())) == pytest.approx(contrast, abs=1e-10)
    assert h.full_score == pytest.approx(contrast, abs=1e-10)
    rows = h.text_rows()
    assert rows[0][0].tolist() == list(range(1, 9)) and len(rows) >= 2


def test_any_score_callable_works_one_group_at_a_time():
    h = agglomerate_1d(per_group(lambda g: float(WORDS[g].sum())), 5)
    assert h.order().tolist() == [1, 0, 3, 0, 2]
    with pytest.raises(wf.WherefromError, match="batch dimension of 1"):
        wf.features.acd(nn.Linear(3, 2), torch.randn(2, 3))
