"""Contextual decomposition of ``nn.LSTM`` (any number of layers, batch_first or not, one or two directions).

PyTorch gate order ``i, f, g, o``; ``b = b_ih + b_hh``. At step ``t`` with decomposed input ``x_t = xβ + xγ`` and
previous states ``h = hβ + hγ``, ``c = cβ + cγ`` (initial states zero):

* pre-activations ``zβ = W xβ + V hβ``, ``zγ = W xγ + V hγ``; for the gates ``i, f`` (sigmoid) and ``g`` (tanh) the
  three-player rule with the bias first (:func:`~wherefrom.features.shapley.shapley_three`) gives
  ``(iβ, iγ, i_b)``, ``(fβ, fγ, f_b)``, ``(gβ, gγ, g_b)``;
* the output gate is not decomposed: ``o = σ(zβ + zγ + b_o)``;
* ``cβ' = iβ⊙(gβ + g_b) + i_b⊙gβ + r_t⊙i_b⊙g_b + (fβ + f_b)⊙cβ``,
  ``cγ' = iγ⊙(gβ + gγ + g_b) + (iβ + i_b)⊙gγ + (1 − r_t)⊙i_b⊙g_b + (fβ + fγ + f_b)⊙cγ + fγ⊙cβ``;
* ``hβ' = o⊙½[tanh(cβ') + tanh(cβ' + cγ') − tanh(cγ')]``, ``hγ' = o⊙½[tanh(cγ') + tanh(cβ' + cγ') − tanh(cβ')]``.

``r_t`` is the share of the bias×bias term ``i_b⊙g_b`` given to the relevant part: the bias-split share
``|W_g xβ| / (|W_g xβ| + |W_g xγ|)`` of the step's input in the candidate gate. For a first layer fed by a token
mask this is exactly ``1[t ∈ S]``, the ACD code's convention (the CD paper's eq. 32 always gives it to γ); deeper
layers get the proportional generalisation. The sums are exact: ``hβ + hγ`` and ``cβ + cγ`` equal ``nn.LSTM``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wherefrom.features.parts import Parts, TokenPositions, relevant_share
from wherefrom.features.registry import DecompositionError, MissingRuleError, register_rule


@dataclass
class LayerDecomposition:
    """CD of one LSTM layer and direction over a batch-first sequence.

    ``out``: hidden states of every step ``[N, T, H]`` (decomposed); ``h``, ``c``: final states ``[N, H]``;
    ``steps``: when asked for, the ``(h, c)`` parts after each processed step, in processing order.
    """

    out: Parts
    h: Parts
    c: Parts
    steps: list[tuple[Parts, Parts]] | None = None


_SCALES: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def _gate_scale(hidden: int, like: Tensor) -> Tensor:
    """``s`` with ``σ(s·z)·s − (s − 1)`` = sigmoid on the i, f, o chunks and tanh on the g chunk (cached)."""
    key = (hidden, like.dtype, like.device)
    if key not in _SCALES:
        s = torch.ones(4 * hidden, dtype=like.dtype, device=like.device)
        s[2 * hidden:3 * hidden] = 2.0
        _SCALES[key] = s
    return _SCALES[key]


def _full_hidden(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor:
    """Hidden states ``[N, T, H]`` of the plain (undecomposed) one-layer LSTM, by PyTorch's own kernel."""
    n, hidden = x.shape[0], w_hh.shape[1]
    h0 = x.new_zeros(1, n, hidden)
    params = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None and b_hh is not None else [])
    out, _, _ = torch.lstm(x, (h0, h0), params, len(params) == 4, 1, 0.0, False, False, True)
    return out


