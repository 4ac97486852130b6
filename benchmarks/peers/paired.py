"""Is a fidelity difference between two libraries on one row real? Paired per-test-point differences with a bootstrap.

Runs ``run_one.py`` once for each library of ``--libs`` on one ``METHOD:SETTING`` row (the same processes and
settings as ``compare.py``), then, per test point ``j``, the LDS (Spearman over the retrained subsets) and the
agreement (Pearson with the exact scores) of each library. It prints the mean paired difference of every library
against the first, a 95 % bootstrap interval over the test points (resampled with replacement) and the fraction of
test points on which the first library is ahead. A difference whose interval excludes 0 is not noise of the 500
test points (it may still be specific to the setting).

Usage: ``python paired.py ekfac:lr --libs wherefrom,pydvl,kronfluence [--boot 2000]``. A library may be given as
``LIB@METHOD`` to take another method of it on the same setting, e.g. ``--libs wherefrom,wherefrom@kfac``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
from common import CACHE, HERE
from compare import ROWS, pearson_columns, run, spearman_columns


def per_test(scores: np.ndarray, setting: str, target: str, kind: str | None) -> dict[str, np.ndarray]:
    """Per-test-point LDS and (when the row has an exact curvature) agreement, each ``[n_test]``."""
    gt = np.load(os.path.join(CACHE, f"lds-{setting}.npz"))
    goodness = -gt["loss"] if target == "loss" else gt["margin"]
    out = {"LDS": spearman_columns(gt["masks"].astype(np.float64) @ scores, goodness)}
    exact = os.path.join(CACHE, f"exact-{setting}-{kind}.npy")
    if kind is not None and os.path.exists(exact):
        out["agreement"] = pearson_columns(scores, np.load(exact))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("row", help="METHOD:SETTING, e.g. ekfac:lr")
    ap.add_argument("--libs", default="wherefrom,pydvl")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    method, setting = args.row.split(":")
    spec = [r for r in ROWS if r[0] == method and r[1] == setting]
    if not spec:
        sys.exit(f"no row {args.row!r}; rows: {', '.join(f'{r[0]}:{r[1]}' for r in ROWS)}")
    _, _, _, target, kind = spec[0]
    tmp = tempfile.mkdtemp(prefix="paired-")
    metrics = {}
    for lib in args.libs.split(","):
        name, _, other = lib.partition("@")
        out = os.path.join(tmp, lib.replace("@", "-"))
        rec = run(setting, other or method, name, out, args.timeout)
        if "error" in rec:
            sys.exit(f"{lib}: {rec['error']}")
        metrics[lib] = per_test(np.load(out + ".npy").astype(np.float64), setting, target, kind)
    rng = np.random.default_rng(0)
    first, *others = list(metrics)
    for lib in others:
        for name, mine in metrics[first].items():
            d = mine - metrics[lib][name]
            d = d[np.isfinite(d)]
            boots = d[rng.integers(0, len(d), (args.boot, len(d)))].mean(1)
            lo, hi = np.percentile(boots, [2.5, 97.5])
            print(f"{args.row} {name}: {first} − {lib} = {d.mean():+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}], "
                  f"{first} ahead on {np.mean(d > 0):.0%} of {len(d)} test points")


if __name__ == "__main__":
    os.chdir(HERE)
    main()
