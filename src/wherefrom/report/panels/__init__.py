"""The report's panels: a small registry, one module and one template per panel.

A panel turns the saved results into the context of its jinja2 template, or ``None`` when it has nothing to show
(e.g. no self-influence was saved). Adding a panel is one module in this package and one template:

    # wherefrom/report/panels/my_panel.py
    from wherefrom.report.panels import register_panel

    @register_panel("my-panel", "My panel", order=50)          # renders templates/panels/my-panel.html.j2
    def build(data):                                           # data: wherefrom.report.render.ReportData
        if data.attribution is None:
            return None
        return {"rows": ...}

Every module of this package is imported when the panels are listed, so a new module registers itself.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Panel:
    """A registered panel: ``build(data) -> context | None`` rendered by ``templates/<template>``."""

    name: str
    title: str
    order: int
    template: str
    build: Callable[[Any], dict[str, Any] | None]


PANELS: dict[str, Panel] = {}


def register_panel(name: str, title: str, order: int = 100, template: str | None = None):
    """Decorator: register ``build(data) -> dict | None`` as the panel ``name`` (template ``panels/<name>.html.j2``)."""

    def deco(build: Callable[[Any], dict[str, Any] | None]):
        PANELS[name] = Panel(name, title, order, template or f"panels/{name}.html.j2", build)
        return build

    return deco


def panels() -> list[Panel]:
    """Every registered panel, in page order."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return sorted(PANELS.values(), key=lambda p: (p.order, p.name))
