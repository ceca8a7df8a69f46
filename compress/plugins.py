"""Plug-in tables: built-in ``name -> "module:attr"`` entries plus a package entry-point group.

Stages (``compress.stages``) and runtimes (``compress.runtimes``) are registered the same way: a plug-in
package declares ``[project.entry-points."compress.<group>"] name = "module:Class"``; built-ins win on a
name clash. Nothing is imported until :func:`load_object` asks for it.
"""
from __future__ import annotations

import importlib
from typing import Any


def plugin_table(builtin: dict[str, str], group: str) -> dict[str, str]:
    """``builtin`` plus every entry point of ``group`` whose name is not built in."""
    from importlib.metadata import entry_points

    table = dict(builtin)
    for ep in entry_points(group=group):
        table.setdefault(ep.name, ep.value)
    return table


def load_object(spec: str) -> Any:
    """Import ``module:attr`` and return the attribute."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)
