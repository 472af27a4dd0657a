"""Registry records whose object is imported on first use.

Why: a ClientApp process in deployment starts fresh for every message; importing
MONAI (seconds of CPU) for a tabular hospital would be paid on every round. So the
strategy, model and dataset registries hold ``"package.module:attribute"`` strings
and the facts the run config checks (task, options), never the objects themselves.
The Flower apps name their handlers and server paths alike (:func:`deferred`), so
that loading an app imports neither torch nor our data code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any


def load(target: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module, _, attribute = target.partition(":")
    return getattr(import_module(module), attribute)


def deferred(target: str, *bound: Any) -> Callable[..., Any]:
    """A function that imports ``"package.module:function"`` when first called and
    calls it (after any ``bound`` leading arguments): for handlers registered where
    importing them would be too early.
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        return load(target)(*bound, *args, **kwargs)

    call.__name__ = call.__qualname__ = target.rpartition(":")[2]
    call.__doc__ = f"Call ``{target}`` (imported on first use)."
    return call


@dataclass(frozen=True)
class LazyTarget:
    """A registry record naming its object as ``"package.module:attribute"``."""

    target: str

    def load(self) -> Any:
        """Import the record's object (Python caches the module)."""
        return load(self.target)
