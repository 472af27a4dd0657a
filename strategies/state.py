"""The state protocol checkpoints use: server-side state that survives a restart."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Stateful(Protocol):
    """Server-side state saved in every checkpoint and restored on ``resume-from``.

    Strategies implement it (FedOpt moments); a wrapper (e.g. a central-DP wrapper
    with a privacy accountant) implements it by nesting its inner strategy's state
    under a key of its own. Values may be plain Python scalars, lists, dicts,
    numpy arrays or torch tensors.
    """

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the last round ended."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        ...
