"""Model registry: tabular and imaging nets built from a serialisable spec.

One :class:`ModelRecord` per network; its class is imported only when one is built,
so a tabular hospital never imports MONAI and the run config checks a model name
without importing torch.

- ``tabular``, ``imaging``: the networks (imaging: MONAI, DP-safe by construction)
- ``training``: local training and evaluation loops; ``metrics``: clinical metrics
- ``checkpoint``: a saved model with all needed to apply it; ``personalization``:
  transfer, fine-tuning and per-hospital normalisation layers
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from data.lazy import LazyTarget
from data.spec import DatasetInfo

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelRecord(LazyTarget):
    """One registered network.

    Attributes
    ----------
    target
        ``"module:factory"`` building the network.
    task
        The kind of data it takes (``tabular``, ``imaging`` or ``recommendation``).
    options
        Constructor argument -> run-config field, beyond the data's shape.
    default
        The network ``model = "auto"`` builds for its task.
    input_stats
        It standardises features it computes from the inputs with the hospitals'
        pooled statistics, asked before round 1 (app/server/input_stats.py).
    """

    task: str = "tabular"
    options: Mapping[str, str] = field(default_factory=dict)
    default: bool = False
    input_stats: bool = False


_MLP = {"hidden": "mlp_hidden", "layers": "mlp_layers"}
# Test-time augmentation is kept on the module, not passed to the factory
# (see build_model).
_TTA = {"tta": "tta"}
_REC = {"dim": "rec_dim"}


def _imaging(target: str, default: bool = False) -> ModelRecord:
    # MONAI networks (models/imaging.py): a test checks each against IMAGING_MODELS.
    return ModelRecord(f"models.imaging:{target}", "imaging", _TTA, default)


MODELS: dict[str, ModelRecord] = {
    "logreg": ModelRecord("models.tabular:LogisticRegression", default=True),
    "mlp": ModelRecord("models.tabular:TabularMLP", options=_MLP),
    "mlp-norm": ModelRecord("models.tabular:NormMLP", options=_MLP),
    "poolcnn": _imaging("PoolCNN", default=True),
    "poolcnn-small": _imaging("poolcnn_small"),
    "smallcnn": _imaging("SmallCNN"),
    "resnet10": _imaging("resnet10"),
    "resnet18": _imaging("resnet18"),
    "densenet121": _imaging("densenet121"),
    "efficientnet-b0": _imaging("efficientnet_b0"),
    # shape descriptors + linear head (models/shape.py); standardised before round 1
    "shape": ModelRecord("models.shape:ShapeNet", "imaging", _TTA, input_stats=True),
    # recommenders: the shared part only (user vectors stay at their site)
    "mf": ModelRecord(
        "models.recommender:BiasedMF", "recommendation", _REC, default=True
    ),
    "ncf": ModelRecord("models.recommender:NeuralCF", "recommendation", _REC),
}


def default_model(task: str) -> str:
    """The network ``model = "auto"`` builds for ``task``."""
    return next(n for n, rec in MODELS.items() if rec.task == task and rec.default)


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


def _recommendation_inputs(name: str, info: DatasetInfo) -> dict[str, Any]:
    return {"num_items": info.input_shape[0]}


# Task -> constructor arguments taken from the data's shape (no data, only shape).
INPUT_ARGS: dict[str, Callable[[str, DatasetInfo], dict[str, Any]]] = {
    "tabular": _tabular_inputs,
    "imaging": _imaging_inputs,
    "recommendation": _recommendation_inputs,
}


def input_kwargs(name: str, info: DatasetInfo) -> dict[str, Any]:
    """Return the constructor arguments of ``name`` for data shaped as ``info``.

    Raises ``ValueError`` naming the mismatch when the model does not take this
    kind of data or the images are smaller than the network accepts.
    """
    task = MODELS[name].task
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
    return {**_keyword_defaults(MODELS[name].load()), **kwargs}


@lru_cache(maxsize=64)
def _keyword_defaults(factory: Callable[..., nn.Module]) -> dict[str, Any]:
    """A factory's keyword defaults, read once (``inspect.signature`` costs ~0.3 ms
    and every ClientApp message builds a ModelSpec). Callers copy the dict.
    """
    params = inspect.signature(factory).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``.

    ``tta`` (imaging) is not a layer: it is kept on the module as ``model.tta``
    for :func:`models.training.predict_proba`, so the weights (and state_dict
    keys) are the same with and without test-time augmentation.
    """
    try:
        factory = MODELS[name].load()
    except KeyError:
        raise ValueError(
            f"Unknown model {name!r}; known: {', '.join(sorted(MODELS))}"
        ) from None
    tta = kwargs.pop("tta", "none")
    model = factory(**kwargs)
    model.tta = tta
    return model
