"""Baselines: closed forms on linear models, independent autograd references, and signs."""

import pytest
import torch
from torch import nn

import wherefrom as wf
from wherefrom.features import (
    block_masks,
    block_sum,
    build_up,
    gradient_times_input,
    integrated_gradients,
    occlusion,
    span_masks,
)

D = torch.float64


def test_integrated_gradients_of_a_linear_logit_is_exact_and_signed():
    lin = nn.Linear(5, 3).to(D)
    x = torch.randn(4, 5, dtype=D)
    base = torch.randn(5, dtype=D)
    ig = integrated_gradients(lin, x, 2, baseline=base, steps=3, output="logit")
    torch.testing.assert_close(ig, (x - base) * lin.weight[2].detach(), atol=1e-12, rtol=0)
    gxi = gradient_times_input(lin, x, 2)
    torch.testing.assert_close(gxi, x * lin.weight[2].detach(), atol=1e-12, rtol=0)  # positive = supports class 2


def test_integrated_gradients_of_probabilities_matches_a_loop_of_autograd_calls():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(D)
    x = torch.randn(2, 4, dtype=D)
    target = torch.tensor([0, 2])
    steps = 7
    expected = torch.zeros_like(x)
    for k in range(steps):                                   # both endpoints: alpha = k / (steps - 1)
        point = (k / (steps - 1) * x).requires_grad_(True)
        prob = torch.softmax(mlp(point), -1)[torch.arange(2), target].sum()
        expected += torch.autograd.grad(prob, point)[0]
    expected = x * expected / steps
    got = integrated_gradients(mlp, x, target, steps=steps, batch_size=3)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    # many steps: completeness F(x) - F(0) (logit output, trapezoid-like error shrinks with steps)
    ig = integrated_gradients(mlp, x, target, steps=400, output="logit")
    logits, zero = mlp(x).detach(), mlp(torch.zeros_like(x)).detach()
    gap = logits[torch.arange(2), target] - zero[torch.arange(2), target]
    torch.testing.assert_close(ig.sum(1), gap, atol=2e-2 * float(gap.abs().max()) + 1e-3, rtol=0)


def test_token_baselines_run_in_embedding_space():
    torch.manual_seed(1)

    class BagOfEmbeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 3)
            self.fc = nn.Linear(3, 2)

        def forward(self, ids):
            return self.fc(self.embed(ids).sum(1))

    model = BagOfEmbeddings().to(D)
    ids = torch.tensor([[1, 4, 7, 2]])
    ig = integrated_gradients(model, ids, 1, steps=2, output="logit")
    per_token = model.embed(ids).detach() @ model.fc.weight[1].detach()
    torch.testing.assert_close(ig, per_token, atol=1e-12, rtol=0)       # linear in the embeddings: exact
    torch.testing.assert_close(gradient_times_input(model, ids, 1), per_token, atol=1e-12, rtol=0)
    ig_dot = integrated_gradients(model, ids, 1, steps=2, output="logit", baseline_token=0)
    torch.testing.assert_close(ig_dot, per_token - model.embed.weight[0].detach() @ model.fc.weight[1].detach(),
                               atol=1e-12, rtol=0)


def test_occlusion_and_build_up_equal_direct_forward_passes():
    torch.manual_seed(2)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).to(D)
    x = torch.randn(2, 1, 6, 6, dtype=D)
    masks = block_masks(6, 6, 3)[:, None, None]               # [M=4, 1, 1, 6, 6]: one more dim than x
    assert masks.shape == (4, 1, 1, 6, 6) and masks.sum((1, 2, 3, 4)).tolist() == [9] * 4
    occ = occlusion(cnn, x, 1, masks, baseline=0.5)
    bu = build_up(cnn, x, 1, masks, baseline=0.5)
    for m in range(4):
        kept = torch.where(masks[m], x, torch.full_like(x, 0.5))
        dropped = torch.where(masks[m], torch.full_like(x, 0.5), x)
        torch.testing.assert_close(bu[m], cnn(kept)[:, 1].detach(), atol=1e-12, rtol=0)
        torch.testing.assert_close(occ[m], (cnn(x) - cnn(dropped))[:, 1].detach(), atol=1e-12, rtol=0)
    spans = span_masks(3, 2)
    assert spans.tolist() == [[True, True, False], [False, True, True]]
    with pytest.raises(wf.WherefromError):
        span_masks(3, 4)


def test_block_sum_sums_channels_and_ragged_blocks():
    a = torch.arange(2 * 2 * 5 * 5, dtype=D).reshape(2, 2, 5, 5)
    s = block_sum(a, 2)
    assert s.shape == (2, 3, 3)
    assert float(s[1, 2, 2]) == pytest.approx(float(a[1, :, 4, 4].sum()))
    assert float(s[0, 0, 0]) == pytest.approx(float(a[0, :, :2, :2].sum()))
