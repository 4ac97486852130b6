"""Predicted against measured peak memory and disk of ``wf.scale.plan``'s stages: featurise, top-k, self-influence.

    nice -n 10 python benchmarks/planner_check.py                 # n = 1000, 4000, 16000
    nice -n 10 python benchmarks/planner_check.py 500 2000

Each size runs in a fresh process (``tests/scale_helpers.py planner N DIR``): Grad-Dot on full gradients of a
``Linear(256, 32)`` (8,224 parameters), batches of 256, chunks of 1,024 rows, float32. Memory is the peak resident
growth during ``fit`` (sampled every millisecond) against the stage's terms (process baseline excluded); disk is
the bytes of the store's folder against ``n · d · 4``. After the fit, the same process measures the peak resident
growth of the FAISS exact top-k, the streaming top-k and self-influence (100 queries, k = 10; each once, above the
level before it) against the plan's stages of those names (second table).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
HELPER = os.path.join(ROOT, "tests", "scale_helpers.py")


def probe(n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "WHEREFROM_PROGRESS": "0"}
    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run([sys.executable, HELPER, "planner", str(n), cache], env=env, capture_output=True,
                             text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(sizes: list[int]) -> None:
    rows = [probe(n) for n in sizes]
    print("| n_train | memory predicted | memory measured | ratio | disk predicted | disk measured | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        pm, mm, pd, md = (r[k] / 1e6 for k in ("predicted_memory", "measured_memory", "predicted_disk",
                                                "measured_disk"))
        print(f"| {r['n']:,} | {pm:.1f} MB | {mm:.1f} MB | {mm / pm:.2f} | {pd:.1f} MB | {md:.1f} MB | {md / pd:.2f} |")
    print()
    print("| n_train | stage | memory predicted | memory measured | ratio |")
    print("|---:|---|---:|---:|---:|")
    for r in rows:
        for stage, v in r["stages"].items():
            pm, mm = v["predicted"] / 1e6, v["measured"] / 1e6
            print(f"| {r['n']:,} | {stage} | {pm:.1f} MB | {mm:.1f} MB | {mm / pm:.2f} |")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 4000, 16000])
