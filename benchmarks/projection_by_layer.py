"""Dense TRAK featurisation of the scale workload with the projection applied layer by layer or to [B, p] rows.

    PYTHONPATH=src farm-bench -n 3 --timeout 600 --vs 'python benchmarks/projection_by_layer.py --rows' -- \
        python benchmarks/projection_by_layer.py

Featurises ``--n`` augmented MNIST images (MLP ``784 → 64 → 10``, margin gradients from layer captures, 64-d
Rademacher projection, one thread) and prints the wall time of the featurisation alone. ``--rows`` assembles the
``[B, p]`` gradients first and projects them (the path of a projection without ``project_rows``).
"""

from __future__ import annotations

import argparse
import time

import torch

import wherefrom as wf
from wherefrom.scale import workload
from wherefrom.sources import ProjectedGradients


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("--rows", action="store_true", help="assemble [B, p] rows, then project")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, _ = workload.datasets(args.n, 10)
    task = wf.Task(workload.mnist_mlp())
    src = ProjectedGradients(wf.projection.RandomProjection(64, "rademacher")).setup(task)
    if args.rows:
        src.projection = type("Rows", (), {"project": src.projection.project})()
    state = task.state()
    batches = [(x, y) for x, y in train.loader(1024)]
    src.batch_features(state, batches[0], wf.targets.margin)  # warm-up
    t = time.perf_counter()
    for batch in batches:
        src.batch_features(state, batch, wf.targets.margin)
    print(f"{'rows' if args.rows else 'layer by layer'}: {time.perf_counter() - t:.2f} s for {args.n} examples")


if __name__ == "__main__":
    main()
