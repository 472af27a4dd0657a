"""Held-out metrics of a recommender at one site, on the full item catalogue.

Every held-out item is ranked against **all** items of the catalogue (no sampled
negatives), minus the items the patient already has in training (and, for the
test split, the validation item, which precedes it). With one held-out item per
patient (leave-last-out), recall@K equals HR@K; both are reported under their
names. ``coverage@K`` is the share of the catalogue that appears in at least one
patient's top K at this site. RMSE and MAE apply to explicit ratings only.

Scores come from a registered scoring mode (``recommend-mode``): the model
itself, item-item similarity of the learned item vectors (``item-knn``), or
similar patients of the same site (``user-knn``, local: user vectors never
leave their site).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from data.interactions import Interactions, InteractionSite

KS = (5, 10)
NEIGHBOURS = 20  # user-knn: similar patients of the same site


def _history_matrix(site: InteractionSite, rows: Interactions) -> np.ndarray:
    """Boolean ``(num_users, num_items)`` matrix of the given rows."""
    out = np.zeros((site.num_users, len(site.catalogue)), dtype=bool)
    out[rows.user, rows.item] = True
    return out


def _cosine(x: torch.Tensor) -> torch.Tensor:
    unit = nn.functional.normalize(x, dim=1)
    return unit @ unit.T


def model_scores(model, vectors: torch.Tensor, site, users: np.ndarray) -> np.ndarray:
    return model.score_all(vectors[users]).numpy()


def item_knn_scores(model, vectors: torch.Tensor, site, users: np.ndarray):
    """Sum of the cosine similarities of each item to the patient's own items."""
    similarity = _cosine(model.item_vectors()).numpy()
    seen = _history_matrix(site, site.train)[users].astype(np.float32)
    return seen @ similarity


def user_knn_scores(model, vectors: torch.Tensor, site, users: np.ndarray):
    """Items of the patient's most similar patients at this site, by similarity."""
    similarity = _cosine(vectors).numpy()
    np.fill_diagonal(similarity, -np.inf)
    k = min(NEIGHBOURS, max(site.num_users - 1, 1))
    seen = _history_matrix(site, site.train).astype(np.float32)
    out = np.zeros((len(users), seen.shape[1]), dtype=np.float32)
    for row, user in enumerate(users):
        nearest = np.argpartition(-similarity[user], k - 1)[:k]
        weights = np.clip(similarity[user, nearest], 0.0, None)
        out[row] = weights @ seen[nearest]
    return out


Scorer = Callable[[nn.Module, torch.Tensor, InteractionSite, np.ndarray], np.ndarray]
SCORERS: dict[str, Scorer] = {
    "model": model_scores,
    "item-knn": item_knn_scores,
    "user-knn": user_knn_scores,
}


def ranks(scores: np.ndarray, exclude: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target among the non-excluded items (ties count above)."""
    masked = np.where(exclude, -np.inf, scores)
    target = masked[np.arange(len(targets)), targets]
    return (masked > target[:, None]).sum(1) + (
        (masked == target[:, None]).sum(1) - 1
    ) // 2


def ranking_metrics(
    scores: np.ndarray, exclude: np.ndarray, targets: np.ndarray, ks=KS
) -> dict[str, float]:
    """HR@K, NDCG@K, recall@K, MRR and coverage@K of one batch of patients."""
    rank = ranks(scores, exclude, targets)
    out: dict[str, float] = {"mrr": float(np.mean(1.0 / (rank + 1)))}
    masked = np.where(exclude, -np.inf, scores)
    for k in ks:
        hit = rank < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(rank + 2), 0.0).mean())
        top = np.argpartition(-masked, k - 1, axis=1)[:, :k]
        out[f"coverage@{k}"] = float(len(np.unique(top)) / scores.shape[1])
    return out


def held_out(site: InteractionSite, split: str) -> tuple[Interactions, np.ndarray]:
    """The split's rows and, per patient, the items excluded from its ranking."""
    rows = site.test if split == "test" else site.val
    exclude = _history_matrix(site, site.train)
    if split == "test":
        exclude |= _history_matrix(site, site.val)
    return rows, exclude[rows.user]


def site_metrics(
    model: nn.Module,
    vectors: torch.Tensor,
    site: InteractionSite,
    split: str,
    mode: str = "model",
) -> dict[str, float]:
    """Ranking (and, for ratings, RMSE/MAE) metrics of ``split`` at one site.

    Returns ``num-examples`` = the number of patients evaluated (0: nothing held
    out, and no other metric).
    """
    rows, exclude = held_out(site, split)
    if not len(rows):
        return {"num-examples": 0}
    # a patient's own held-out item is never excluded (it is not in its history)
    exclude[np.arange(len(rows)), rows.item] = False
    model.eval()
    with torch.no_grad():
        scores = SCORERS[mode](model, vectors, site, rows.user)
        out = ranking_metrics(scores, exclude, rows.item)
        if site.explicit:
            pred = model.score(vectors[rows.user], torch.as_tensor(rows.item)).numpy()
            err = pred - rows.value
            out["rmse"] = float(np.sqrt(np.mean(err**2)))
            out["mae"] = float(np.mean(np.abs(err)))
    out["num-examples"] = len(rows)
    return out


def popularity_metrics(
    counts: np.ndarray, site: InteractionSite, split: str
) -> dict[str, float]:
    """The popularity baseline: every patient gets the most frequent items."""
    rows, exclude = held_out(site, split)
    if not len(rows):
        return {"num-examples": 0}
    exclude[np.arange(len(rows)), rows.item] = False
    scores = np.broadcast_to(counts.astype(np.float64), exclude.shape)
    return {**ranking_metrics(scores, exclude, rows.item), "num-examples": len(rows)}
