"""The augmented MNIST of the million-example workload: deterministic per index, varied, made from image i mod 5000;
and the workload's whole path (train, featurise into zarr, FAISS top-k) at a tiny n."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

import wherefrom as wf
from wherefrom.data.augmented import AugmentedMNIST, splitmix64, uniforms

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def _splitmix_reference(z: int) -> int:
    """splitmix64 in Python's exact integers, reduced mod 2⁶⁴ after every step."""
    mask = (1 << 64) - 1
    z = (z + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_splitmix_matches_exact_integer_arithmetic():
    zs = [0, 1, 12345, 2**63 + 7, 2**64 - 1]
    got = splitmix64(np.array(zs, dtype=np.uint64))
    assert [int(v) for v in got] == [_splitmix_reference(z) for z in zs]
    assert _splitmix_reference(0) == 0xE220A8397B1DCDAF  # splitmix64's first output from state 0
    u = uniforms(5, np.arange(10_000), np.arange(3))
    assert u.shape == (10_000, 3) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - math.sqrt(1 / 12)) < 0.01


def test_same_index_same_image_alone_or_in_any_block_or_order():
    ds = AugmentedMNIST(1_000_000, seed=3)
    rng = np.random.default_rng(0)
    idx = np.concatenate([[0, 4999, 5000, 999_999], rng.integers(0, 1_000_000, 60)])
    x, y = ds.block(idx)
    perm = rng.permutation(len(idx))
    xp, yp = ds.block(idx[perm])
    assert torch.equal(xp, x[perm]) and torch.equal(yp, y[perm])
    for j in (0, 3, 17, len(idx) - 1):
        xi, yi = ds[int(idx[j])]
        assert torch.equal(xi, x[j]) and int(yi) == int(y[j])
    big, _ = ds.block(np.concatenate([np.arange(500), idx[:5]]))  # inside a larger, different block
    assert torch.equal(big[500:], x[:5])
    again = AugmentedMNIST(1_000_000, seed=3)  # a fresh instance: nothing but the seed is state
    assert torch.equal(again.block(idx)[0], x)


def test_pickled_dataset_ships_without_its_noise_bank_and_gives_the_same_images():
    import pickle

    ds = AugmentedMNIST(10_000, seed=2)
    x, _ = ds.block([3, 9_999])
    shipped = pickle.dumps(ds)
    assert ds._bank is not None and len(shipped) < len(pickle.dumps(ds.images)) + 1_000_000  # images, not the bank
    assert torch.equal(pickle.loads(shipped).block([3, 9_999])[0], x)


def test_loaders_give_the_block_images():
    ds = AugmentedMNIST(700, seed=1)
    plain = torch.cat([b[0] for b in DataLoader(ds, batch_size=128)])  # default collate, through __getitems__
    fast = torch.cat([b[0] for b in ds.loader(300)])
    assert torch.equal(plain, ds.block(range(700))[0]) and torch.equal(fast, plain)


def test_different_indices_and_seeds_differ():
    ds = AugmentedMNIST(20_000, seed=0)
    x, _ = ds.block(np.arange(0, 20_000, 5000))  # four augmentations of the same source image 0
    assert all(not torch.equal(x[a], x[b]) for a in range(4) for b in range(a + 1, 4))
    x0, _ = ds.block(np.arange(200))
    assert len({tuple(r.tolist()) for r in x0}) == 200
    other = AugmentedMNIST(20_000, seed=1).block(np.arange(200))[0]
    assert (other - x0).abs().amax(1).min() > 0.1


def test_image_is_a_moved_and_noised_copy_of_source_i_mod_5000():
    plain = AugmentedMNIST(12_000, rotation=0.0, shift=0.0, noise=0.0)
    train, _ = wf.data.mnist_datasets()
    idx = np.array([0, 1, 4999, 5000, 11_234])
    x, y = plain.block(idx)
    src = torch.from_numpy(idx % 5000)
    torch.testing.assert_close(x, train.tensors[0][src], rtol=0, atol=1e-5)  # identity warp: the source itself
    assert torch.equal(y, train.tensors[1][src])
    # rotation only: the bilinear rotation of the source about the image centre (a reference built independently)
    ds = AugmentedMNIST(12_000, seed=4, shift=0.0, noise=0.0, standardize=False)
    xr, yr = ds.block(idx)
    theta = (2 * uniforms(4, idx, 0)[:, 0] - 1) * math.radians(15.0)
    A = torch.tensor([[[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]] for t in theta])
    grid = F.affine_grid(A, (len(idx), 1, 28, 28), align_corners=False)
    raw, _ = wf.data.mnist_datasets(standardize=False)
    ref = F.grid_sample(raw.tensors[0][src].view(-1, 1, 28, 28), grid, align_corners=False).view(len(idx), -1)
    torch.testing.assert_close(xr, ref.clamp(0, 1), rtol=0, atol=1e-5)
    assert torch.equal(yr, train.tensors[1][src])
    assert (xr - raw.tensors[0][src]).abs().max() > 0.1  # it did move
    # noise: bounded by its level, and present
    noisy = AugmentedMNIST(12_000, seed=4, rotation=0.0, shift=0.0, noise=0.1, standardize=False).block(idx)[0]
    diff = noisy - raw.tensors[0][src]
    assert diff.abs().max() <= 0.1 * math.sqrt(6) + 1e-6 and diff.abs().max() > 0.01


def test_test_split_and_bad_input():
    q = AugmentedMNIST(1000, seed=1, split="test")
    _, test = wf.data.mnist_datasets()
    assert torch.equal(q.block([0, 500, 999])[1], test.tensors[1][[0, 0, 499]])
    with pytest.raises(wf.WherefromError, match="out of range"):
        q.block([1000])
    with pytest.raises(wf.WherefromError, match="split"):
        AugmentedMNIST(10, split="valid")
    with pytest.raises(wf.WherefromError, match="n >= 1"):
        AugmentedMNIST(0)


def test_million_workload_script_at_tiny_n(tmp_path):
    """benchmarks/scale_million.py end to end at n = 3000: the stores, the JSON, and a FAISS top-k that equals
    the float64 brute-force top-k over the stored rows."""
    out = tmp_path / "run"
    report = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "WHEREFROM_PROGRESS": "0"}
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "scale_million.py"), "--n", "3000",
                    "--n-test", "40", "--out", str(out), "--json", str(report), "--chunk", "1024",
                    "--batch-size", "256", "--proj-dim", "16", "--check"], env=env, check=True,
                   capture_output=True, text=True)
    r = json.loads(report.read_text())
    assert r["n"] == 3000 and set(r["methods"]) == {"logra", "trak-1"}
    for name, m in r["methods"].items():
        assert m["dim"] == (128 if name == "logra" else 16)
        assert m["disk_bytes"] > 0 and m["examples_per_s"] > 0
        assert m["check"]["index_agreement"] > 0.99 and m["check"]["relative_value_error"] < 1e-5
        assert os.path.isdir(m["store"])
    stages = r["stages"]
    for key in ("train (or load) MLP", "data only", "floor: forward + backward", "logra: featurise", "trak-1: top-k"):
        assert stages[key]["wall_s"] >= 0
    assert 0 < r["peak_rss_bytes"] < 4e9
