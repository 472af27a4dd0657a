"""One hospital's side of vertical FL, independent of Flower's message classes.

A :class:`PartySession` is rebuilt for every message from the hospital's data and
its persisted state (``context.state`` in the ClientApp), handles one action and
exposes the new state to persist. Replies carry only counts, PSI protocol bytes,
embeddings, gradients and aggregate metrics: never an ID, a feature value or a
label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from app.vertical.actions import PSI_ACTIONS
from app.vertical.data import VerticalParty, split_positions, standardized_features
from app.vertical.psi import (
    PsiError,
    PsiPartyState,
    aligned_rows,
    handle_psi,
    normalise_ids,
)
from app.vertical.split import (
    BottomModel,
    BottomStep,
    TopModel,
    TopStep,
    load_optimizer_state,
    make_optimizer,
    optimizer_state,
)
from models.metrics import classification_metrics
from models.training import TrainSettings

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class VerticalSettings:
    """The run-config values a party needs (the same at every party)."""

    embedding: int = 8
    hidden: int = 32
    test_fraction: float = 0.2
    seed: int = 42
    train: TrainSettings = field(default_factory=TrainSettings)


@dataclass
class PartyState:
    """What a party keeps between messages (all of it stays at the party)."""

    psi: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    model: Tensors = field(default_factory=dict)
    optim: Tensors = field(default_factory=dict)


class PartySession:
    """Handles one vertical-FL action for one party."""

    def __init__(
        self, data: VerticalParty, settings: VerticalSettings, state: PartyState
    ):
        self.data = data
        self.settings = settings
        self.state = state
        self.ids = normalise_ids(data.ids, f"{data.name} ID column")
        self.psi = (
            PsiPartyState.from_config(state.psi)
            if state.psi
            else PsiPartyState.fresh(len(data))
        )

    # -- dispatch -----------------------------------------------------------------

    def handle(
        self, action: str, payload: Mapping[str, Any], tensors: Tensors
    ) -> tuple[dict[str, Any], Tensors]:
        if action in PSI_ACTIONS:
            reply = handle_psi(action, payload, self.ids, self.psi)
            self.state.psi = self.psi.to_config()
            return reply, {}
        handlers = {
            "vfl_info": self._info,
            "vfl_init": self._init,
            "vfl_bottom": self._bottom,
            "vfl_top": self._top,
        }
        if action not in handlers:
            raise PsiError(f"unknown vertical action {action!r}.")
        return handlers[action](payload, tensors)

    # -- data of the aligned patients ---------------------------------------------

    def _aligned(self) -> tuple[torch.Tensor, np.ndarray | None, int]:
        """Standardised features (and labels) of the aligned patients in the shared
        order, and their count.
        """
        rows = aligned_rows(self.ids, self.psi.candidates)
        train_pos, _ = split_positions(
            len(rows), self.settings.test_fraction, self.settings.seed
        )
        x = standardized_features(self.data.x[rows], train_pos)
        y = self.data.y[rows] if self.data.y is not None else None
        return torch.as_tensor(x, dtype=torch.float32), y, len(rows)

    def _positions(self, payload: Mapping[str, Any], key: str, n: int) -> list[int]:
        positions = [int(p) for p in payload.get(key, [])]
        if positions and (min(positions) < 0 or max(positions) >= n):
            raise PsiError(f"'{key}' positions outside 0..{n - 1}.")
        return positions

    # -- actions ------------------------------------------------------------------

    def _info(
        self, payload: Mapping[str, Any], tensors: Tensors
    ) -> tuple[dict, Tensors]:
        role = "label" if self.data.is_label_holder else "features"
        reply = {
            "role": role,
            "count": len(self.data),
            "num-features": self.data.x.shape[1],
        }
        if self.data.y is not None:
            reply["num-classes"] = max(2, int(self.data.y.max(initial=0)) + 1)
        return reply, {}

    def _build(
        self, num_remote: int, num_classes: int
    ) -> tuple[Any, torch.optim.Optimizer]:
        s = self.settings
        torch.manual_seed(s.seed)
        bottom = BottomModel(self.data.x.shape[1], s.embedding, s.hidden)
        if not self.data.is_label_holder:
            opt = make_optimizer(list(bottom.parameters()), s.train)
            return BottomStep(bottom, opt), opt
        top = TopModel(s.embedding * (1 + num_remote), num_classes, s.hidden)
        opt = make_optimizer([*bottom.parameters(), *top.parameters()], s.train)
        return TopStep(bottom, top, opt), opt

    def _restore(self) -> Any:
        meta = self.state.meta
        if "num-remote" not in meta:
            raise PsiError("vertical training message before vfl_init.")
        step, opt = self._build(int(meta["num-remote"]), int(meta["num-classes"]))
        self._modules(step).load_state_dict(self.state.model)
        load_optimizer_state(opt, self.state.optim)
        return step

    @staticmethod
    def _modules(step: Any) -> torch.nn.Module:
        if isinstance(step, TopStep):
            return torch.nn.ModuleDict({"bottom": step.bottom, "top": step.top})
        return torch.nn.ModuleDict({"bottom": step.model})

    def _save(self, step: Any) -> None:
        self.state.model = {
            k: v.detach().clone() for k, v in self._modules(step).state_dict().items()
        }
        self.state.optim = optimizer_state(step.optimizer)

    def _init(
        self, payload: Mapping[str, Any], tensors: Tensors
    ) -> tuple[dict, Tensors]:
        num_remote = int(payload["num-remote"])
        num_classes = int(payload.get("num-classes", 2))
        self.state.meta = {"num-remote": num_remote, "num-classes": num_classes}
        step, _ = self._build(num_remote, num_classes)
        self._save(step)
        _, _, n = self._aligned()
        return {"count": n}, {}

    def _bottom(
        self, payload: Mapping[str, Any], tensors: Tensors
    ) -> tuple[dict, Tensors]:
        if self.data.is_label_holder:
            raise PsiError("vfl_bottom sent to the label holder.")
        x, _, n = self._aligned()
        step: BottomStep = self._restore()
        backward = self._positions(payload, "backward", n)
        if backward:
            step.update(x[backward], tensors["grad"].to(torch.float32))
            self._save(step)
        forward = self._positions(payload, "forward", n)
        if not forward:
            return {}, {}
        return {}, {"embedding": step.embed(x[forward])}

    def _top(
        self, payload: Mapping[str, Any], tensors: Tensors
    ) -> tuple[dict, Tensors]:
        if not self.data.is_label_holder:
            raise PsiError("vfl_top sent to a party without labels.")
        x, y, n = self._aligned()
        assert y is not None
        step: TopStep = self._restore()
        positions = self._positions(payload, "positions", n)
        num_remote = int(self.state.meta["num-remote"])
        remote = [
            tensors[f"embedding.{i}"].to(torch.float32) for i in range(num_remote)
        ]
        if any(len(e) != len(positions) for e in remote):
            raise PsiError("an embedding batch does not match the positions sent.")
        if payload.get("phase", "train") == "train":
            loss, grads = step.train_batch(
                x[positions], remote, torch.as_tensor(y[positions])
            )
            self._save(step)
            return (
                {"loss": loss, "num-examples": len(positions)},
                {f"grad.{i}": g for i, g in enumerate(grads)},
            )
        proba = step.predict_proba(x[positions], remote).numpy()
        metrics = {
            k: v
            for k, v in classification_metrics(y[positions], proba).items()
            if v == v
        }
        return {**metrics, "num-examples": len(positions)}, {}


def stack_embeddings(embeddings: Sequence[torch.Tensor]) -> Tensors:
    """The tensors record the label holder expects, in the server's party order."""
    return {f"embedding.{i}": e for i, e in enumerate(embeddings)}
