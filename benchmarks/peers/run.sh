#!/usr/bin/env bash
# The whole comparison: environment, shared ground truth, then every row (3 repeats), niced, one process at a time.
# Writes docs/peers.json and the table of docs/peers.md. Extra arguments go to compare.py (e.g. --rows cg:lr).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$HERE/setup_env.sh"
cd "$HERE"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WHEREFROM_PROGRESS=0
nice -n 10 .venv/bin/python prepare.py lr mlp
nice -n 10 .venv/bin/python compare.py "$@"
