"""The peer-comparison table writer (benchmarks/peers/table.py) turns raw results into a well-formed table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TABLE = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "table.py"


def _table_module():
    spec = importlib.util.spec_from_file_location("peers_table", TABLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(library, times, lds=0.5, agreement=None):
    return {"method": "cg", "setting": "lr", "library": library, "times": times, "wall": times,
            "loads": [1.0, 3.0], "lds": lds, "agreement": agreement, "notes": ""}


def test_table_has_one_line_per_row_equal_columns_and_median_ratios():
    rows = [_row("wherefrom", [2.0, 4.0, 3.0], 0.8, 0.99), _row("dattri", [6.0, 5.0, 7.0], 0.7), _row("pydvl", [])]
    lines = _table_module().render_rows(rows)
    assert len(lines) == 2 + len(rows)
    assert len({line.count("|") for line in lines}) == 1  # every line has the header's column count
    wf, dattri, pydvl = (line.split("|")[1:-1] for line in lines[2:])
    assert wf[3].strip() == "2.00 / 3.00" and wf[4].strip() == ""          # wherefrom: no ratio against itself
    assert dattri[4].strip() == f"{3.0 / 6.0:.2f}"                          # median wf / median peer
    assert pydvl[3].strip() == "failed" and pydvl[6].strip() == "0.500"
    assert wf[7].strip() == "0.990" and dattri[7].strip() == "—" and wf[8].strip() == "1.0–3.0"
