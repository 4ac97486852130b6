"""The closed-form output Hessian of softmax cross-entropy against autodiff, and the paths that use it."""

import torch
import torch.nn.functional as F

import wherefrom as wf
from curvature_refs import classification_data, dense_ggn, mlp
from wherefrom.curvature import TrainingObjective
from wherefrom.curvature.gauss_newton import (
    autodiff_output_hessians,
    cross_entropy_output_hessians,
    cross_entropy_output_product,
    output_hessians,
)


def generic_cross_entropy(outputs, batch):
    """The same loss as ``wf.targets.cross_entropy`` but not recognised as it: the autodiff path."""
    return F.cross_entropy(outputs, batch[1].long(), reduction="none")


def test_closed_form_equals_autodiff_including_ignored_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = torch.tensor([0, 4, -100, 2, 1, 3])  # -100: F.cross_entropy's ignore_index, a zero loss
    batch = (torch.zeros(6, 1), y)
    ref = autodiff_output_hessians(generic_cross_entropy, logits, batch)
    closed = cross_entropy_output_hessians(logits, batch)
    torch.testing.assert_close(closed, ref, rtol=1e-12, atol=1e-14)
    assert float(closed[2].abs().max()) == 0.0
    torch.testing.assert_close(output_hessians(wf.targets.cross_entropy, logits, batch), closed)
    U = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)  # leading vector dimension
    torch.testing.assert_close(cross_entropy_output_product(logits, batch, U), torch.einsum("bij,mbj->mbi", ref, U),
                               rtol=1e-12, atol=1e-14)


def test_gauss_newton_products_and_kfac_factors_equal_the_autodiff_path():
    X, y = classification_data()
    loader = wf.data.as_loader((X, y), batch_size=7)
    closed_task = wf.Task(mlp(), weight_decay=0.1)
    generic_task = wf.Task(mlp(), weight_decay=0.1, loss_fn=generic_cross_entropy)
    V = torch.randn(4, closed_task.num_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    products = [TrainingObjective(t, loader, t.state(), curvature="ggn", structured=False).hvp(V)
                for t in (closed_task, generic_task)]
    torch.testing.assert_close(products[0], products[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(products[0], V @ dense_ggn(closed_task, X, y), rtol=1e-10, atol=1e-12)
    dense = []
    for t in (closed_task, generic_task):
        solver = wf.curvature.make_solver("ekfac", 0.01)
        solver.fit(TrainingObjective(t, loader, t.state(), curvature="ggn"))
        dense.append(solver.dense())
    torch.testing.assert_close(dense[0], dense[1], rtol=1e-10, atol=1e-12)
