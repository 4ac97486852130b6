"""Contextual decomposition: completeness at every node, closed forms, masks, rules and errors."""

import itertools
import operator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wherefrom as wf
from features_models import (
    EveryRuleCNN,
    EveryRuleLSTM,
    forward_values,
    randomise_batchnorm,
    worst_completeness_error,
)
from wherefrom.features import Decomposer, DecompositionError, MissingRuleError, cd, register_rule, unregister_rule
from wherefrom.features.propagate import repeat_input
from wherefrom.features.shapley import relevant_first, shapley_three, shapley_two

D = torch.float64


def _check_every_node(model, x, masks, min_nodes=10):
    dec = Decomposer(model)
    recorded = dec.trace_nodes(x, masks)
    forward = forward_values(model, dec.graph, repeat_input(x, masks.shape[0]))
    worst, count = worst_completeness_error(recorded, forward)
    assert count >= min_nodes
    assert worst < 1e-8, worst
    return dec


def test_completeness_at_every_node_cnn_with_batchnorm_pooling_residual():
    model = randomise_batchnorm(EveryRuleCNN().to(D))
    x = torch.randn(3, 2, 10, 10, dtype=D)
    masks = (torch.rand(6, 1, 1, 10, 10, dtype=D) > 0.5).to(D)
    masks[4] = torch.rand(1, 1, 10, 10, dtype=D)                # fractional mask
    masks[5, :, :, 3:6, 2:8] = 1.0
    dec = _check_every_node(model, x, masks)
    rel, irrel = dec.decompose(x, masks)
    assert rel.shape == (6, 3, 5)
    torch.testing.assert_close(rel + irrel, model(x).detach().expand(6, 3, 5), atol=1e-10, rtol=0)
    names = {n.target for n in dec.graph.nodes if n.op == "call_module"}
    assert {"bn", "pool", "block.bn1", "adapt", "conv1d", "bn1d", "drop", "flat", "leaky", "tanh"} <= names


@pytest.mark.parametrize("batch_first,bidirectional", [(True, False), (False, False), (True, True)])
def test_completeness_at_every_node_multilayer_lstm(batch_first, bidirectional):
    model = EveryRuleLSTM(batch_first, bidirectional).to(D).eval()
    ids = torch.randint(0, 30, (2, 7))
    masks = torch.zeros(4, 1, 7, dtype=D)
    masks[0, 0, 3] = 1
    masks[1, 0, 1:5] = 1
    masks[2] = torch.rand(1, 7, dtype=D)
    _check_every_node(model, ids, masks)


def test_many_masks_in_one_pass_equal_one_mask_at_a_time_and_chunking():
    model = randomise_batchnorm(EveryRuleCNN().to(D))
    x = torch.randn(2, 2, 10, 10, dtype=D)
    masks = (torch.rand(5, 2, 1, 10, 10) > 0.5).to(D)           # per-example masks [M, B, 1, H, W]
    together = cd(model, x, masks)
    chunked = cd(model, x, masks, batch_size=3)
    for m in range(5):
        alone = cd(model, x, masks[m])
        torch.testing.assert_close(together.rel[m], alone.rel, atol=1e-12, rtol=0)
        torch.testing.assert_close(chunked.irrel[m], alone.irrel, atol=1e-12, rtol=0)


