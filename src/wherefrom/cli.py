"""The ``wherefrom`` command line.

    wherefrom bench --list
    wherefrom bench digits-lr --methods if-explicit,if-ekfac,tracin --metrics loo,lds,auc
    wherefrom methods
    wherefrom attribute my_spec.py --method ekfac --test 0:20 --top-k 10 --out out
    wherefrom report out
"""

from __future__ import annotations

import typer

from wherefrom.cli_bench import bench
from wherefrom.report.cli import register as register_report_commands

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Explain PyTorch predictions by their training data, and measure how right that is.")
register_report_commands(app)  # wherefrom attribute, wherefrom report


@app.callback()
def _main() -> None:
    """wherefrom: training-data attribution and its evaluation."""


app.command()(bench)  # each command lives in its own module (cli_<command>.py), registered here


@app.command()
def methods() -> None:
    """List the registered attribution methods."""
    from wherefrom.registry import METHODS, method_names

    for name in method_names():
        typer.echo(f"{name:12s} {METHODS[name].description}")


if __name__ == "__main__":  # pragma: no cover
    app()
