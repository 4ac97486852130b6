"""The ``wherefrom bench`` command (registered on the one typer app in :mod:`wherefrom.cli`).

    wherefrom bench --list
    wherefrom bench digits-lr --methods if-explicit,if-ekfac,tracin --metrics loo,lds,auc

Exit status: 0 when every method and metric succeeded; 1 when any failed (the last line names them; the rows
of the others are still written); 2 for a bad request (unknown setting, method, metric or option key, an
ensemble too small for a method), reported before any work; 130 when interrupted (rerun the same command to
resume: finished methods are reused).
"""

from __future__ import annotations

import os
import shlex
import sys

import typer


def parse_options(items: list[str]) -> dict[str, dict]:
    """``method.key=value`` items → ``{method: {key: value}}`` (values parsed as int, float, bool, None or str)."""
    out: dict[str, dict] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise typer.BadParameter(f"--option must look like method.key=value, got {item!r}.")
        lhs, raw = item.split("=", 1)
        method, key = lhs.split(".", 1)
        value: object = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                pass
        if raw in ("true", "false", "True", "False"):
            value = raw.lower() == "true"
        elif raw in ("none", "None", "null"):
            value = None
        out.setdefault(method, {})[key] = value
    return out


def _parse_fractions(text: str | None) -> list[float] | None:
    """``"0.99,0.5"`` → ``[0.99, 0.5]`` (``None``: the setting's default)."""
    if not text:
        return None
    try:
        return [float(f) for f in text.split(",") if f.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--fraction must be comma-separated numbers, got {text!r}.") from exc


def print_list() -> None:
    """Settings, methods, metrics, and the rough cost table."""
    from wherefrom.bench import SETTINGS
    from wherefrom.bench.costs import cost_table
    from wherefrom.bench.runner import METRICS
    from wherefrom.registry import METHODS, method_names

    typer.echo("Settings:")
    for name, s in sorted(SETTINGS.items()):
        typer.echo(f"  {name:12s} {s.description}")
    typer.echo("Methods:")
    for name in method_names():
        typer.echo(f"  {name:14s} {METHODS[name].description}")
    typer.echo("Metrics:")
    for name, desc in METRICS.items():
        typer.echo(f"  {name:12s} {desc}")
    typer.echo("")
    typer.echo(cost_table())


def _say_estimate(setting: str, methods: str | None, metrics: str, log) -> None:
    """One line with the rough cost of this run, from the shipped cost table (nothing if it has no numbers)."""
    from wherefrom.bench.costs import estimate, fmt_seconds
    from wherefrom.registry import method_names

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else method_names()
    gt, total, missing = estimate(setting, names, [m.strip() for m in metrics.split(",")])
    if gt == 0 and total == 0:
        return
    unknown = f"; no measurement for {', '.join(missing)}" if missing else ""
    log(f"rough cost on a small CPU machine (see --list): ground truth {fmt_seconds(gt)} unless cached, "
        f"methods {fmt_seconds(total)}{unknown}")


def bench(
    setting: str | None = typer.Argument(None, help="Benchmark setting (see --list)."),
    list_: bool = typer.Option(False, "--list", help="List settings, methods, metrics and their rough cost."),
    methods: str | None = typer.Option(None, help="Comma-separated method names (default: all)."),
    metrics: str = typer.Option("loo,lds", help="Comma-separated metrics: loo, lds, auc, brittle."),
    cache_dir: str | None = typer.Option(None, help="Cache root (default $WHEREFROM_CACHE or ~/.cache/wherefrom)."),
    workers: int | None = typer.Option(None, help="Retraining processes (default: number of CPUs)."),
    out: str = typer.Option("bench-results", help="Folder for the JSON, markdown table and PNG chart."),
    n_train: int | None = typer.Option(None, help="Use only the first n training examples."),
    n_test: int | None = typer.Option(None, help="Use only the first n test examples."),
    loo_first: int | None = typer.Option(None, help="LOO ground truth for the first n train points only."),
    subsets: int = typer.Option(100, help="LDS subsets M."),
    fraction: str | None = typer.Option(None, help="LDS subset fraction(s) α kept, comma-separated (default: the "
                                        "setting's: 0.5, or 0.99,0.5 for the trajectory settings)."),
    ensemble_size: int | None = typer.Option(
        None, help="Independently trained models offered to ensemble methods (TRAK-M). Default: as many as the "
                   "methods need (trak-M: M), at least 5; trained once and cached."),
    noise: float = typer.Option(0.1, help="Fraction of flipped labels for the AUC metric."),
    target: str = typer.Option("loss", help="Attributed target and ground truth: loss or margin."),
    dropout: float | None = typer.Option(None, help="Train MLP settings with this dropout probability."),
    option: list[str] = typer.Option([], help="Method option method.key=value (repeatable)."),  # noqa: B008
    progress: bool = typer.Option(True, help="Show progress (bars on a terminal, plain lines in a log)."),
    fresh: bool = typer.Option(False, "--fresh", help="Recompute methods whose finished rows are cached."),
) -> None:
    """Train or load SETTING, build or load its ground truth, run the methods; write JSON, table and chart after
    each method. Exits 1 if any method or metric failed; rerun a killed run to resume it."""
    import torch

    from wherefrom.bench import get_setting
    from wherefrom.bench.runner import run_benchmark
    from wherefrom.errors import WherefromError
    from wherefrom.progress import set_progress

    if list_:
        print_list()
        return
    if setting is None:
        typer.echo("Give a SETTING (or --list to see them).", err=True)
        raise typer.Exit(2)
    set_progress(progress)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    overrides = {k: v for k, v in {"n_train": n_train, "n_test": n_test, "dropout": dropout}.items()
                 if v is not None}
    printed_header = []

    def print_row(result, row) -> None:
        if not printed_header:
            typer.echo(result.header())
            printed_header.append(True)
        typer.echo(result.row_line(row))

    def log(message: str) -> None:
        typer.echo(message, err=True)

    if not overrides:
        _say_estimate(setting, methods, metrics, log)
    try:
        s = get_setting(setting, **overrides)
        loo_indices = list(range(loo_first)) if loo_first is not None else None
        fractions = _parse_fractions(fraction)
        result = run_benchmark(
            s, methods, metrics, cache_dir=cache_dir, workers=workers, loo_indices=loo_indices,
            n_subsets=subsets, fraction=fractions, ensemble_size=ensemble_size, noise=noise, target=target,
            options=parse_options(option), progress=progress, log=log, out_dir=out, resume=not fresh,
            on_row=print_row, command=shlex.join(["wherefrom", *sys.argv[1:]]),
        )
    except WherefromError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt as exc:
        typer.echo(f"interrupted: the finished rows are in {out}/ and cached; rerun the same command to resume.",
                   err=True)
        raise typer.Exit(130) from exc
    stem = result.setting["name"]
    typer.echo(f"wrote {os.path.join(out, stem)}.json, .md and .png")
    failures = result.failures()
    if failures:
        typer.echo(f"FAILED ({len(failures)}): " + "; ".join(failures), err=True)
        raise typer.Exit(1)
    typer.echo(f"all {len(result.rows)} methods and their metrics succeeded")
