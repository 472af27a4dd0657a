"""Tabular disease-prediction networks (no BatchNorm, so DP-SGD applies as is)."""

from __future__ import annotations

import torch
from torch import nn


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one linear layer producing class logits."""

    def __init__(self, in_features: int, num_classes: int = 2) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2:
            raise ValueError(
                f"in_features must be >= 1 and num_classes >= 2, got "
                f"{in_features} and {num_classes}."
            )
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class TabularMLP(nn.Module):
    """A ReLU multilayer perceptron without normalisation layers.

    No BatchNorm: its running statistics mix records within a batch, which per-sample
    DP clipping cannot bound, and its buffers would leak batch statistics.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 2,
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2 or hidden < 1 or layers < 1:
            raise ValueError(
                "in_features, hidden and layers must be >= 1 and num_classes >= 2."
            )
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
            width = hidden
        blocks.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NormMLP(nn.Module):
    """A ReLU MLP with LayerNorm after each hidden layer.

    LayerNorm normalises each record on its own (no batch statistics), so it is
    DP-compatible, and its affine parameters are what FedBN-style ``local-norm``
    keeps at each hospital to absorb a site's feature shift.
    """

    def __init__(
        self, in_features: int, num_classes: int = 2, hidden: int = 64, layers: int = 2
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2 or hidden < 1 or layers < 1:
            raise ValueError(
                "in_features, hidden and layers must be >= 1 and num_classes >= 2."
            )
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ReLU()]
            width = hidden
        blocks.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
