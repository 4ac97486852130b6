"""The ``wherefrom attribute`` and ``wherefrom report`` commands (registered on :data:`wherefrom.cli.app`).

    wherefrom attribute my_spec.py --method ekfac --test 0:20 --top-k 10 --out out   # fit, score, save, render
    wherefrom attribute my_spec.py --method ekfac --dry-run                          # plan and rough memory only
    wherefrom report out                                                             # re-render, no recompute

Exit codes are those of :class:`wherefrom.report.errors.ExitCode` (documented in ``docs/report.md``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import typer

DEBUG_ENV = "WHEREFROM_DEBUG"


def _stage_logger(quiet: bool) -> Callable[[str], None]:
    """Switch progress bars off when ``quiet`` and return the printer of ``[wherefrom]`` stage messages (stderr)."""
    from wherefrom.progress import set_progress

    set_progress(not quiet)

    def log(message: str) -> None:
        if not quiet:
            typer.echo(f"[wherefrom] {message}", err=True)

    return log


def _fail(exc: BaseException) -> typer.Exit:
    from wherefrom.errors import WherefromError
    from wherefrom.report.errors import ExitCode, exit_code_of

    if os.environ.get(DEBUG_ENV) == "1":
        raise exc
    if isinstance(exc, WherefromError):
        typer.echo(f"error: {exc}", err=True)
        return typer.Exit(int(exit_code_of(exc)))
    typer.echo(f"error: attribution failed with {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)",
               err=True)
    return typer.Exit(int(ExitCode.ATTRIBUTION_FAILED))


def attribute(
    spec: str = typer.Argument(..., help="file.py[:function], package.module:function, or file.toml."),
    method: str = typer.Option("if-ekfac", "--method", "-m", help="Registered method (see `wherefrom methods`) or "
                               "an alias: ekfac, kfac, cg, lissa, explicit, arnoldi, datainf, influence, ..."),
    test: str | None = typer.Option(None, help="Test examples to explain (0-based): 0:20, 5, 3,7,9 or "
                                    "start:stop:step. Default: the first 20."),
    top_k: int = typer.Option(10, "--top-k", "-k", help="Helpful and harmful training examples per test example."),
    out: str = typer.Option("wherefrom-report", "--out", "-o", help="Results folder (reused by a rerun)."),
    option: list[str] = typer.Option([], help="Method option key=value, e.g. damping=0.001 (repeatable)."),  # noqa: B008
    self_influence: bool = typer.Option(True, help="Compute self-influence (the likely-mislabelled panel)."),
    n_self_influence: int = typer.Option(24, help="Training examples shown by self-influence."),
    bench: list[str] = typer.Option([], help="`wherefrom bench` JSON to show in the report (repeatable)."),  # noqa: B008
    refit: bool = typer.Option(False, help="Recompute even when OUT holds results or a fit for these inputs."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be computed and its memory; stop."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or stage messages."),
) -> None:
    """Explain predictions of the model of SPEC by its training data; write scores, top-k and an HTML report."""
    import time

    from wherefrom.report.attribute import AttributeOptions, describe_plan, plan_attribution, run_attribution
    from wherefrom.report.options import parse_options
    from wherefrom.report.render import add_bench_files, render_report

    log = _stage_logger(quiet)

    t0 = time.perf_counter()
    try:
        opts = AttributeOptions(method=method, test=test, top_k=top_k, options=parse_options(option),
                                self_influence=self_influence, n_self_influence=n_self_influence, refit=refit)
        plan = plan_attribution(spec, opts, out)
        if dry_run:
            typer.echo(describe_plan(plan, out))
            return
        _, reused = run_attribution(plan, out, log)
        add_bench_files(out, bench)
        path = render_report(out)
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise _fail(exc) from exc
    log(f"{'reused saved results' if reused else 'computed'} in {time.perf_counter() - t0:.1f} s")
    typer.echo(str(path))


def report(
    directory: str = typer.Argument(..., help="Results folder of `wherefrom attribute` (or of `wherefrom bench`)."),
    bench: list[str] = typer.Option([], help="`wherefrom bench` JSON to add to the report (repeatable)."),  # noqa: B008
    out: str | None = typer.Option(None, "--out", "-o", help="HTML file (default DIRECTORY/report.html)."),
) -> None:
    """Re-render the HTML report of a results folder from its saved results (nothing is recomputed)."""
    from wherefrom.report.render import add_bench_files, render_report

    try:
        if bench and not os.path.isdir(directory):
            os.makedirs(directory)
        add_bench_files(directory, bench)
        path = render_report(directory, out)
    except Exception as exc:
        raise _fail(exc) from exc
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add the ``attribute``, ``report`` and ``features`` commands to ``app``."""
    from wherefrom.report.feature_cli import features

    app.command("attribute")(attribute)
    app.command("report")(report)
    app.command("features")(features)
