"""The nonlinearity rules of contextual decomposition, as pure functions of the parts.

Every rule returns parts that sum exactly to the activation of the summed input.

* ``relevant_first``: ``β' = f(β)``, ``γ' = f(β + γ) − f(β)`` — the asymmetric CNN rule for ReLU / LeakyReLU
  (CD paper eq. 10–11); the relevant part is switched on first.
* ``shapley_two``: the two-player Shapley value of the game ``v(S) = f(Σ_{k∈S} y_k) − f(0)``:
  ``β' = ½[f(β) − f(0) + f(β+γ) − f(γ)]``, ``γ' = ½[f(γ) − f(0) + f(β+γ) − f(β)]``, and the constant ``f(0)``
  is split like a bias (``add_bias``). For tanh (``f(0) = 0``) this is the reference ``propagate_tanh_two``.
* ``shapley_three``: the LSTM gate rule with the bias ``c`` always first: ``c`` gets ``f(c)``,
  ``a`` gets ``½[f(a+c) − f(c) + f(a+b+c) − f(b+c)]`` and ``b`` symmetrically — the average of ``a``'s marginal
  contribution over the two orders of ``(a, b)`` that follow the bias (the reference ``propagate_three``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from wherefrom.features.parts import Parts, add_bias

Activation = Callable[[Tensor], Tensor]


def relevant_first(f: Activation, rel: Tensor, irrel: Tensor) -> Parts:
    """Asymmetric rule for ``f`` with ``f(0) = 0`` (ReLU, LeakyReLU): ``(f(β), f(β+γ) − f(β))``."""
    r = f(rel)
    return Parts(r, f(rel + irrel) - r)


def shapley_two(f: Activation, rel: Tensor, irrel: Tensor) -> Parts:
    """Two-player Shapley split of ``f(β + γ)``; the constant ``f(0)`` is split like a bias."""
    f_rel, f_irrel, f_both = f(rel), f(irrel), f(rel + irrel)
    f_zero = f(rel.new_zeros(()))
    r = 0.5 * ((f_rel - f_zero) + (f_both - f_irrel))
    i = 0.5 * ((f_irrel - f_zero) + (f_both - f_rel))
    if float(f_zero) == 0.0:
        return Parts(r, i)
    return add_bias(r, i, f_zero)


def shapley_three(f: Activation, a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split ``f(a + b + c)`` into the shares of ``a``, ``b`` and the bias ``c`` (bias first, then Shapley).

    Returns ``(share_a, share_b, share_c)`` with ``share_a + share_b + share_c == f(a + b + c)``.
    """
    f_c = f(c)
    f_ac, f_bc, f_abc = f(a + c), f(b + c), f(a + b + c)
    share_a = 0.5 * ((f_ac - f_c) + (f_abc - f_bc))
    share_b = 0.5 * ((f_bc - f_c) + (f_abc - f_ac))
    return share_a, share_b, f_c.expand_as(share_a)
