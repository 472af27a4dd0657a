"""Personalised federated learning: each hospital also keeps a model of its own.

One module per method, one registry line each (``personalization`` run-config
key). A method trains the received global model (or its shared part) as the
federation's update and a personal model, or personal parts, kept in the
hospital's ``context.state``: they survive rounds and are never sent. The reply
holds the shared part only; evaluation scores the received global model
(unprefixed metrics) and the personal model (``personal_*``).

=========  ====================================  ==============================
method     personal, kept at the hospital        shared, in the reply
=========  ====================================  ==============================
finetune   a head fine-tuned at evaluation       the whole model
ditto      a whole model pulled toward the       the whole model (trained as
           global one (``ditto-lambda``)         under plain FedAvg)
apfl       a local model and the weight          the whole model
           ``alpha`` mixing its output with the
           global model's (learned)
fedrep     the head (last linear layer)          the body
fenda      a local extractor and the head on     the global extractor (the
           both extractors                       model without its head)
=========  ====================================  ==============================

Why this module imports nothing heavy: the run config checks the method names
(:mod:`app.config.keys`) without importing torch; classes load on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from data.lazy import LazyTarget

if TYPE_CHECKING:
    from app.config import RunConfig
    from app.personalization.base import Method


@dataclass(frozen=True)
class MethodRecord(LazyTarget):
    """One registered method.

    Attributes
    ----------
    shares_head
        False when the model's head (its last linear layer) stays at the
        hospital: replies then hold the rest of the model only, and the server
        keeps its own head values for those keys.
    """

    shares_head: bool = True


METHODS: dict[str, MethodRecord] = {
    "none": MethodRecord("app.personalization.base:Method"),
    "finetune": MethodRecord("app.personalization.finetune:FineTune"),
    "ditto": MethodRecord("app.personalization.ditto:Ditto"),
    "apfl": MethodRecord("app.personalization.apfl:APFL"),
    "fedrep": MethodRecord("app.personalization.fedrep:FedRep", shares_head=False),
    "fenda": MethodRecord("app.personalization.fenda:Fenda", shares_head=False),
}


# What ``finetune`` adapts (``personalize-part``): the head, or its bias alone
# (models.personalization.HEAD_PARTS holds the parameter selectors).
FINETUNE_PARTS = ("head", "bias")


def method_name(cfg: RunConfig) -> str:
    """The run's method: ``personalize-epochs > 0`` alone means ``finetune``."""
    if cfg.personalization == "none" and cfg.personalize_epochs > 0:
        return "finetune"
    return cfg.personalization


def build_method(cfg: RunConfig) -> Method:
    """The run's personalisation method, configured from ``cfg``."""
    return METHODS[method_name(cfg)].load()(cfg)
