"""Collaborative-filtering networks whose shared part holds no patient.

A recommender here is split in two:

- the **shared model** (this module's ``nn.Module``s): item embeddings, item
  biases, the global bias and, for NCF, the interaction network. It is what the
  federation averages, checkpoints and saves as ``final_model.pt``;
- the **user vectors** (:class:`UserTable`): one row per patient of one site,
  kept at that site (``context.state``) and never sent.

Both networks score a batch of (user vector, item) pairs with :meth:`score` and
rank the whole catalogue for a batch of users with :meth:`score_all`; the width of
the user vector they expect is :attr:`user_dim`. ``sparse_keys`` names the shared
arrays whose rows are items: a site's update only changes the rows of the items
it trained on, so it may send those rows alone (``rec-update = "sparse"``);
``bias_keys`` names the per-item and global offsets, the part patient-level DP
trains under ``rec-dp-shared = "biases"`` (``"popularity"``, the default, trains
the item biases alone; :mod:`app.recommendation.dp`).
"""

from __future__ import annotations

import torch
from torch import nn


class BiasedMF(nn.Module):
    """Biased matrix factorisation: ``s(u, i) = p_u . q_i + b_u + b_i + mu``.

    The user vector is ``[p_u, b_u]`` (``dim + 1`` values), kept at the site.
    """

    sparse_keys = ("item_embedding.weight", "item_bias.weight")
    bias_keys = ("item_bias.weight", "global_bias")

    def __init__(self, num_items: int, dim: int = 32, init_std: float = 0.1) -> None:
        super().__init__()
        self.num_items, self.dim = int(num_items), int(dim)
        self.item_embedding = nn.Embedding(num_items, dim)
        self.item_bias = nn.Embedding(num_items, 1)
        self.global_bias = nn.Parameter(torch.zeros(1))
        nn.init.normal_(self.item_embedding.weight, std=init_std)
        nn.init.zeros_(self.item_bias.weight)

    @property
    def user_dim(self) -> int:
        return self.dim + 1

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of ``users[k]`` (vectors ``(B, user_dim)``) for ``items[k]``."""
        q = self.item_embedding(items)
        dot = (users[:, : self.dim] * q).sum(-1)
        return dot + users[:, self.dim] + self.item_bias(items)[:, 0] + self.global_bias

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.score(users, items)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user vector: shape ``(B, num_items)``."""
        dot = users[:, : self.dim] @ self.item_embedding.weight.T
        return (
            dot
            + users[:, self.dim : self.dim + 1]
            + self.item_bias.weight[:, 0]
            + self.global_bias
        )

    def item_vectors(self) -> torch.Tensor:
        """Item representations for item-item similarity (item-knn)."""
        return self.item_embedding.weight


class NeuralCF(nn.Module):
    """Neural collaborative filtering (NeuMF): a GMF and an MLP branch, fused.

    The user vector is ``[p_gmf, p_mlp]`` (``2 * dim`` values), kept at the site;
    the item embeddings of both branches and the MLP are shared.
    """

    sparse_keys = ("item_gmf.weight", "item_mlp.weight", "item_bias.weight")
    bias_keys = ("item_bias.weight", "head.bias")

    def __init__(
        self,
        num_items: int,
        dim: int = 32,
        hidden: int = 64,
        init_std: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_items, self.dim = int(num_items), int(dim)
        self.item_gmf = nn.Embedding(num_items, dim)
        self.item_mlp = nn.Embedding(num_items, dim)
        self.item_bias = nn.Embedding(num_items, 1)
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.ReLU()
        )
        self.head = nn.Linear(2 * dim, 1)
        for table in (self.item_gmf, self.item_mlp):
            nn.init.normal_(table.weight, std=init_std)
        nn.init.zeros_(self.item_bias.weight)

    @property
    def user_dim(self) -> int:
        return 2 * self.dim

    def _fuse(self, users: torch.Tensor, gmf: torch.Tensor, mlp: torch.Tensor):
        """Scores from user vectors and item vectors broadcast to the same shape."""
        p_gmf, p_mlp = users[..., : self.dim], users[..., self.dim :]
        hidden = self.mlp(torch.cat([p_mlp, mlp], dim=-1))
        return self.head(torch.cat([p_gmf * gmf, hidden], dim=-1))[..., 0]

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of ``users[k]`` (vectors ``(B, user_dim)``) for ``items[k]``."""
        fused = self._fuse(users, self.item_gmf(items), self.item_mlp(items))
        return fused + self.item_bias(items)[:, 0]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.score(users, items)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user vector: shape ``(B, num_items)``."""
        n = self.num_items
        expanded = users[:, None, :].expand(-1, n, -1)
        gmf = self.item_gmf.weight[None].expand(len(users), -1, -1)
        mlp = self.item_mlp.weight[None].expand(len(users), -1, -1)
        return self._fuse(expanded, gmf, mlp) + self.item_bias.weight[:, 0]

    def item_vectors(self) -> torch.Tensor:
        """Item representations for item-item similarity (item-knn)."""
        return torch.cat([self.item_gmf.weight, self.item_mlp.weight], dim=1)


class UserTable(nn.Module):
    """One site's user vectors: never part of the shared model, never sent."""

    def __init__(
        self, num_users: int, user_dim: int, seed: int, init_std: float = 0.1
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(int(seed))
        weight = torch.randn(num_users, user_dim, generator=generator) * init_std
        self.weight = nn.Parameter(weight)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.weight[users]
