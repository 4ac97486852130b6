"""Progress of long loops, silenced in one place, and readable both in a terminal and in a log file.

Silence it with ``wherefrom.set_progress(False)`` or the environment variable ``WHEREFROM_PROGRESS=0``; every long
loop also takes ``progress=False``.

Where the progress goes depends on what ``sys.stderr`` is:

- a **terminal** (``isatty()``) or a Jupyter kernel: a tqdm bar, redrawn in place and removed when the loop ends;
- anything else (a file, a pipe, a CI log): tqdm would write carriage returns and ANSI escape codes there, so
  instead :func:`track` writes **plain lines**, one every ``WHEREFROM_PROGRESS_INTERVAL`` seconds (default 30)
  while a loop runs, and a final ``done`` line for a loop that lasted at least that long. A shorter loop writes
  nothing, so logs hold a heartbeat of the long loops only::

      [wherefrom] mnist-lr loo retraining (5000 models): 12/50 (24%), 31 s elapsed, ~98 s left
      [wherefrom] mnist-lr loo retraining (5000 models): done 50/50 in 129 s

We chose lines over disabling progress in logs: a long benchmark in CI then still shows that it is alive and how
far it is, without control characters.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_enabled: bool = os.environ.get("WHEREFROM_PROGRESS", "1") not in ("0", "false", "False", "no")


def set_progress(enabled: bool) -> None:
    """Turn every progress bar of the library on or off."""
    global _enabled
    _enabled = bool(enabled)


def progress_enabled() -> bool:
    """Whether progress bars are shown by default."""
    return _enabled


def line_interval() -> float:
    """Seconds between two progress lines in a non-terminal log (``WHEREFROM_PROGRESS_INTERVAL``, default 30)."""
    try:
        return max(0.0, float(os.environ.get("WHEREFROM_PROGRESS_INTERVAL", "30")))
    except ValueError:
        return 30.0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _in_notebook() -> bool:
    """Whether we run inside a Jupyter kernel (whose stderr is not a TTY but renders tqdm's widget)."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.0f} min"


def _lines(iterable: Iterable[T], desc: str, total: int | None, stream: TextIO, interval: float) -> Iterator[T]:
    """Yield from ``iterable``, writing a plain progress line to ``stream`` at most every ``interval`` seconds."""
    start = last = time.monotonic()
    done = 0
    printed = False
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= interval and (total is None or done < total):
            elapsed = now - start
            head = f"{done}/{total} ({100 * done / total:.0f}%)" if total else f"{done}"
            eta = f", ~{_fmt_s(elapsed / done * (total - done))} left" if total and done < total else ""
            stream.write(f"[wherefrom] {desc}: {head}, {_fmt_s(elapsed)} elapsed{eta}\n")
            stream.flush()
            last, printed = now, True
    if printed or (done and time.monotonic() - start >= interval):
        of = f"/{total}" if total else ""
        stream.write(f"[wherefrom] {desc}: done {done}{of} in {_fmt_s(time.monotonic() - start)}\n")
        stream.flush()


def track(
    iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool | None = None
) -> Iterator[T]:
    """Show the progress of ``iterable`` unless it is silenced (globally or by ``enabled=False``).

    A tqdm bar on a terminal or in a notebook; plain, throttled lines in any other stream (see the module docs).
    """
    show = _enabled if enabled is None else (enabled and _enabled)
    if not show:
        yield from iterable
        return
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    stream = sys.stderr
    if _is_terminal(stream) or _in_notebook():
        yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=stream)
    else:
        yield from _lines(iterable, desc, total, stream, line_interval())
