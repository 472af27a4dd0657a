"""A name -> object registry whose entries are imported on first use.

Why: a ClientApp process in deployment starts fresh for every message; importing
MONAI (seconds of CPU) for a tabular hospital would be paid on every round.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Any


class LazyRegistry(Mapping[str, Any]):
    """Maps each name to ``"package.module:attribute"``, imported when looked up."""

    def __init__(self, paths: Mapping[str, str]) -> None:
        self._paths = dict(paths)
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            module, _, attribute = self._paths[name].partition(":")
            self._loaded[name] = getattr(import_module(module), attribute)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)
