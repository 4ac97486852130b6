"""Run every row of the comparison, each library in its own process, back to back, with repeats.

For every (method, setting) the libraries run in turn (wherefrom first), and the whole turn is repeated
``--repeats`` times, so that a change of machine load touches every library of a row alike. Every run is a fresh
``nice -n 10`` process of ``run_one.py`` with one torch thread. After each row the raw results go to
``docs/peers.json`` and the table between the markers of ``docs/peers.md`` is rewritten, so an interrupted run
keeps what it finished (``--resume`` skips rows already in the JSON).

Metrics: LDS (Spearman over 100 half-size retrained subsets, mean over the 500 test points) against the
setting's ground truth — ``−loss`` for loss-target methods, the margin for TRAK — from the first repeat's scores;
agreement = mean over test points of the Pearson correlation between a row's scores and the exact scores of the
same curvature (explicit inverse of ``H + (wd + λ) I``; the Gauss-Newton matrix for K-FAC / EK-FAC on the MLP).

Usage: ``python compare.py [--repeats 3] [--rows explicit:lr,cg:lr] [--resume]`` (see run.sh). ``--rows`` reruns
those rows and keeps the others of docs/peers.json; ``--resume`` skips the rows it already holds. A row whose CPU
times spread by more than 1.3× between repeats is marked in the notes (rerun it with ``--rows``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import CACHE, HERE
from table import render_rows

ROOT = os.path.dirname(os.path.dirname(HERE))
DOC = os.path.join(ROOT, "docs", "peers.md")
RAW = os.path.join(ROOT, "docs", "peers.json")
START, END = "<!-- table:start -->", "<!-- table:end -->"

# (method, setting, libraries after wherefrom, target, exact curvature for the agreement column or None)
ROWS = [  # the rows the speed work needs most come first; LiSSA (the slowest by far) last
    ("explicit", "lr", ["reference", "dattri", "pydvl"], "loss", "hessian"),
    ("cg", "lr", ["dattri", "pydvl"], "loss", "hessian"),
    ("arnoldi", "lr", ["dattri", "pydvl"], "loss", "hessian"),
    ("arnoldi-all", "lr", ["dattri"], "loss", "hessian"),
    ("ekfac", "lr", ["pydvl", "kronfluence"], "loss", "hessian"),
    ("tracin", "lr", ["captum", "dattri"], "loss", None),
    ("kfac", "lr", ["kronfluence"], "loss", "hessian"),
    ("trak", "lr", ["dattri", "traker"], "margin", None),
    ("ekfac", "mlp", ["pydvl", "kronfluence"], "loss", "ggn"),
    ("arnoldi", "mlp", ["dattri", "pydvl"], "loss", "hessian"),
    ("tracin", "mlp", ["captum", "dattri"], "loss", None),
    ("kfac", "mlp", ["kronfluence"], "loss", "ggn"),
    ("trak", "mlp", ["dattri", "traker"], "margin", None),
    ("arnoldi-all", "mlp", ["dattri"], "loss", "hessian"),
    # dattri's LiSSA (vmap over the 500 test vectors, depth 1000, batch 256) grew past 9.7 GB of memory within two
    # CPU minutes on this 24 GB machine and was stopped: it is left out of the LiSSA row (see docs/peers.md).
    ("lissa", "lr", ["pydvl"], "loss", "hessian"),
]


def spearman_columns(P: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column pair (ranks by argsort; ties are negligible here)."""
    def ranks(A):
        return np.argsort(np.argsort(A, axis=0), axis=0).astype(np.float64)
    return pearson_columns(ranks(P), ranks(Y))


