"""Model registry: tabular nets (and imaging nets) built from a serialisable spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from models.tabular import LogisticRegression, NormMLP, TabularMLP

ModelFactory = Callable[..., nn.Module]

MODELS: dict[str, ModelFactory] = {
    "logreg": LogisticRegression,
    "mlp": TabularMLP,
    "mlp-norm": NormMLP,
}

# Constructor argument -> run-config field, per model (beyond the data's shape).
MODEL_OPTIONS: dict[str, dict[str, str]] = {
    "logreg": {},
    "mlp": {"hidden": "mlp_hidden", "layers": "mlp_layers"},
    "mlp-norm": {"hidden": "mlp_hidden", "layers": "mlp_layers"},
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network: its registry name and arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return build_model(self.name, **self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(
            f"Unknown model {name!r}; known: {', '.join(sorted(MODELS))}"
        ) from None
    return factory(**kwargs)
