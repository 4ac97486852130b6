"""The million-example workload: augmented MNIST of any size, a small MLP and its short seeded training recipe.

    train, test = wf.scale.workload.datasets(n=1_000_000, n_test=1000)   # generated on the fly from two seeds
    model = wf.scale.workload.train_mlp(train)                             # one pass of Adam, batches of 1024

Training images are :class:`~wherefrom.data.augmented.AugmentedMNIST` of the shipped 5000 training images (seed 0);
test queries are augmentations of the shipped 500 *test* images (seed 1), so no query is a training image. The
model is ``784 → hidden → 10`` with a ReLU (50,890 parameters at ``hidden = 64``): small enough that per-example
features of a million examples are cheap. ``benchmarks/scale_million.py`` featurises, stores and searches it.
"""

from __future__ import annotations

import torch
from torch import nn

from wherefrom.data.augmented import AugmentedMNIST
from wherefrom.errors import WherefromError
from wherefrom.progress import track


def datasets(n: int = 1_000_000, n_test: int = 1000, seed: int = 0) -> tuple[AugmentedMNIST, AugmentedMNIST]:
    """The training set (``n`` augmentations of the shipped training images, seed ``seed``) and ``n_test``
    queries (augmentations of the shipped test images, seed ``seed + 1``)."""
    return AugmentedMNIST(n, seed), AugmentedMNIST(n_test, seed + 1, split="test")


def mnist_mlp(hidden: int = 64) -> nn.Sequential:
    """``Linear(784, hidden) → ReLU → Linear(hidden, 10)``."""
    return nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train_mlp(train: AugmentedMNIST, examples: int | None = None, batch_size: int = 1024, lr: float = 4e-3,
              hidden: int = 64, seed: int = 0, progress: bool | None = None) -> nn.Sequential:
    """A :func:`mnist_mlp` trained by one pass of Adam (learning rate ``lr``, cosine-decayed to 0) over the first
    ``examples`` training examples (default and at most ``len(train)``) in a seeded random order, mean
    cross-entropy. One pass over the million takes about 25 s on one CPU thread and reaches about 95 % accuracy on
    the augmented test queries."""
    n = len(train) if examples is None else min(int(examples), len(train))
    if n < 1 or batch_size < 1:
        raise WherefromError(f"examples and batch_size must be >= 1, got {examples} and {batch_size}.")
    torch.manual_seed(seed)
    model = mnist_mlp(hidden)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    steps = -(-n // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for s in track(range(steps), "training the MLP", steps, progress):
        x, y = train.block(order[s * batch_size:(s + 1) * batch_size])
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, data: AugmentedMNIST, batch_size: int = 4096) -> float:
    """Fraction of ``data`` the model classifies right."""
    hits = 0
    for start in range(0, len(data), batch_size):
        x, y = data.block(range(start, min(start + batch_size, len(data))))
        hits += int((model(x).argmax(1) == y).sum())
    return hits / len(data)
