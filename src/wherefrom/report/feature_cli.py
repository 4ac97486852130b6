"""The ``wherefrom features`` command: explain test inputs of a spec by their features and render the report.

    wherefrom features my_spec.py --test 0:3 --out out --baselines     # CD heat strip / map, ACD levels, baselines
    wherefrom features wherefrom.report.shipped_specs:sst_lstm -o out  # the shipped SST-2 LSTM
    wherefrom report out                                               # re-render, nothing recomputed

The same ``--out`` as ``wherefrom attribute`` puts both kinds of explanation in one report.
"""

from __future__ import annotations

import typer


def features(
    spec: str = typer.Argument(..., help="file.py[:function], package.module:function, or file.toml (as for "
                               "`wherefrom attribute`)."),
    test: str | None = typer.Option(None, help="Test examples to explain (0-based): 0:3, 5, 3,7,9. Default: the "
                                    "first 3."),
    out: str = typer.Option("wherefrom-report", "--out", "-o", help="Results folder (features.json, report.html)."),
    target: str = typer.Option("predicted", help="Explained class: 'predicted', 'true' or a class index."),
    method: str = typer.Option("cd", "--method", "-m", help="ACD group score: cd, occlusion or build-up."),
    block_size: int = typer.Option(1, help="Image block side in pixels (units of the image hierarchy)."),
    percentile: float | None = typer.Option(None, help="ACD selection percentile (default 99.5 text, 99 images)."),
    num_iters: int | None = typer.Option(None, help="ACD growing iterations (default 25 text, 5 images)."),
    baselines: bool = typer.Option(False, "--baselines", help="Also show integrated gradients, gradient × input "
                                   "and occlusion side by side."),
    ig_steps: int = typer.Option(32, help="Integrated-gradients grid points (both endpoints included)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or stage messages."),
) -> None:
    """Explain test predictions of the model of SPEC by their input features (CD, ACD hierarchy); render a report."""
    from wherefrom.report.cli import _fail, _stage_logger
    from wherefrom.report.feature_run import FeatureOptions, run_features
    from wherefrom.report.render import render_report

    log = _stage_logger(quiet)

    try:
        opts = FeatureOptions(test=test, target=target, method=method, block_size=block_size,
                              percentile=percentile, num_iters=num_iters, baselines=baselines, ig_steps=ig_steps)
        run_features(spec, opts, out, log)
        path = render_report(out)
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise _fail(exc) from exc
    typer.echo(str(path))
