"""Warnings that point at the user's line and are issued once per cause.

- :func:`warn` issues a warning with the ``stacklevel`` of the first frame outside the wherefrom package (the
  user's call), and only once per ``(owner, cause)``: the cause is the message with its numbers blanked (or an
  explicit ``key``), the owner an object (an attributor, a task) or ``None`` for the process.
- :func:`collected` is what every public attributor method runs under: wherefrom's own warnings raised inside (by
  solvers, sources, the batch loop) are recorded and re-issued through :func:`warn` with the attributor as owner, so
  an indefinite-curvature warning appears once, at the line that called ``fit``, not again at every ``score``.
  Other libraries' warnings are re-issued unchanged. Collected warnings are issued when the call returns or raises.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_SKIP = (_PACKAGE_DIR + os.sep, contextlib.__file__, functools.__file__)
_NUMBER = re.compile(r"[-+]?\d[\d.,]*(?:e[-+]?\d+)?", re.IGNORECASE)
_PROCESS_SEEN: set[tuple[str, str]] = set()
_state = threading.local()


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes :func:`warnings.warn`, called by this function's caller, name the first frame
    outside wherefrom (and outside ``contextlib`` / ``functools``): the user's line."""
    frame = sys._getframe(1)  # the frame that calls warnings.warn: stacklevel 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_SKIP):
        frame = frame.f_back
        level += 1
    return level


def cause_of(message: str) -> str:
    """The message with its numbers blanked: two warnings with the same cause differ only in their numbers."""
    return _NUMBER.sub("#", message)


def _seen(owner: Any) -> set[tuple[str, str]]:
    if owner is None:
        return _PROCESS_SEEN
    seen = owner.__dict__.get("_warned_causes")
    if seen is None:
        seen = set()
        owner.__dict__["_warned_causes"] = seen
    return seen


def warn(message: str, category: type[Warning] = UserWarning, *, owner: Any = None, key: str | None = None) -> bool:
    """Issue ``message`` at the user's line unless ``owner`` already issued this cause; returns whether it did."""
    seen = _seen(owner)
    cause = (category.__name__, key if key is not None else cause_of(str(message)))
    if cause in seen:
        return False
    seen.add(cause)
    level = user_stacklevel()
    warnings.warn(message, category, stacklevel=level)
    return True


@contextlib.contextmanager
def collected(owner: Any) -> Iterator[None]:
    """Record the warnings raised inside and re-issue each cause once per ``owner`` at the user's line.

    Nested uses (``score`` inside ``top_k``) collect only at the outermost level.
    """
    if getattr(_state, "depth", 0) > 0:
        yield
        return
    _state.depth = 1
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        _state.depth = 0
        for w in caught:
            if os.path.abspath(w.filename).startswith(_PACKAGE_DIR + os.sep):
                warn(str(w.message), w.category, owner=owner)
            else:  # another library's or the user's warning: re-issued unchanged, where it was raised
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def collecting(method: Callable) -> Callable:
    """Decorate a public method so that its warnings go through :func:`collected` with ``self`` as the owner."""
    if getattr(method, "_collects_warnings", False):
        return method

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with collected(self):
            return method(self, *args, **kwargs)

    wrapper._collects_warnings = True  # type: ignore[attr-defined]
    return wrapper
