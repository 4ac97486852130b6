"""Benchmark settings: data + model factory + training recipe, deterministic by seed.

A :class:`Setting` is pure configuration (hashable to a content key); training and ground truth live in
:mod:`wherefrom.bench.train` and :mod:`wherefrom.bench.groundtruth`.

- ``mnist-lr``: MNIST, first 5000 train / 500 test; ``Linear(784, 10)`` (7,850 params); 3 SGD warm-up epochs
  (lr 0.01, batch 32, the trajectory), then the exact full-batch optimum (L-BFGS, then L-BFGS preconditioned by
  ``H⁻¹``) to ``‖∇R‖₂ ≤ 1e-10``; wd 1e-2 on all parameters; float64.
- ``mnist-mlp``: MNIST 5000 / 500; ``784→128→ReLU→Dropout(p)→10`` (p = 0 unless ``dropout=`` is given); seeded
  SGD (lr 0.01, momentum 0.9), 20 epochs, batch 64, wd 1e-4; float32.
- ``fmnist-mlp``: Fashion-MNIST 5000 / 500, as ``mnist-mlp``.
- ``digits-lr``: sklearn digits, first 1200 / next 597; ``Linear(64, 10)``; as ``mnist-lr`` (fast).
- ``mnist-mlp-sgd``: MNIST 5000 / 500; ``784→128→ReLU→10``; ``mnist-mlp``'s SGD (lr 0.01, momentum 0.9, wd 1e-4,
  batch 64) for 3 epochs; float64; the run is recorded step by step (trajectory attribution) and the ground truth
  retrains *the same run* with removed examples' loss weights set to 0 (LOO of 100 examples, LDS at 1 % and 50 %
  drop).
- ``mnist-mlp-sgd-tanh``: the smooth recipe: ``784→128→tanh→10``, batch 256, lr 0.04, 4 epochs; otherwise as above.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from wherefrom.data import digits_datasets, mnist_datasets
from wherefrom.errors import WherefromError, unknown_name
from wherefrom.eval.metrics import flip_labels
from wherefrom.task import Task


@dataclass(frozen=True)
class Recipe:
    """A deterministic training recipe.

    Attributes:
        kind: ``"lr-exact"`` (SGD warm-up epochs recorded as a trajectory, then the exact optimum of the
            full-batch objective ``(1/n)Σℓ_i + (wd/2)‖θ‖²`` to ``‖∇R‖₂ ≤ tol``), ``"sgd"`` (minibatch SGD with
            momentum, or Adam, for ``epochs`` epochs from a seeded initialisation; the per-epoch data order is
            drawn from a generator seeded with ``seed``) or ``"trajectory"`` (the ``sgd`` recipe, every step
            recorded; its ground truth retrains the same run with example weights, see
            :mod:`wherefrom.bench.weighted`).
        weight_decay: ``wd`` of the L2 term (on every parameter; it is also the Task's ``weight_decay``).
        epochs, lr, batch_size, momentum, optimizer: minibatch phase (``optimizer`` ``"sgd"`` or ``"adam"``).
        tol: gradient-norm tolerance of the exact phase (``lr-exact`` only).
        seed: seed of the initialisation and of the data order.
        dropout: dropout probability of the MLP's hidden layer (0 = no dropout layer is active in training).
        dtype: ``"float64"`` or ``"float32"``.
    """

    kind: str = "sgd"
    weight_decay: float = 0.0
    epochs: int = 20
    lr: float = 0.01
    batch_size: int = 64
    momentum: float = 0.9
    optimizer: str = "sgd"
    tol: float = 1e-10
    seed: int = 0
    dropout: float = 0.0
    dtype: str = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32


class LogisticRegression(nn.Module):
    """Multinomial logistic regression ``fc(x)`` on flattened inputs."""

    def __init__(self, d_in: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: the (flattened) input itself."""
        return x.flatten(1)


class MLP(nn.Module):
    """``fc1 → ReLU (or tanh) → Dropout(p) → fc2`` on flattened inputs. The dropout layer is named ``drop``."""

    def __init__(self, d_in: int, hidden: int, n_classes: int, dropout: float = 0.0,
                 activation: str = "relu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, n_classes)
        self.act = torch.tanh if activation == "tanh" else torch.relu

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: post-activation hidden activations ``[B, hidden]``."""
        return self.act(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.features(x)))


@dataclass(frozen=True)
class Setting:
    """A benchmark setting: which data, which model, which recipe.

    Attributes:
        name: the registry name. data: ``"mnist"``, ``"fashion-mnist"`` or ``"digits"``.
        model: ``"lr"``, ``"mlp"`` (ReLU) or ``"mlp-tanh"``. hidden: MLP width.
        n_train / n_test: how many of the first examples.
        label_noise / noise_seed: fraction of training labels flipped (seeded) for noisy-label detection.
        recipe: the :class:`Recipe`. description: one line for ``wherefrom bench --list``.
        method_options: per-method default options this setting passes to method factories (documented, not
            tuned on the ground truth), e.g. ``{"if-explicit": {"damping": 0.0}}`` where ``wd`` makes ``H`` positive
            definite.
        loo_default: LOO ground truth for the first this many training examples when none are asked for
            (``None``: all of them). lds_fractions: the LDS subset fractions ``α`` (kept) reported by default.
    """

    name: str
    data: str
    model: str
    n_train: int
    n_test: int
    recipe: Recipe
    hidden: int = 128
    label_noise: float = 0.0
    noise_seed: int = 0
    description: str = ""
    method_options: dict = field(default_factory=dict, hash=False, compare=False)
    loo_default: int | None = field(default=None, compare=False)
    lds_fractions: tuple[float, ...] = field(default=(0.5,), compare=False)

    # ------------------------------------------------------------------ data and model
    @property
    def is_lr(self) -> bool:
        return self.model == "lr"

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        """``(train, test)`` TensorDatasets ``(x [n, d], y [n])`` in the recipe's dtype."""
        dtype = self.recipe.torch_dtype
        if self.data == "digits":
            tr, te = digits_datasets(n_train=self.n_train, dtype=dtype)
            te = TensorDataset(*(t[: self.n_test] for t in te.tensors))
        else:
            tr, te = mnist_datasets(self.data, flatten=True, dtype=dtype, n_train=self.n_train, n_test=self.n_test)
        if self.label_noise > 0:
            X, y = tr.tensors
            new, _ = flip_labels(y, self.label_noise, self.n_classes, self.noise_seed)
            tr = TensorDataset(X, torch.from_numpy(new))
        return tr, te

    def flipped_mask(self) -> np.ndarray:
        """``[n_train]`` which training labels :meth:`datasets` flipped (all False without label noise)."""
        if self.label_noise <= 0:
            return np.zeros(self.n_train, dtype=bool)
        return flip_labels(np.zeros(self.n_train, dtype=np.int64), self.label_noise, self.n_classes,
                           self.noise_seed)[1]

    @property
    def n_classes(self) -> int:
        return 10

    @property
    def d_in(self) -> int:
        return 64 if self.data == "digits" else 784

    def make_model(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised model (seeded with ``seed``, default the recipe's)."""
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.recipe.seed if seed is None else seed)
        try:
            if self.is_lr:
                model: nn.Module = LogisticRegression(self.d_in, self.n_classes)
            else:
                model = MLP(self.d_in, self.hidden, self.n_classes, self.recipe.dropout,
                            "tanh" if self.model == "mlp-tanh" else "relu")
        finally:
            torch.random.set_rng_state(gen_state)
        return model.to(self.recipe.torch_dtype)

    @property
    def last_layer(self) -> str:
        """Name of the final Linear layer."""
        return "fc" if self.is_lr else "fc2"

    def make_task(self, state: dict[str, torch.Tensor] | None = None, target_fn=None) -> Task:
        """A :class:`Task` on a model loaded with ``state`` (eval mode), with the recipe's weight decay."""
        model = self.make_model()
        if state is not None:
            model.load_state_dict(state)
        model.eval()
        return Task(model, target_fn=target_fn, weight_decay=self.recipe.weight_decay)

    # ------------------------------------------------------------------ identity
    def spec(self) -> dict:
        """Everything that determines trained models and ground truth (JSON-serialisable)."""
        d = dataclasses.asdict(self)
        d.pop("description")
        d.pop("method_options")
        d.pop("loo_default")
        d.pop("lds_fractions")
        return d

    def key(self) -> str:
        """Content hash (16 hex digits) of :meth:`spec` and of the wherefrom ground-truth format version."""
        blob = json.dumps({"spec": self.spec(), "format": GROUND_TRUTH_FORMAT}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **changes) -> Setting:
        """A copy with fields (or recipe fields, e.g. ``dropout=0.1``) changed."""
        recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
        rchanges = {k: v for k, v in changes.items() if k in recipe_fields}
        schanges = {k: v for k, v in changes.items() if k not in recipe_fields}
        recipe = dataclasses.replace(self.recipe, **rchanges) if rchanges else self.recipe
        return dataclasses.replace(self, recipe=recipe, **schanges)


GROUND_TRUTH_FORMAT = 1

_LR = Recipe(kind="lr-exact", weight_decay=1e-2, epochs=3, lr=0.01, batch_size=32, momentum=0.0, tol=1e-10,
             dtype="float64")
_MLP = Recipe(kind="sgd", weight_decay=1e-4, epochs=20, lr=0.01, batch_size=64, momentum=0.9, dtype="float32")
_EXACT_IF = {"if-explicit": {"damping": 0.0}, "if-cg": {"damping": 0.0}, "if-lissa": {"damping": 0.0}}

# digits-lr has p = 650 parameters: TRAK's default 512-d projection makes its kernel ΦᵀΦ nearly singular (the margin
# gradients span at most 9·65 = 585 directions), its scores are dominated by the smallest eigenvalues and LDS stays
# at 0.31 for 1, 10 or 50 models; at k = 64 (≤ min(n, p)/4) it is 0.54 for one model and 0.85 for ten.
_DIGITS_LR = {**_EXACT_IF, **{name: {"proj_dim": 64} for name in ("trak", "trak-1", "trak-10", "trak-50")}}

# Trajectory settings: float64 (the effects of 1 % drops are tiny), every step recorded.
# The ReLU recipe is mnist-mlp's (lr 0.01, momentum 0.9, wd 1e-4, batch 64) for 3 epochs; the smooth one scales the
# learning rate linearly with the batch (0.04 at batch 256).
_TRAJ_RELU = Recipe(kind="trajectory", weight_decay=1e-4, epochs=3, lr=0.01, batch_size=64, momentum=0.9,
                    dtype="float64")
_TRAJ_TANH = Recipe(kind="trajectory", weight_decay=1e-4, epochs=4, lr=0.04, batch_size=256, momentum=0.9,
                    dtype="float64")

# The MLP Hessian is indefinite: HVP solvers use the (positive semi-definite) Gauss-Newton matrix (λ stays the
# class default 0.01; the presets themselves are in wherefrom.bench.presets).
_MLP_IF = {name: {"curvature": "ggn"} for name in ("if-explicit", "if-cg", "if-lissa")}

SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("mnist-lr", "mnist", "lr", 5000, 500, _LR,
                description="MNIST 5000/500, logistic regression 784→10 trained to its exact L2 optimum",
                method_options=_EXACT_IF),
        Setting("mnist-mlp", "mnist", "mlp", 5000, 500, _MLP,
                description="MNIST 5000/500, MLP 784→128→10, seeded SGD 20 epochs",
                method_options=_MLP_IF),
        Setting("fmnist-mlp", "fashion-mnist", "mlp", 5000, 500, _MLP,
                description="Fashion-MNIST 5000/500, MLP 784→128→10, seeded SGD 20 epochs",
                method_options=_MLP_IF),
        Setting("digits-lr", "digits", "lr", 1200, 597, _LR,
                description="sklearn digits 1200/597, logistic regression 64→10 at its exact L2 optimum (fast)",
                method_options=_DIGITS_LR),
        Setting("mnist-mlp-sgd", "mnist", "mlp", 5000, 500, _TRAJ_RELU,
                description="MNIST 5000/500, MLP 784→128→ReLU→10, recorded SGD (batch 64, 3 epochs); "
                            "truth: the same run, examples zeroed",
                method_options=_MLP_IF, loo_default=100, lds_fractions=(0.99, 0.5)),
        Setting("mnist-mlp-sgd-tanh", "mnist", "mlp-tanh", 5000, 500, _TRAJ_TANH,
                description="MNIST 5000/500, MLP 784→128→tanh→10, recorded SGD (batch 256, 4 epochs); "
                            "truth: the same run, examples zeroed",
                method_options=_MLP_IF, loo_default=100, lds_fractions=(0.99, 0.5)),
    ]
}


def setting_names() -> list[str]:
    return sorted(SETTINGS)


def get_setting(name: str | Setting, **overrides) -> Setting:
    """The setting registered as ``name``, optionally with fields overridden (``n_train=100``, ``dropout=0.1``)."""
    if isinstance(name, Setting):
        base = name
    else:
        if name not in SETTINGS:
            raise unknown_name("benchmark setting", name, list(SETTINGS))
        base = SETTINGS[name]
    if not overrides:
        return base
    try:
        return base.replace(**overrides)
    except TypeError as exc:
        raise WherefromError(f"Bad override for setting {base.name!r}: {exc}") from exc
