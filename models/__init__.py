"""Model registry: tabular and imaging nets built from a serialisable spec."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from data.lazy import LazyRegistry
from data.spec import DatasetInfo

ModelFactory = Callable[..., nn.Module]

# MONAI networks (models/imaging.py), imported only when one is built; a test checks
# this tuple against models.imaging.IMAGING_MODELS.
IMAGING_MODEL_NAMES: tuple[str, ...] = (
    "poolcnn",
    "poolcnn-small",
    "smallcnn",
    "resnet10",
    "resnet18",
    "densenet121",
    "efficientnet-b0",
)

MODELS: LazyRegistry = LazyRegistry(
    {
        "logreg": "models.tabular:LogisticRegression",
        "mlp": "models.tabular:TabularMLP",
        "mlp-norm": "models.tabular:NormMLP",
        "poolcnn": "models.imaging:PoolCNN",
        "poolcnn-small": "models.imaging:poolcnn_small",
        "smallcnn": "models.imaging:SmallCNN",
        "resnet10": "models.imaging:resnet10",
        "resnet18": "models.imaging:resnet18",
        "densenet121": "models.imaging:densenet121",
        "efficientnet-b0": "models.imaging:efficientnet_b0",
    }
)

# Constructor argument -> run-config field, per model (beyond the data's shape).
MODEL_OPTIONS: dict[str, dict[str, str]] = {
    "logreg": {},
    "mlp": {"hidden": "mlp_hidden", "layers": "mlp_layers"},
    "mlp-norm": {"hidden": "mlp_hidden", "layers": "mlp_layers"},
    **{name: {"tta": "tta"} for name in IMAGING_MODEL_NAMES},
}

# Which task (kind of data) each model takes, and each task's default model.
MODEL_TASKS: dict[str, str] = {
    "logreg": "tabular",
    "mlp": "tabular",
    "mlp-norm": "tabular",
    **{name: "imaging" for name in IMAGING_MODEL_NAMES},
}
DEFAULT_MODELS: dict[str, str] = {"tabular": "logreg", "imaging": "poolcnn"}


def _tabular_inputs(name: str, info: DatasetInfo) -> dict[str, Any]:
    return {"in_features": info.input_shape[0], "num_classes": info.num_classes}


def _imaging_inputs(name: str, info: DatasetInfo) -> dict[str, Any]:
    from models.imaging import check_input_size  # imports MONAI: only for images

    check_input_size(name, info.input_shape)
    return {
        "spatial_dims": len(info.input_shape) - 1,
        "in_channels": info.input_shape[0],
        "num_classes": info.num_classes,
    }


# Task -> constructor arguments taken from the data's shape (no data, only shape).
INPUT_ARGS: dict[str, Callable[[str, DatasetInfo], dict[str, Any]]] = {
    "tabular": _tabular_inputs,
    "imaging": _imaging_inputs,
}


def input_kwargs(name: str, info: DatasetInfo) -> dict[str, Any]:
    """Return the constructor arguments of ``name`` for data shaped as ``info``.

    Raises ``ValueError`` naming the mismatch when the model does not take this
    kind of data or the images are smaller than the network accepts.
    """
    task = MODEL_TASKS[name]
    if info.task != task:
        raise ValueError(f"model '{name}' is a {task} model; the data are {info.task}.")
    return INPUT_ARGS[task](name, info)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network: its registry name and arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Record the whole architecture, not only the arguments that were given: a
        # saved model then rebuilds the same network even after the class's
        # defaults (say, its channel widths) change.
        object.__setattr__(self, "kwargs", architecture_kwargs(self.name, self.kwargs))

    def build(self) -> nn.Module:
        return build_model(self.name, **self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def architecture_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` completed with the keyword defaults of model ``name``'s factory.

    An unknown name is returned unchanged (``build_model`` names the problem).
    """
    if name not in MODELS:
        return dict(kwargs)
    params = inspect.signature(MODELS[name]).parameters.values()
    defaults = {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return {**defaults, **kwargs}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``.

    ``tta`` (imaging) is not a layer: it is kept on the module as ``model.tta``
    for :func:`models.training.predict_proba`, so the weights (and state_dict
    keys) are the same with and without test-time augmentation.
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(
            f"Unknown model {name!r}; known: {', '.join(sorted(MODELS))}"
        ) from None
    tta = kwargs.pop("tta", "none")
    model = factory(**kwargs)
    model.tta = tta
    return model
