"""``python -m wherefrom``: the command line (see :mod:`wherefrom.cli`)."""

from wherefrom.cli import app

app(prog_name="wherefrom")
