"""Progress bars (tqdm) that the whole library can silence in one place.

Silence them with ``wherefrom.set_progress(False)`` or the environment variable ``WHEREFROM_PROGRESS=0``;
every long loop also takes ``progress=False``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

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


def track(
    iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool | None = None
) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar unless progress is silenced (globally or by ``enabled=False``)."""
    show = _enabled if enabled is None else (enabled and _enabled)
    if not show:
        yield from iterable
        return
    yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
