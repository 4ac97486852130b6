"""Command-line values of ``wherefrom attribute``: method names with aliases, ``--test`` ranges, ``--option`` items."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wherefrom.report.errors import UsageError

#: friendly names accepted by ``--method`` besides the registry's own (``wherefrom methods`` lists those).
ALIASES = {
    "influence": "if-ekfac",
    "ekfac": "if-ekfac",
    "kfac": "if-kfac",
    "cg": "if-cg",
    "lissa": "if-lissa",
    "explicit": "if-explicit",
    "arnoldi": "if-arnoldi",
    "datainf": "if-datainf",
    "tracincp": "tracin",
    "graddot": "grad-dot",
    "gradcos": "grad-cos",
    "representer": "rps",
    "knn": "knn-shapley",
}


def resolve_method(name: str, known: Sequence[str]) -> str:
    """The registry name for ``name``: itself, an alias (``ekfac`` → ``if-ekfac``) or ``if-<name>``."""
    key = name.strip().lower()
    if key in known:
        return key
    if key in ALIASES and ALIASES[key] in known:
        return ALIASES[key]
    if f"if-{key}" in known:
        return f"if-{key}"
    aliases = ", ".join(f"{a} ({t})" for a, t in sorted(ALIASES.items()) if t in known)
    raise UsageError(f"Unknown method {name!r}. Choose one of: {', '.join(sorted(known))}; or an alias: {aliases}.")


def parse_test_range(text: str, n_test: int) -> list[int]:
    """Test indices from ``"0:20"``, ``"5"``, ``"0:100:10"``, ``"3,7,9"`` or ``"0:5,10:12"`` (Python slices, 0-based).

    Raises :class:`UsageError` for malformed ranges, empty selections and indices outside ``[0, n_test)``.
    """
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            fields = [int(f) if f.strip() else None for f in part.split(":")]
        except ValueError:
            fields = []
        if not fields or len(fields) > 3 or (len(fields) == 1 and fields[0] is None):
            raise UsageError(f"--test {text!r} is not a range: use e.g. 0:20, 5, 3,7,9 or start:stop:step.")
        if len(fields) == 1:
            i = fields[0]
            if not 0 <= i < n_test:
                raise UsageError(f"--test {text!r}: index {i} is outside the {n_test} test examples "
                                 f"(valid indices are 0..{n_test - 1}).")
            out.append(i)
            continue
        start, stop, step = [*fields, None][:3]
        if step is not None and step <= 0:
            raise UsageError(f"--test {text!r}: the step of {part!r} must be positive.")
        start = 0 if start is None else start
        stop = n_test if stop is None else stop
        if not 0 <= start < n_test or stop > n_test or stop <= start:
            raise UsageError(f"--test {text!r}: the range {part!r} is outside the {n_test} test examples "
                             f"(valid indices are 0..{n_test - 1}, e.g. --test 0:{min(n_test, 20)}).")
        out.extend(range(start, stop, step or 1))
    if not out:
        raise UsageError(f"--test {text!r} selects no test example.")
    seen: set[int] = set()
    return [i for i in out if not (i in seen or seen.add(i))]


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` items → ``{key: value}``, values parsed as int, float, bool, ``none`` or string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option must look like key=value (e.g. damping=0.001), got {item!r}.")
        out[key.strip()] = _parse_value(raw.strip())
    return out


def _parse_value(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if raw.lower() in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw
