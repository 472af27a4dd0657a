"""Shadow-model membership inference (Shokri et al., S&P 2017).

https://arxiv.org/abs/1610.05820

The attacker holds records from the target's distribution that the target never
trained on. It trains ``k`` shadow models with the target's architecture and
recipe, each on a random half of those records (its "in" set; the other half is
its "out" set), so it knows membership for the shadow models. An attack classifier
learns to tell "in" from "out" from a shadow model's output on a record (sorted
class probabilities, the probability and loss of the true class, the true class);
applied to the target model's outputs it scores the target's members against its
non-members (ROC AUC and TPR at 1% FPR, :func:`app.privacy.membership.score_attack`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from torch import nn

from app.privacy.membership import AttackResult, score_attack
from data.spec import Split
from models.training import TrainSettings, make_loader, predict_proba, train_epochs

# Train a fresh model of the target's architecture on a split (the recipe).
Trainer = Callable[[Split, int], nn.Module]


def attack_features(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-record attack inputs from a model's class probabilities.

    Sorted probabilities (label-free confidence profile), the probability and log
    loss of the true class, and the one-hot true class.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    true = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    onehot = np.eye(probs.shape[1])[labels]
    return np.column_stack(
        [np.sort(probs, axis=1)[:, ::-1], true, np.log(true), onehot]
    )


def recipe_trainer(
    build: Callable[[], nn.Module], settings: TrainSettings, device: torch.device
) -> Trainer:
    """A :data:`Trainer` that builds a model and trains it with ``settings``."""

    def train(split: Split, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = build()
        loader = make_loader(split, settings.batch_size, shuffle=True, seed=seed)
        train_epochs(model, loader, settings, device)
        return model.eval()

    return train


@dataclass(frozen=True)
class ShadowAttack:
    """A fitted attack classifier and how it was obtained."""

    classifier: HistGradientBoostingClassifier
    shadow_models: int
    shadow_records: int

    def scores(
        self, model: nn.Module, split: Split, device: torch.device
    ) -> np.ndarray:
        """Membership probability of each record of ``split`` under ``model``."""
        features = attack_features(predict_proba(model, split.x, device), split.y)
        return self.classifier.predict_proba(features)[:, 1]


def fit_shadow_attack(
    train: Trainer,
    attacker: Split,
    device: torch.device,
    *,
    shadow_models: int = 4,
    seed: int = 0,
) -> ShadowAttack:
    """Train ``shadow_models`` shadow models on random halves of ``attacker``.

    Fits the attack classifier on their in/out outputs.
    """
    if len(attacker) < 4:
        raise ValueError(
            f"the shadow attack needs at least 4 attacker records, got {len(attacker)}."
        )
    if shadow_models < 1:
        raise ValueError("shadow_models must be >= 1.")
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for k in range(shadow_models):
        order = rng.permutation(len(attacker))
        half = len(order) // 2
        inside, outside = order[:half], order[half:]
        shadow = train(Split(attacker.x[inside], attacker.y[inside]), seed + 1 + k)
        for idx, member in ((inside, 1), (outside, 0)):
            probs = predict_proba(shadow, attacker.x[idx], device)
            features.append(attack_features(probs, attacker.y[idx]))
            labels.append(np.full(len(idx), member))
    classifier = HistGradientBoostingClassifier(
        max_iter=100, max_depth=3, learning_rate=0.1, random_state=seed
    )
    classifier.fit(np.concatenate(features), np.concatenate(labels))
    return ShadowAttack(classifier, shadow_models, len(attacker))


def shadow_attack(
    target: nn.Module,
    members: Split,
    non_members: Split,
    attack: ShadowAttack,
    device: torch.device,
) -> AttackResult:
    """Score the fitted shadow attack on the target's members vs non-members."""
    return score_attack(
        "shadow",
        attack.scores(target, members, device),
        attack.scores(target, non_members, device),
    )


def split_attacker_data(non_members: Split, seed: int = 0) -> tuple[Split, Split]:
    """Split a non-member pool into the attacker's records and evaluation records.

    The attacker's half trains the shadow models; the other half stays unseen by
    both the target and the shadows and serves as the non-members the attack is
    scored on.
    """
    order = np.random.default_rng(seed).permutation(len(non_members))
    half = len(order) // 2
    pick = (order[:half], order[half:])
    return tuple(Split(non_members.x[i], non_members.y[i]) for i in pick)  # type: ignore[return-value]