def test_linear_model_closed_form_of_the_bias_split():
    torch.manual_seed(3)
    lin = nn.Linear(6, 4).to(D)
    x = torch.randn(5, 6, dtype=D)
    s = torch.tensor([1, 0, 1, 1, 0, 0], dtype=D)
    w, b = lin.weight.detach(), lin.bias.detach()
    ws, wc = (x * s) @ w.T, (x * (1 - s)) @ w.T
    expected = ws + b * ws.abs() / (ws.abs() + wc.abs())       # Part D 2, elementwise per output unit
    rel, _irrel = cd(lin, x, s)
    torch.testing.assert_close(rel, expected, atol=1e-12, rtol=0)
    # a single affine layer: CD(S) + CD(S^c) = f(x), the two bias shares add up to b
    torch.testing.assert_close(rel + cd(lin, x, 1 - s).rel, lin(x).detach(), atol=1e-12, rtol=0)
    # b = 0: CD(S) = W x_S exactly and CD is additive over disjoint groups
    lin.bias.data.zero_()
    groups = [torch.tensor(g, dtype=D) for g in ([1, 0, 0, 0, 1, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 1])]
    parts = [cd(lin, x, g).rel for g in groups]
    torch.testing.assert_close(parts[0], (x * groups[0]) @ w.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(sum(parts), lin(x).detach(), atol=1e-12, rtol=0)


def test_full_and_empty_masks_as_documented():
    cnn = randomise_batchnorm(EveryRuleCNN().to(D))
    x = torch.randn(2, 2, 10, 10, dtype=D)
    full = cd(cnn, x, torch.ones(10, 10, dtype=D))
    assert torch.equal(full.rel, cnn(x).detach()) and torch.equal(full.irrel, torch.zeros_like(full.irrel))
    assert torch.equal(cd(cnn, x, torch.zeros(10, 10, dtype=D)).rel, torch.zeros(2, 5, dtype=D))
    lstm = EveryRuleLSTM(True).to(D).eval()
    ids = torch.randint(0, 30, (2, 7))
    torch.testing.assert_close(cd(lstm, ids, torch.ones(2, 7)).rel, lstm(ids).detach(), atol=1e-12, rtol=0)
    assert float(cd(lstm, ids, torch.zeros(2, 7)).rel.abs().max()) < 1e-12


def test_relevant_share_ties_follow_the_empty_part():
    # a unit where both parts are exactly 0 (dead receptive field): half each, unless one input part is empty
    lin = nn.Linear(3, 1).to(D)
    lin.weight.data[:] = torch.tensor([[1.0, 0.0, 0.0]], dtype=D)
    x = torch.tensor([[0.0, 5.0, 3.0]], dtype=D)                # W x_S = W x_Sc = 0 for these masks
    bias = lin.bias.item()
    assert float(cd(lin, x, torch.tensor([0.0, 1.0, 0.0], dtype=D)).rel) == pytest.approx(bias / 2)
    assert float(cd(lin, x, torch.tensor([1.0, 1.0, 1.0], dtype=D)).rel) == pytest.approx(bias)
    assert float(cd(lin, x, torch.tensor([0.0, 0.0, 0.0], dtype=D)).rel) == 0.0


def _shapley(v, players, first=()):
    """Brute-force Shapley value over the orderings that start with ``first``."""
    rest = [p for p in players if p not in first]
    values = {p: 0.0 for p in players}
    orders = [tuple(first) + o for o in itertools.permutations(rest)]
    for order in orders:
        seen = set()
        for p in order:
            values[p] += v(seen | {p}) - v(seen)
            seen = seen | {p}
    return {p: values[p] / len(orders) for p in players}


def test_shapley_identities_of_the_two_and_three_player_rules():
    a, b, c = (torch.randn(20, dtype=D) for _ in range(3))
    tanh_parts = shapley_two(torch.tanh, a, b)
    phi = _shapley(lambda S: torch.tanh(sum((dict(a=a, b=b)[p] for p in S), torch.zeros_like(a))), "ab")
    torch.testing.assert_close(tanh_parts.rel, phi["a"], atol=1e-14, rtol=0)
    torch.testing.assert_close(tanh_parts.irrel, phi["b"], atol=1e-14, rtol=0)
    swapped = shapley_two(torch.tanh, b, a)
    torch.testing.assert_close(swapped.rel, tanh_parts.irrel, atol=1e-14, rtol=0)
    sig = shapley_two(torch.sigmoid, a, b)                       # f(0) = ½ must not be lost
    torch.testing.assert_close(sig.rel + sig.irrel, torch.sigmoid(a + b), atol=1e-14, rtol=0)
    # three players, bias first: the Shapley value over the orders (c, a, b) and (c, b, a)
    share_a, share_b, share_c = shapley_three(torch.sigmoid, a, b, c)
    terms = dict(a=a, b=b, c=c)
    phi3 = _shapley(lambda S: torch.sigmoid(sum((terms[p] for p in S), torch.zeros_like(a))) if S else
                    torch.zeros_like(a), "abc", first="c")
    torch.testing.assert_close(share_a, phi3["a"], atol=1e-14, rtol=0)
    torch.testing.assert_close(share_b, phi3["b"], atol=1e-14, rtol=0)
    torch.testing.assert_close(share_c, phi3["c"], atol=1e-14, rtol=0)
    torch.testing.assert_close(share_a + share_b + share_c, torch.sigmoid(a + b + c), atol=1e-14, rtol=0)
    sb, sa, _ = shapley_three(torch.sigmoid, b, a, c)
    torch.testing.assert_close((sa, sb), (share_a, share_b), atol=1e-14, rtol=0)
    # the ReLU rule is asymmetric by design: swapping the parts does not swap the outputs
    one, minus_two = torch.tensor([1.0], dtype=D), torch.tensor([-2.0], dtype=D)
    first = relevant_first(torch.relu, one, minus_two)
    second = relevant_first(torch.relu, minus_two, one)
    assert (float(first.rel), float(first.irrel)) == (1.0, -1.0)
    assert (float(second.rel), float(second.irrel)) == (0.0, 0.0)


class WithSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.soft = nn.Softmax(dim=-1)

    def forward(self, x):
        return self.soft(self.fc(x))


class WithExp(nn.Module):
    def forward(self, x):
        return torch.exp(x) * 2.0


def test_an_op_without_a_rule_raises_naming_the_op_and_the_node():
    x = torch.randn(2, 4)
    with pytest.raises(MissingRuleError, match=r"Softmax.*'soft'"):
        cd(WithSoftmax().eval(), x, torch.ones(4))
    with pytest.raises(MissingRuleError, match=r"torch\.exp.*graph node 'exp'"):
        cd(WithExp(), x, torch.ones(4))
    assert issubclass(MissingRuleError, wf.WherefromError)


def test_register_rule_adds_an_op_and_a_module_type():
    from wherefrom.features import Parts
    from wherefrom.features.shapley import shapley_two as two

    register_rule(torch.exp, lambda x: two(torch.exp, x.rel, x.irrel))
    try:
        x = torch.randn(2, 4, dtype=D)
        rel, irrel = cd(WithExp(), x, torch.tensor([1.0, 0, 1, 0], dtype=D))
        torch.testing.assert_close(rel + irrel, 2 * torch.exp(x), atol=1e-12, rtol=0)
    finally:
        unregister_rule(torch.exp)

    class Doubler(nn.Module):                  # untraceable forward: a leaf once it has a rule
        def forward(self, x):
            return x * 2 if bool(x.sum() > -1e9) else x

    register_rule(Doubler, lambda module, x: Parts(2 * x.rel, 2 * x.irrel))
    try:
        model = nn.Sequential(nn.Linear(3, 3), Doubler()).to(D)
        rel, irrel = cd(model, torch.randn(2, 3, dtype=D), torch.tensor([1.0, 0, 0], dtype=D))
        assert rel.shape == (2, 3)
    finally:
        unregister_rule(Doubler)
    with pytest.raises(DecompositionError, match="could not trace"):
        cd(nn.Sequential(nn.Linear(3, 3), Doubler()), torch.randn(2, 3), torch.ones(3))


def test_bad_inputs_raise_clear_errors():
    model = randomise_batchnorm(EveryRuleCNN())
    x = torch.randn(2, 2, 10, 10)
    with pytest.raises(DecompositionError, match="does not broadcast"):
        cd(model, x, torch.ones(7, 10))
    with pytest.raises(DecompositionError, match="training mode"):
        cd(model.train(), x, torch.ones(10, 10))
    with pytest.raises(MissingRuleError, match="product of two input-dependent"):
        cd(_Square(), torch.randn(2, 3), torch.ones(3))


class _Square(nn.Module):
    def forward(self, x):
        return operator.mul(x, x)


def test_cd_runs_on_the_data_device_and_keeps_dtype():
    model = nn.Sequential(nn.Linear(3, 2)).to(D)
    x = torch.randn(4, 3, dtype=D)
    rel, _irrel = cd(model, x, np.array([1, 0, 1]))
    assert rel.dtype == D and rel.device == x.device


class TransformerStyleMLP(nn.Module):
    """Linear / LayerNorm / GELU / SiLU / RMSNorm / Softplus / ELU, modules and functional forms, with a residual."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.norm1 = nn.LayerNorm(8)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(8, 8)
        self.rms = nn.RMSNorm(8)
        self.soft = nn.Softplus(beta=2.0)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.gelu(self.norm1(self.fc1(x)))
        h = h + F.silu(self.fc2(h))
        h = F.layer_norm(h, (8,), self.norm1.weight * 0.5, None, 1e-3)
        h = F.gelu(self.rms(h), approximate="tanh") + F.elu(h, 0.7)
        return self.out(self.soft(h))


def test_completeness_at_every_node_with_layer_norm_gelu_and_friends():
    torch.manual_seed(3)
    model = TransformerStyleMLP().to(D)
    with torch.no_grad():
        for m in (model.norm1, model.rms):
            m.weight.uniform_(0.5, 1.5)
        model.norm1.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 6, dtype=D)
    masks = (torch.rand(5, 1, 6, dtype=D) > 0.5).to(D)
    masks[4] = torch.rand(1, 6, dtype=D)
    _check_every_node(model, x, masks)
    rel, _ = cd(model, x, torch.ones(6, dtype=D))
    torch.testing.assert_close(rel, model(x).detach(), atol=1e-12, rtol=0)


def test_layer_norm_rule_is_the_normalisation_with_frozen_statistics():
    x = torch.randn(4, 5, dtype=D)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=D)
    var, _ = torch.var_mean(x, dim=-1, unbiased=False, keepdim=True)
    for norm, centred in ((nn.LayerNorm(5, elementwise_affine=False, eps=1e-4), True),
                          (nn.RMSNorm(5, elementwise_affine=False, eps=1e-4), False)):
        rel, irrel = cd(norm.to(D), x, mask)
        part = x * mask
        if centred:
            expected = (part - part.mean(-1, keepdim=True)) / torch.sqrt(var + 1e-4)
        else:
            expected = part / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-4)
        torch.testing.assert_close(rel, expected, atol=1e-12, rtol=0)
        torch.testing.assert_close(rel + irrel, norm(x), atol=1e-12, rtol=0)
    # a relevant part that is constant over the normalised features gets nothing under LayerNorm
    flat = torch.full((2, 5), 3.0, dtype=D)
    rel, _ = cd(nn.LayerNorm(5, elementwise_affine=False).to(D), flat, torch.ones(5, dtype=D))
    torch.testing.assert_close(rel, torch.zeros_like(rel), atol=1e-12, rtol=0)


@pytest.mark.parametrize("module", [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.ELU(0.5),
                                    nn.Softplus(beta=3.0), nn.Mish()])
def test_smooth_activation_rules_are_the_two_player_shapley_value(module):
    x = torch.randn(3, 7, dtype=D)
    mask = (torch.rand(7) > 0.5).to(D)
    rel, irrel = cd(module, x, mask)
    b, g = x * mask, x * (1 - mask)
    zero = module(torch.zeros((), dtype=D))
    share_b = 0.5 * (module(b) - zero + module(x) - module(g))
    share_g = 0.5 * (module(g) - zero + module(x) - module(b))
    torch.testing.assert_close(rel + irrel, module(x), atol=1e-12, rtol=0)
    if float(zero) == 0.0:
        torch.testing.assert_close(rel, share_b, atol=1e-12, rtol=0)
        torch.testing.assert_close(irrel, share_g, atol=1e-12, rtol=0)
    else:  # f(0) is split like a bias: the relevant share stays between the bare Shapley value and it plus f(0)
        assert torch.all((rel - share_b) * (zero - (rel - share_b)) >= -1e-12)
    assert torch.all(irrel.isfinite())


class TinySelfAttention(nn.Module):
    """One head of self-attention over a [N, T, d] sequence, with a LayerNorm and a residual."""

    def __init__(self, d: int = 4, value_bias: bool = True, residual: bool = True):
        super().__init__()
        self.q, self.k = nn.Linear(d, d), nn.Linear(d, d)
        self.v = nn.Linear(d, d, bias=value_bias)
        self.out = nn.Linear(d, 2, bias=value_bias)
        self.residual = residual

    def forward(self, x):
        a = F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x))
        if self.residual:
            a = F.layer_norm(a + x, (x.shape[-1],))
        return self.out(a.mean(dim=1))


def test_attention_rule_freezes_the_weights_at_the_full_input():
    torch.manual_seed(5)
    x = torch.randn(2, 5, 4, dtype=D)
    masks = (torch.rand(4, 1, 5, 4, dtype=D) > 0.5).to(D)
    _check_every_node(TinySelfAttention().to(D), x, masks, min_nodes=8)
    # without biases and residual the relevant part is W_o mean_t(A W_v (m ⊙ x)) with A from the full input
    model = TinySelfAttention(value_bias=False, residual=False).to(D)
    mask = masks[0, 0]
    rel, irrel = cd(model, x, mask)
    weights = torch.softmax(model.q(x) @ model.k(x).transpose(1, 2) / 2.0, dim=-1)
    expected = model.out((weights @ model.v(x * mask)).mean(dim=1))
    torch.testing.assert_close(rel, expected.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(rel + irrel, model(x).detach(), atol=1e-12, rtol=0)
