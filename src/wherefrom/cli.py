"""The ``wherefrom`` command line.

    wherefrom bench --list
    wherefrom bench mnist-lr --methods if-explicit,if-cg,tracin --metrics loo,lds
    wherefrom methods
"""

from __future__ import annotations

import os

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Explain PyTorch predictions by their training data, and measure how right that is.")


@app.callback()
def _main() -> None:
    """wherefrom: training-data attribution and its evaluation."""


def _parse_options(items: list[str]) -> dict[str, dict]:
    """``method.key=value`` items → ``{method: {key: value}}`` (values parsed as int, float, bool or str)."""
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
        out.setdefault(method, {})[key] = value
    return out


@app.command()
def bench(
    setting: str | None = typer.Argument(None, help="Benchmark setting (see --list)."),
    list_: bool = typer.Option(False, "--list", help="List the benchmark settings, methods and metrics."),
    methods: str | None = typer.Option(None, help="Comma-separated method names (default: all)."),
    metrics: str = typer.Option("loo,lds", help="Comma-separated metrics: loo, lds, auc, brittle."),
    cache_dir: str | None = typer.Option(None, help="Cache root (default $WHEREFROM_CACHE or ~/.cache/wherefrom)."),
    workers: int | None = typer.Option(None, help="Retraining processes (default: number of CPUs)."),
    out: str = typer.Option("bench-results", help="Folder for the JSON and PNG outputs."),
    n_train: int | None = typer.Option(None, help="Use only the first n training examples."),
    n_test: int | None = typer.Option(None, help="Use only the first n test examples."),
    loo_first: int | None = typer.Option(None, help="LOO ground truth for the first n train points only."),
    subsets: int = typer.Option(100, help="LDS subsets M."),
    fraction: str | None = typer.Option(None, help="LDS subset fraction(s) α kept, comma-separated "
                                        "(default: the setting's, e.g. 0.5, or 0.99,0.5 for trajectory settings)."),
    ensemble_size: int = typer.Option(5, help="Independently trained models offered to ensemble methods."),
    noise: float = typer.Option(0.1, help="Fraction of flipped labels for the AUC metric."),
    target: str = typer.Option("loss", help="Attributed target and ground truth: loss or margin."),
    dropout: float | None = typer.Option(None, help="Train MLP settings with this dropout probability."),
    option: list[str] = typer.Option([], help="Method option method.key=value (repeatable)."),  # noqa: B008
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train or load SETTING, build or load its ground truth, run the methods, print a table, write JSON + PNG."""
    import torch

    from wherefrom.bench import SETTINGS, get_setting
    from wherefrom.bench.runner import METRICS, run_benchmark
    from wherefrom.errors import WherefromError
    from wherefrom.progress import set_progress
    from wherefrom.registry import METHODS, method_names

    if list_:
        typer.echo("Settings:")
        for name, s in sorted(SETTINGS.items()):
            typer.echo(f"  {name:12s} {s.description}")
        typer.echo("Methods:")
        for name in method_names():
            typer.echo(f"  {name:12s} {METHODS[name].description}")
        typer.echo("Metrics:")
        for name, desc in METRICS.items():
            typer.echo(f"  {name:12s} {desc}")
        return
    if setting is None:
        typer.echo("Give a SETTING (or --list to see them).", err=True)
        raise typer.Exit(2)
    set_progress(progress)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    overrides = {k: v for k, v in {"n_train": n_train, "n_test": n_test, "dropout": dropout}.items()
                 if v is not None}
    try:
        s = get_setting(setting, **overrides)
        loo_indices = list(range(loo_first)) if loo_first is not None else None
        fractions = [float(f) for f in fraction.split(",") if f.strip()] if fraction else None
        result = run_benchmark(
            s, methods, metrics, cache_dir=cache_dir, workers=workers, loo_indices=loo_indices,
            n_subsets=subsets, fraction=fractions, ensemble_size=ensemble_size, noise=noise, target=target,
            options=_parse_options(option), progress=progress, log=(lambda m: typer.echo(m, err=True)),
        )
    except WherefromError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(result.table())
    jpath, ppath = result.save(out)
    typer.echo(f"wrote {jpath} and {ppath}")


@app.command()
def methods() -> None:
    """List the registered attribution methods."""
    from wherefrom.registry import METHODS, method_names

    for name in method_names():
        typer.echo(f"{name:12s} {METHODS[name].description}")


if __name__ == "__main__":  # pragma: no cover
    app()
