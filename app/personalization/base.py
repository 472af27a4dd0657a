"""What every personalisation method does, and the plain method (``none``)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn
from torch.utils.data import DataLoader

from app.config import RunConfig
from data.spec import Split
from models.personalization import last_linear
from models.training import TrainSettings, make_loader, train_epochs

STATE_PREFIX = "personal:"  # context.state: "personal:<method>" records


class Method:
    """Plain federated training: no personal model (``personalization='none'``).

    Subclasses override :meth:`train` (the local round) and :meth:`personal`
    (the hospital's own model for evaluation), and set ``shares_head``.
    """

    name = "none"
    shares_head = True

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def train(
        self,
        model: nn.Module,
        train: Split,
        settings: TrainSettings,
        state: RecordDict,
        device: torch.device,
    ) -> dict[str, float]:
        """One round at the hospital: ``model`` (the received global model) is
        trained in place into the update; personal parts go to ``state``.
        """
        del state
        stats = train_epochs(model, shuffled(train, settings), settings, device)
        return {"train_loss": stats["train_loss"]}

    def personal(
        self,
        model: nn.Module,
        train: Split,
        state: RecordDict,
        device: torch.device,
    ) -> nn.Module | None:
        """The hospital's own model given the received global ``model`` (None:
        the method has none, or the hospital has not trained yet).
        """
        del model, train, state, device
        return None

    def local_keys(self, model: nn.Module) -> set[str]:
        """State-dict keys of ``model`` that stay at the hospital."""
        return set() if self.shares_head else head_keys(model)

    def shared(self, model: nn.Module) -> OrderedDict[str, torch.Tensor]:
        """The part of ``model`` that goes in the reply."""
        local = self.local_keys(model)
        return OrderedDict(
            (k, v) for k, v in model.state_dict().items() if k not in local
        )

    # -- context.state ------------------------------------------------------------

    @property
    def state_key(self) -> str:
        return STATE_PREFIX + self.name

    def save(self, state: RecordDict, tensors: dict[str, torch.Tensor]) -> None:
        """Keep ``tensors`` at the hospital (this method's record)."""
        state[self.state_key] = ArrayRecord(
            OrderedDict((k, v.detach().cpu().clone()) for k, v in tensors.items())
        )

    def load(self, state: RecordDict) -> dict[str, torch.Tensor] | None:
        """This method's record, or None before the hospital's first round."""
        record = state.array_records.get(self.state_key)
        return None if record is None else dict(record.to_torch_state_dict())


def shuffled(train: Split, settings: TrainSettings) -> DataLoader:
    """The round's training batches, shuffled by the round's seed (a batch at a
    time: the same batches, without a tuple per record).
    """
    return make_loader(
        train, settings.batch_size, shuffle=True, seed=settings.seed, batched=True
    )


def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's head (its last linear layer)."""
    head = last_linear(model)
    for name, module in model.named_modules():
        if module is head:
            return {f"{name}.{k}" if name else k for k in head.state_dict()}
    raise ValueError("the model's head was not found among its modules.")


@contextlib.contextmanager
def trainable_only(model: nn.Module, params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Freeze every parameter of ``model`` but ``params``; restore on exit (the
    ClientApp's model skeleton is reused across messages).
    """
    before = [(p, p.requires_grad) for p in model.parameters()]
    keep = {id(p) for p in params}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)