def pearson_columns(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    A = A - A.mean(0)
    B = B - B.mean(0)
    den = np.sqrt((A ** 2).sum(0) * (B ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (A * B).sum(0) / den


def lds(scores: np.ndarray, setting: str, target: str) -> float:
    gt = np.load(os.path.join(CACHE, f"lds-{setting}.npz"))
    goodness = -gt["loss"] if target == "loss" else gt["margin"]
    pred = gt["masks"].astype(np.float64) @ scores.astype(np.float64)
    return float(np.nanmean(spearman_columns(pred, goodness)))


def agreement(scores: np.ndarray, setting: str, kind: str | None) -> float | None:
    path = os.path.join(CACHE, f"exact-{setting}-{kind}.npy")
    if kind is None or not os.path.exists(path):
        return None
    exact = np.load(path)
    return float(np.nanmean(pearson_columns(scores.astype(np.float64), exact)))


def run(setting: str, method: str, library: str, out: str, timeout: float) -> dict:
    cmd = ["nice", "-n", "10", sys.executable, os.path.join(HERE, "run_one.py"), setting, method, library, out]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WHEREFROM_PROGRESS": "0"}
    load = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout)
        ok = proc.returncode == 0
        err = "" if ok else (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
    except subprocess.TimeoutExpired:
        ok, err = False, f"timed out after {timeout:.0f} s"
    rec = {"load": load}
    if ok:
        with open(out + ".json") as fh:
            rec.update(json.load(fh))
    else:
        rec["error"] = err
    return rec


def write_outputs(results: dict) -> None:
    order = {(m, st): k for k, (m, st, *_rest) in enumerate(ROWS)}
    # a stable sort: the libraries of a row keep their order
    results["rows"].sort(key=lambda r: order.get((r["method"], r["setting"]), len(order)))
    with open(RAW, "w") as fh:
        json.dump(results, fh, indent=1)
    text = f"# Peer comparison\n\n{START}\n{END}\n"
    if os.path.exists(DOC):
        with open(DOC) as fh:
            text = fh.read()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    with open(DOC, "w") as fh:
        fh.write(head + START + "\n" + "\n".join(render_rows(results["rows"])) + "\n" + END + tail)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", default="", help="comma-separated method:setting (default: all)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    wanted = {tuple(s.split(":")) for s in args.rows.split(",") if s}
    results = {"meta": {}, "rows": []}
    if (args.resume or wanted) and os.path.exists(RAW):  # --rows replaces those rows and keeps the others
        with open(RAW) as fh:
            results = json.load(fh)
    done = {(r["method"], r["setting"]) for r in results["rows"]} if args.resume else set()
    results["meta"].update({"json": "docs/peers.json", "repeats": args.repeats, "cpus": os.cpu_count(),
                            "started": results["meta"].get("started", time.strftime("%Y-%m-%d %H:%M"))})
    tmp = tempfile.mkdtemp(prefix="peers-")
    for method, setting, peers, target, kind in ROWS:
        if (wanted and (method, setting) not in wanted) or (method, setting) in done:
            continue
        libs = ["wherefrom", *peers]
        recs = {lib: [] for lib in libs}
        for rep in range(args.repeats):
            for lib in libs:
                out = os.path.join(tmp, f"{setting}-{method}-{lib}-{rep}")
                rec = run(setting, method, lib, out, args.timeout)
                if rep == 0 and "error" not in rec:
                    scores = np.load(out + ".npy")
                    rec["lds"] = lds(scores, setting, target) if rec["finite"] else float("nan")
                    rec["agreement"] = agreement(scores, setting, kind) if rec["finite"] else None
                recs[lib].append(rec)
                print(f"{method}:{setting} {lib} rep {rep}: {rec.get('cpu_seconds', rec.get('error'))} cpu s, "
                      f"{rec.get('seconds')} wall s, load {rec['load']:.1f}", flush=True)
        results["rows"] = [r for r in results["rows"] if (r["method"], r["setting"]) != (method, setting)]
        for lib in libs:
            good = [r for r in recs[lib] if "error" not in r]
            first = recs[lib][0]
            notes = []
            if "error" in first:
                notes.append(first["error"])
            elif not first["finite"]:
                notes.append("non-finite scores")
            info = first.get("info") or {}
            notes += [f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()]
            results["rows"].append({
                "method": method, "setting": setting, "library": lib, "target": target,
                "times": [r["cpu_seconds"] for r in good], "wall": [r["seconds"] for r in good],
                "loads": [r["load"] for r in recs[lib]],
                "lds": first.get("lds"), "agreement": first.get("agreement"),
                "peak_rss_mb": max((r["peak_rss_mb"] for r in good), default=None),
                "warnings": first.get("warnings", []), "notes": "; ".join(notes),
                "median_cpu_s": statistics.median([r["cpu_seconds"] for r in good]) if good else None})
        write_outputs(results)


if __name__ == "__main__":
    main()