def lstm_layer(x: Parts, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None, b_hh: Tensor | None = None,
               reverse: bool = False, keep_steps: bool = False) -> LayerDecomposition:
    """Decompose one LSTM layer (one direction) over ``x`` with parts of shape ``[N, T, D]`` (batch first).

    The full trajectory (gates, ``c_t``, ``h_t``) is the plain LSTM's, run by PyTorch's kernel; the loop carries
    only the relevant parts, by the equations of the module docstring. The irrelevant parts are the full states
    minus the relevant ones — the same sum of terms as the γ equations (checked against them in the tests).
    Pre-activations are linear, so ``zγ = z − zβ``; the tanh of the g gate is computed as ``2σ(2z) − 1`` so that
    one sigmoid call serves all gates.
    """
    if reverse:
        flipped = lstm_layer(x.map(lambda t: t.flip(1)), w_ih, w_hh, b_ih, b_hh, False, keep_steps)
        return LayerDecomposition(flipped.out.map(lambda t: t.flip(1)), flipped.h, flipped.c, flipped.steps)
    n, steps_total, _ = x.rel.shape
    hidden = w_hh.shape[1]
    b = (b_ih + b_hh) if b_ih is not None and b_hh is not None else w_ih.new_zeros(4 * hidden)
    scale = _gate_scale(hidden, b)
    offset = scale - 1

    x_full = x.rel + x.irrel
    if n > 1 and bool((x_full == x_full[:1]).all()):
        x_full = x_full[:1]            # every row explains the same input (one example, many masks): run it once
    rows = x_full.shape[0]
    h_full = _full_hidden(x_full, w_ih, w_hh, b_ih, b_hh)                       # [rows, T, H]
    h_prev = torch.cat((h_full.new_zeros(rows, 1, hidden), h_full[:, :-1]), dim=1)
    pre_rel = x.rel @ w_ih.T                                                     # [N, T, 4H]
    z_full = x_full @ w_ih.T + h_prev @ w_hh.T                                   # without bias, [rows, T, 4H]
    gates = torch.sigmoid((z_full + b) * scale) * scale - offset                 # full gates
    act_b = torch.sigmoid(scale * b) * scale - offset                            # activations of the bias alone
    i_b, g_b = act_b[:hidden], act_b[2 * hidden:3 * hidden]
    g_chunk = slice(2 * hidden, 3 * hidden)
    flat = (n * steps_total, hidden)
    r_bias = relevant_share(pre_rel[..., g_chunk].reshape(flat), (x.irrel @ w_ih[g_chunk].T).reshape(flat))
    bias_bias_rel = (r_bias * (i_b * g_b)).reshape(n, steps_total, hidden)      # r_t ⊙ i_b ⊙ g_b
    i_full, f_full, g_full, o_full = (g.transpose(0, 1) for g in gates.split(hidden, dim=2))   # [T, rows, H]
    c_steps, c_prev = [], h_full.new_zeros(rows, hidden)
    for ig, f in zip((i_full * g_full).unbind(0), f_full.unbind(0)):
        c_prev = torch.addcmul(ig, f, c_prev)
        c_steps.append(c_prev)
    c_full = torch.stack(c_steps)                                                # [T, rows, H]
    half_o = 0.5 * o_full
    half_o_tanh_c = half_o * torch.tanh(c_full)                                  # ½·h_full

    # Relevant recursion. Before the first step where any row has a relevant input, the relevant states are
    # exactly zero: start there. Per step: sβ = (i,f,g)β + bias activations; cβ' = sβ_i⊙sβ_g − (1 − r_t)·i_b⊙g_b
    # + sβ_f⊙cβ (the expansion of the cβ' equation); hβ' = ½o⊙[tanh(cβ') − tanh(c − cβ')] + ½o⊙tanh(c).
    active = (x.rel != 0).flatten(2).any(2).any(0).nonzero()
    first = int(active[0]) if len(active) else steps_total
    zr_pre = ((pre_rel + b) * scale).transpose(0, 1).unbind(0)                  # s⊙(W xβ + b)
    z_both = ((z_full + 2 * b) * scale).transpose(0, 1).unbind(0)               # s⊙(z + 2b) = Zβ + Zγ
    offset_d = (0.5 * (gates - act_b) + act_b).transpose(0, 1).unbind(0)        # ½(f(z+b) − f(b)) + f(b)
    c_minus = (bias_bias_rel - i_b * g_b).transpose(0, 1).unbind(0)            # −(1 − r_t)·i_b⊙g_b
    w_scaled = w_hh.T * scale
    half_scale = 0.5 * scale
    c_list, ho_list, hot_list = c_full.unbind(0), half_o.unbind(0), half_o_tanh_c.unbind(0)

    zeros = x.rel.new_zeros(n, hidden)
    h_rel = c_rel = zeros
    outs: list[Tensor] = [zeros] * steps_total
    kept: list[tuple[Parts, Parts]] | None = [] if keep_steps else None
    for t in range(steps_total):
        if t >= first:
            z_rel = zr_pre[t] if t == first else torch.addmm(zr_pre[t], h_rel, w_scaled)
            diff = torch.sigmoid(z_rel) - torch.sigmoid(z_both[t] - z_rel)
            sb = torch.addcmul(offset_d[t], diff, half_scale)   # relevant shares + bias activations
            c_rel = torch.addcmul(torch.addcmul(c_minus[t], sb[:, :hidden], sb[:, g_chunk]),
                                  sb[:, hidden:2 * hidden], c_rel)
            h_rel = torch.addcmul(hot_list[t], ho_list[t], torch.tanh(c_rel) - torch.tanh(c_list[t] - c_rel))
            outs[t] = h_rel
        if kept is not None:
            kept.append((Parts(h_rel, 2 * hot_list[t] - h_rel), Parts(c_rel, c_list[t] - c_rel)))
    out_rel = torch.stack(outs, dim=1)
    c_last = c_full[-1]
    return LayerDecomposition(Parts(out_rel, h_full - out_rel), Parts(h_rel, h_full[:, -1] - h_rel),
                              Parts(c_rel, c_last - c_rel), kept)


