"""Finding the user's application object from ``--app module:attr``, with clear errors.

Every command that needs the application (relay, dlq, projections, worker, schema) resolves it
here; each then checks that it got the kind of object it needs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click


def resolve(spec: str) -> Any:
    """Import ``module`` and walk the dotted ``attr`` path of ``module:attr``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise click.BadParameter(f"expected module:attribute, got {spec!r}", param_hint="--app")
    # Like `python -m`, look in the current directory first: apps are usually run from their
    # project's root.
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(
            f"cannot load {spec!r}: cannot import {module_name!r}: {exc}", param_hint="--app"
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.BadParameter(
                f"cannot load {spec!r}: module {module_name!r} has no attribute {attribute!r}",
                param_hint="--app",
            ) from None
    return target
