"""Specs of the two shipped feature-attribution models, for ``wherefrom features`` (and the docs' gallery).

    wherefrom features wherefrom.report.shipped_specs:sst_lstm --test 0:3 --out out --baselines
    wherefrom features wherefrom.report.shipped_specs:mnist_cnn --test 0:2 --out out --baselines

``sst_lstm``: the SST-2 LSTM of :mod:`wherefrom.features.models` on the shipped SST-2 sentences (test split; one
sentence per example, token ids ``[T]``). ``mnist_cnn``: the MNIST CNN on the shipped 500 test images.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from wherefrom.report.spec import Spec


class SentenceDataset(Dataset):
    """Sentences of one SST-2 split: item ``i`` is ``(token ids [T_i], label)``."""

    def __init__(self, split: str):
        from wherefrom.data.sst import load_sst2

        data = load_sst2()
        self.sentences, self.labels = data.sentences(split), data.labels(split)

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.sentences[i]), torch.tensor(int(self.labels[i]))


def sst_lstm() -> Spec:
    """The shipped SST-2 LSTM with the SST-2 training and test sentences (labels: negative, positive)."""
    from wherefrom.data.sst import load_sst2
    from wherefrom.features.models import load_sst_lstm

    return Spec(model=load_sst_lstm(), train=SentenceDataset("train"), test=SentenceDataset("test"),
                name="SST-2 sentiment LSTM", class_names=["negative", "positive"], input_kind="tokens",
                vocabulary=load_sst2().vocab)


def mnist_cnn(n_train: int | None = None, n_test: int | None = None) -> Spec:
    """The shipped MNIST CNN with the shipped MNIST subset (standardised images ``[1, 28, 28]``).

    ``n_train`` / ``n_test``: only the first examples (e.g. a quicker ``wherefrom attribute``; TOML ``[kwargs]``).
    """
    from wherefrom.data import mnist_datasets
    from wherefrom.data.shipped import NORMALISATION
    from wherefrom.features.models import load_mnist_cnn

    train, test = mnist_datasets("mnist", flatten=False, n_train=n_train, n_test=n_test)
    mean, std = NORMALISATION["mnist"]
    return Spec(model=load_mnist_cnn(), train=train, test=test, name="MNIST CNN",
                class_names=[str(d) for d in range(10)], denormalize=lambda x: x * std + mean)
