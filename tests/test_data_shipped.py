"""Shipped MNIST subsets: standardised by default; ``denormalize`` and ``standardize=False`` give displayable images."""

import numpy as np
import pytest
import torch

from wherefrom.data import denormalize, load_subset, mnist_datasets
from wherefrom.errors import WherefromError


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_denormalize_gives_back_the_original_pixels(name):
    raw = load_subset(name)
    train, test = mnist_datasets(name, n_train=64, n_test=8)
    x = train.tensors[0]
    assert x.min() < -0.1 and x.max() > 1.5  # standardised, not [0, 1]
    img = denormalize(x, name)
    assert img.shape == (64, 28, 28) and float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert np.array_equal((img * 255).round().to(torch.uint8).numpy(), raw.train_images[:64])
    # [n, 1, 28, 28] images and a single image work too
    conv, _ = mnist_datasets(name, flatten=False, n_train=4, n_test=1)
    assert np.array_equal((denormalize(conv.tensors[0], name) * 255).round().to(torch.uint8).numpy(),
                          raw.train_images[:4])
    assert denormalize(test.tensors[0][3], name).shape == (28, 28)


def test_standardize_false_scales_pixels_to_unit_interval():
    raw = load_subset("mnist")
    train, _ = mnist_datasets("mnist", n_train=16, n_test=1, standardize=False)
    expected = torch.from_numpy(raw.train_images[:16].reshape(16, -1).astype(np.float32)) / 255.0
    assert torch.equal(train.tensors[0], expected)


def test_denormalize_refuses_other_shapes_and_names():
    with pytest.raises(WherefromError, match=r"\[5, 10\]|\(5, 10\)"):
        denormalize(torch.zeros(5, 10))
    with pytest.raises(WherefromError, match="fashion-mnist"):
        denormalize(torch.zeros(1, 784), "cifar")
