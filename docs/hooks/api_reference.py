"""mkdocs hook: one API reference page per public module of ``src/wherefrom``, listed under "API reference".

Pages are generated at build time from the package tree (every ``.py`` file and package whose name does not
start with an underscore), so a new module is documented, and checked by ``mkdocs build --strict``, without
touching ``mkdocs.yml``. A package page shows the package docstring and links each name of its ``__all__`` to the
page of the module that defines it (an unresolvable link fails the strict build). A hand-written
``docs/reference/<module path>.md`` takes precedence over the generated page.
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe
from mkdocs.structure.files import File, Files

SOURCE = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "wherefrom"
SECTION = "API reference"

# Docstrings use Sphinx roles (":class:`~wherefrom.task.Task`"), which Markdown renders as ":class:<code>...</code>".
SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([\w.]+)</code>")


def _page(dotted: str) -> str:
    return "reference/" + dotted.replace(".", "/") + ".md"


def _nav(folder: Path, dotted: str) -> list[str | dict]:
    """Nav entries of a package: its own page, then its modules and sub-packages (as sections), by name."""
    entries: list[str | dict] = [{dotted: _page(dotted)}]
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("_"):
            continue
        if entry.is_dir() and (entry / "__init__.py").exists():
            entries.append({f"{dotted}.{entry.name}": _nav(entry, f"{dotted}.{entry.name}")})
        elif entry.suffix == ".py":
            entries.append({f"{dotted}.{entry.stem}": _page(f"{dotted}.{entry.stem}")})
    return entries


def _pages(nav: list) -> list[str]:
    out: list[str] = []
    for item in nav:
        for value in item.values():
            out.extend(_pages(value) if isinstance(value, list) else [value])
    return out


def _target(obj) -> str:
    return obj.final_target.path if obj.is_alias else obj.path


def _directive(dotted: str, options: list[str]) -> list[str]:
    return [f"::: {dotted}", "    options:", *(f"      {o}" for o in options)]


def _content(dotted: str, package: griffe.Module) -> str:
    module = package.modules_collection[dotted]
    is_package = (SOURCE / dotted.replace(".", "/") / "__init__.py").exists()
    lines: list[str] = []  # the module's own heading (level 1) is the page title
    if is_package:  # names defined in __init__ are documented here; re-exported ones are linked
        lines += _directive(dotted, ["heading_level: 1", "members: false"])
        exports = list(module.exports or [])
        own = [name for name, member in module.members.items()
               if not name.startswith("_") and not member.is_alias and not member.is_module]
        linked = [name for name in exports if module.members[name].is_alias]
        for name in own:
            lines += ["", *_directive(f"{dotted}.{name}", ["heading_level: 2"])]
        if linked:
            lines += ["", "Public names, documented on the pages of the modules that define them:", ""]
            lines += [f"- [`{name}`][{_target(module.members[name])}]" for name in linked]
    else:
        lines += _directive(dotted, ["heading_level: 1"])
    return "\n".join(lines) + "\n"


def on_config(config):
    api = {SECTION: _nav(SOURCE / PACKAGE, PACKAGE)}
    nav = config["nav"] or []
    config["nav"] = [item for item in nav if not (isinstance(item, dict) and SECTION in item)] + [api]
    config.extra["api_pages"] = _pages(api[SECTION])
    return config


def on_files(files: Files, config) -> Files:
    package = griffe.load(PACKAGE, search_paths=[str(SOURCE)], resolve_aliases=True)
    for path in config.extra["api_pages"]:
        if files.get_file_from_path(path) is None:
            dotted = path.removeprefix("reference/").removesuffix(".md").replace("/", ".")
            files.append(File.generated(config, path, content=_content(dotted, package)))
    return files


def _role(match: re.Match) -> str:
    tilde, path = match.groups()
    return f"<code>{path.rsplit('.', 1)[-1] if tilde else path}</code>"


def on_page_content(html: str, page, config, files) -> str:
    """Show Sphinx cross-reference roles in docstrings as plain code (``~`` keeps the last name only)."""
    return SPHINX_ROLE.sub(_role, html)