def _check_lstm(module: nn.LSTM, hx: object) -> None:
    if hx is not None:
        raise DecompositionError("CD of nn.LSTM starts from zero initial states; call the LSTM without (h0, c0).")
    if module.proj_size:
        raise MissingRuleError("CD of nn.LSTM with proj_size > 0 is not implemented; register your own rule.")
    if module.training and module.dropout > 0 and module.num_layers > 1:
        raise DecompositionError("nn.LSTM is in training mode with inter-layer dropout; call model.eval() first.")


def lstm_rule(module: nn.LSTM, x: object, hx: object = None) -> tuple[Parts, tuple[Parts, Parts]]:
    """CD rule for ``nn.LSTM``: returns ``(output, (h_n, c_n))`` decomposed, shaped like the module's output."""
    _check_lstm(module, hx)
    if isinstance(x, TokenPositions) or not isinstance(x, Parts):
        raise MissingRuleError("nn.LSTM got token ids or a packed sequence; feed it the embedded, padded input.")
    if x.rel.dim() != 3:
        raise DecompositionError("CD of nn.LSTM needs a batched input [N, T, D] (or [T, N, D]).")
    layer_in = x if module.batch_first else x.map(lambda t: t.transpose(0, 1))
    directions = 2 if module.bidirectional else 1
    h_n: list[Parts] = []
    c_n: list[Parts] = []
    for layer in range(module.num_layers):
        outs = []
        for d in range(directions):
            sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
            w_ih, w_hh = getattr(module, "weight_ih" + sfx), getattr(module, "weight_hh" + sfx)
            b_ih = getattr(module, "bias_ih" + sfx) if module.bias else None
            b_hh = getattr(module, "bias_hh" + sfx) if module.bias else None
            dec = lstm_layer(layer_in, w_ih, w_hh, b_ih, b_hh, reverse=(d == 1))
            outs.append(dec.out)
            h_n.append(dec.h)
            c_n.append(dec.c)
        layer_in = outs[0] if directions == 1 else Parts(torch.cat([o.rel for o in outs], -1),
                                                           torch.cat([o.irrel for o in outs], -1))
    out = layer_in if module.batch_first else layer_in.map(lambda t: t.transpose(0, 1))
    h = Parts(torch.stack([p.rel for p in h_n]), torch.stack([p.irrel for p in h_n]))
    c = Parts(torch.stack([p.rel for p in c_n]), torch.stack([p.irrel for p in c_n]))
    return out, (h, c)


register_rule(nn.LSTM, lstm_rule)
