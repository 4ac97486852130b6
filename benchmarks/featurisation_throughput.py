"""Throughput of gradient featurisation against the floor of one plain forward + backward pass.

On the MNIST MLP of dattri's benchmark (784-128-64-10, 109,386 parameters) and the shipped 5000 MNIST training
images, it times, per pass over the data:

- ``floor``: one ordinary training-style pass, ``loss.mean().backward()`` per batch (no per-example anything);
- ``vmap grads``: full per-example gradients ``[B, p]`` (torch.func vmap over grad), the input of every dense
  projection;
- ``vmap + <kind> k``: the same followed by a random projection to ``k`` dimensions (projection matrix cached);
- ``LoGra rank r``: per-example gradients projected layer by layer through hooks (never formed), ``k_l = r²``.

Run: ``PYTHONPATH=src python benchmarks/featurisation_throughput.py [--threads 2] [--repeats 3] [--n 5000]``.
Reports the median wall time of ``repeats`` passes and the ratio to the floor. On a machine shared with other jobs,
use one thread: two contending BLAS threads made every small kernel up to 50x slower in our measurements.
"""

from __future__ import annotations

import argparse

import torch
from timing import median_seconds
from torch import nn

import wherefrom as wf
from wherefrom.gradients import iter_gradient_blocks
from wherefrom.projection import RandomProjection
from wherefrom.sources import FullGradients, feature_blocks


def mnist_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 64), nn.ReLU(),
                         nn.Dropout(0.1), nn.Linear(64, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wf.set_progress(False)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = mnist_mlp().to(device).eval()
    train, _ = wf.data.mnist_datasets(n_train=args.n, n_test=1)
    loader = wf.data.as_loader(train, args.batch_size)
    task = wf.Task(model)
    state = task.state()
    batches = [task.prepare_batch(b) for b in loader]

    def floor():  # reads the data through the same loader as the featurisers
        for batch in loader:
            x, y = task.prepare_batch(batch)
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()

    def floor_preloaded():
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()

    def vmap_only():
        for _ in iter_gradient_blocks(task, loader, state, progress=False):
            pass

    def vmap_proj(proj):
        def run():
            for _, block in iter_gradient_blocks(task, loader, state, progress=False):
                proj.project(block, 0)
        return run

    def layer_grads(proj=None):
        def run():
            source = FullGradients("layers").setup(task)
            for _, block in feature_blocks(source, loader, state, progress=False):
                if proj is not None:
                    proj.project(block, 0)
        return run

    def logra(rank):
        method = wf.LoGra(task, rank=rank, preconditioner="identity", batch_size=args.batch_size, progress=False)
        method._states = [state]

        def run():
            for _ in method._feature_blocks(0, loader):
                pass
        return run

    rows = [("floor: forward + backward (mean loss)", floor),
            ("  same, batches already in memory", floor_preloaded),
            ("vmap per-example grads [B, p]", vmap_only),
            ("layer-capture per-example grads [B, p]", layer_grads())]
    for kind, k in (("rademacher", 512), ("gaussian", 512), ("sparse", 512), ("sparse", 4096)):
        proj = RandomProjection(k, kind)
        proj.project(batches[0][0].new_zeros(1, task.num_params), 0)  # generate and cache P outside the timing
        if kind == "rademacher":
            rows.append((f"vmap grads + {kind} k={k}", vmap_proj(proj)))
        rows.append((f"layer grads + {kind} k={k}", layer_grads(proj)))
    for r in (8, 16, 32):
        rows.append((f"LoGra rank {r} (k_l = {r * r})", logra(r)))

    print(f"MNIST MLP, p = {task.num_params}, n = {args.n}, batch {args.batch_size}, device {device}, "
          f"threads {args.threads}, median of {args.repeats}", flush=True)
    base = None
    for name, fn in rows:
        t = median_seconds(fn, 1)  # warm-up; slow rows (> 5 s) are timed once
        if t < 5:
            t = median_seconds(fn, args.repeats)
        base = t if base is None else base
        print(f"| {name:40s} | {t:8.3f} s | {args.n / t:10.0f} ex/s | {t / base:6.2f}x |", flush=True)


if __name__ == "__main__":
    main()
