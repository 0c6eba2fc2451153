"""The public API is ``tidings.__all__``: curated, sorted, importable, nothing private."""

from __future__ import annotations

import importlib

import tidings


def test_all_is_sorted_and_unique() -> None:
    assert tidings.__all__ == sorted(tidings.__all__)
    assert len(set(tidings.__all__)) == len(tidings.__all__)


def test_every_exported_name_is_importable() -> None:
    module = importlib.import_module("tidings")
    missing = [name for name in tidings.__all__ if not hasattr(module, name)]
    assert missing == []


def test_nothing_private_is_exported() -> None:
    private = [n for n in tidings.__all__ if n.startswith("_") and n != "__version__"]
    assert private == []


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from tidings import *", namespace)
    exported = {name for name in namespace if name != "__builtins__"}
    assert exported == set(tidings.__all__)


def test_every_public_exception_derives_from_the_root() -> None:
    for name in tidings.__all__:
        value = getattr(tidings, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, tidings.TidingsError), name
