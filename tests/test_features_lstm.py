"""CD of nn.LSTM: step-by-step equality with PyTorch, and the cell equations written out term by term."""

import torch
from torch import nn

from wherefrom.features import cd
from wherefrom.features.lstm import lstm_layer
from wherefrom.features.parts import Parts
from wherefrom.features.shapley import shapley_three

D = torch.float64


def reference_cell_decomposition(x_rel, x_irrel, w_ih, w_hh, b, in_span):
    """The CD cell of hydra_acd.md B3, every term written out (a slow, independent reference).

    ``in_span[t]`` says whether the bias×bias term i_b⊙g_b goes to the relevant part at step t.
    Returns per step ``(h_rel, h_irrel, c_rel, c_irrel)``.
    """
    n, steps, _ = x_rel.shape
    hidden = w_hh.shape[1]
    h_rel = h_irrel = c_rel = c_irrel = torch.zeros(n, hidden, dtype=D)
    out = []
    for t in range(steps):
        zr = x_rel[:, t] @ w_ih.T + h_rel @ w_hh.T
        zi = x_irrel[:, t] @ w_ih.T + h_irrel @ w_hh.T
        gates = []
        for k, f in enumerate((torch.sigmoid, torch.sigmoid, torch.tanh)):
            sl = slice(k * hidden, (k + 1) * hidden)
            gates.append(shapley_three(f, zr[:, sl], zi[:, sl], b[sl].expand(n, hidden)))
        (i_r, i_i, i_b), (f_r, f_i, f_b), (g_r, g_i, g_b) = gates
        o = torch.sigmoid((zr + zi + b)[:, 3 * hidden:])
        bb = i_b * g_b
        new_c_rel = i_r * (g_r + g_b) + i_b * g_r + (bb if in_span[t] else 0) + (f_r + f_b) * c_rel
        new_c_irrel = (i_i * (g_r + g_i + g_b) + (i_r + i_b) * g_i + (0 if in_span[t] else bb)
                       + (f_r + f_i + f_b) * c_irrel + f_i * c_rel)
        c_rel, c_irrel = new_c_rel, new_c_irrel
        h_rel = o * 0.5 * (torch.tanh(c_rel) + torch.tanh(c_rel + c_irrel) - torch.tanh(c_irrel))
        h_irrel = o * 0.5 * (torch.tanh(c_irrel) + torch.tanh(c_rel + c_irrel) - torch.tanh(c_rel))
        out.append((h_rel, h_irrel, c_rel, c_irrel))
    return out


def test_decomposed_states_sum_to_nn_lstm_step_by_step():
    lstm = nn.LSTM(4, 3).to(D)
    x = torch.randn(2, 6, 4, dtype=D)
    mask = torch.zeros(2, 6, 1, dtype=D)
    mask[0, 2:4] = 1
    mask[1] = torch.rand(6, 1, dtype=D)
    dec = lstm_layer(Parts(x * mask, x - x * mask), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
                     lstm.bias_hh_l0, keep_steps=True)
    with torch.no_grad():
        for t in range(6):
            _, (h, c) = lstm(x[:, :t + 1].transpose(0, 1))
            h_parts, c_parts = dec.steps[t]
            torch.testing.assert_close(h_parts.rel + h_parts.irrel, h[0], atol=1e-12, rtol=0)
            torch.testing.assert_close(c_parts.rel + c_parts.irrel, c[0], atol=1e-12, rtol=0)


def test_lstm_rule_equals_the_cell_equations_for_a_token_span():
    torch.manual_seed(5)
    lstm = nn.LSTM(4, 3, batch_first=True).to(D)
    x = torch.randn(1, 7, 4, dtype=D)
    in_span = [t in (2, 3, 4) for t in range(7)]
    mask = torch.tensor(in_span, dtype=D).reshape(1, 7, 1)
    b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
    with torch.no_grad():
        dec = lstm_layer(Parts(x * mask, x - x * mask), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
                         lstm.bias_hh_l0, keep_steps=True)
        ref = reference_cell_decomposition(x * mask, x - x * mask, lstm.weight_ih_l0, lstm.weight_hh_l0, b,
                                           in_span)
    for (h_parts, c_parts), (h_rel, h_irrel, c_rel, c_irrel) in zip(dec.steps, ref):
        torch.testing.assert_close(h_parts.rel, h_rel, atol=1e-13, rtol=0)
        torch.testing.assert_close(h_parts.irrel, h_irrel, atol=1e-13, rtol=0)
        torch.testing.assert_close(c_parts.rel, c_rel, atol=1e-13, rtol=0)
        torch.testing.assert_close(c_parts.irrel, c_irrel, atol=1e-13, rtol=0)


def test_reverse_direction_and_model_level_cd_match_the_reference_equations():
    torch.manual_seed(6)

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(12, 4)
            self.lstm = nn.LSTM(4, 3, batch_first=True, bidirectional=True)

        def forward(self, ids):
            out, _ = self.lstm(self.embed(ids))
            return out[:, 0, 3:]                     # the reverse direction's state at position 0 (its last step)

    model = Tagger().to(D).eval()
    ids = torch.randint(0, 12, (1, 6))
    span = [t in (1, 2) for t in range(6)]
    rel, irrel = cd(model, ids, torch.tensor([span], dtype=D))
    x = model.embed(ids).detach().flip(1)
    mask = torch.tensor(span[::-1], dtype=D).reshape(1, 6, 1)
    ref = reference_cell_decomposition(x * mask, x - x * mask, model.lstm.weight_ih_l0_reverse,
                                       model.lstm.weight_hh_l0_reverse,
                                       (model.lstm.bias_ih_l0_reverse + model.lstm.bias_hh_l0_reverse).detach(),
                                       span[::-1])
    torch.testing.assert_close(rel, ref[-1][0].detach(), atol=1e-13, rtol=0)
    torch.testing.assert_close(irrel, ref[-1][1].detach(), atol=1e-13, rtol=0)
