"""Fine-tuning: at evaluation a copy of the global model's head (or its bias
alone, ``personalize-part``) is fine-tuned on the hospital's training split for
``personalize-epochs`` (the copy stays there).
"""

from __future__ import annotations

import torch
from flwr.app import RecordDict
from torch import nn

from app.client.hospital import train_settings
from app.personalization.base import Method
from data.spec import Split
from models.personalization import personalize_head


class FineTune(Method):
    """Plain federated training; the personal model is made at evaluation."""

    name = "finetune"

    def personal(
        self, model: nn.Module, train: Split, state: RecordDict, device: torch.device
    ) -> nn.Module | None:
        del state
        # plain SGD without weight decay, whole epochs
        settings = train_settings(
            self.cfg,
            epochs=self.cfg.personalize_epochs,
            optimizer="sgd",
            weight_decay=0.0,
            max_steps=0,
        )
        return personalize_head(
            model, train, settings, device, part=self.cfg.personalize_part
        )
