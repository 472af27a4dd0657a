"""Patient-level DP-SGD of recommenders: each patient's gradient is its own.

The per-patient gradients come from ``torch.func`` over padded histories; here
they are compared with plain autograd on each patient's unpadded rows, and the
clipped, noiseless sum is checked to bound every patient's contribution.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import grad, vmap

from app.privacy.dp_sgd import DPSettings
from app.recommendation.dp import _noisy_step, _patient_loss, padded_histories
from data.interactions import Interactions
from models.recommender import BiasedMF, NeuralCF


def _rows() -> Interactions:
    user = np.array([0, 0, 0, 1, 2, 2], dtype=np.int64)
    item = np.array([1, 4, 2, 3, 0, 4], dtype=np.int64)
    return Interactions(
        user, item, np.ones(6, np.float32), np.arange(6, dtype=np.float64)
    )


def _dp(noise_multiplier: float, accountant: str) -> DPSettings:
    """Patient-level DP settings with clip norm 1 and no budget limit."""
    return DPSettings(
        noise_multiplier=noise_multiplier,
        max_grad_norm=1.0,
        delta=1e-5,
        accountant=accountant,
        secure_rng=False,
        grad_sampler="layers",
        budget=float("inf"),
    )


def test_per_patient_gradients_equal_autograd_on_each_history():
    torch.manual_seed(0)
    rows = _rows()
    for model in (BiasedMF(6, dim=3), NeuralCF(6, dim=3, hidden=4)):
        vectors = torch.randn(3, model.user_dim)
        items, values, mask = padded_histories(rows, 3)
        negatives = torch.randint(6, items.shape)
        fn = _patient_loss(model, "bpr", l2=0.01)
        params = {k: v.detach() for k, v in model.named_parameters()}
        batched = vmap(grad(fn), in_dims=(None, 0, 0, 0, 0, 0))(
            params, vectors, items, values, mask, negatives
        )
        for patient in range(3):
            n = int(mask[patient].sum())
            model.zero_grad()
            loss = fn(
                dict(model.named_parameters()),
                vectors[patient],
                items[patient, :n],
                values[patient, :n],
                mask[patient, :n],
                negatives[patient, :n],
            )
            loss.backward()
            for name, p in model.named_parameters():
                torch.testing.assert_close(batched[name][patient], p.grad)


def test_clipping_bounds_each_patient_and_no_noise_sums():
    grads = {"a": torch.tensor([[3.0, 4.0], [0.3, 0.4]]), "b": torch.zeros(2, 1)}
    dp = _dp(noise_multiplier=0.0, accountant="rdp")
    out = _noisy_step(grads, dp, expected_batch=1.0, generator=torch.Generator())
    # patient 0 (norm 5) is scaled to norm 1; patient 1 (norm 0.5) is kept
    torch.testing.assert_close(
        out["a"], torch.tensor([0.6 + 0.3, 0.8 + 0.4]), atol=1e-5, rtol=0
    )


def test_biases_only_leaves_the_factors_as_received_and_noises_every_bias():
    from app.recommendation.dp import DP_SHARED, train_site_dp
    from app.recommendation.training import RecTrainSettings
    from models.recommender import UserTable

    torch.manual_seed(0)
    model = BiasedMF(6, dim=3)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    users = UserTable(3, model.user_dim, seed=0)
    before = users.weight.detach().clone()
    dp = _dp(noise_multiplier=1.0, accountant="prv")
    settings = RecTrainSettings(optimizer="sgd", learning_rate=0.1, batch_size=8)
    trained = DP_SHARED["biases"](model)
    assert train_site_dp(model, users, _rows(), settings, dp, trained) == 1
    after = model.state_dict()
    assert torch.equal(after["item_embedding.weight"], start["item_embedding.weight"])
    # item 5 is in no history: noise moves its bias all the same
    assert (after["item_bias.weight"] != start["item_bias.weight"]).all()
    assert not torch.equal(users.weight.detach(), before)  # patients still fit
    assert set(DP_SHARED["all"](model)) == set(start)


def test_popularity_terms_are_each_patients_items_at_the_clip_norm():
    from app.recommendation.dp import popularity_terms

    items, _, mask = padded_histories(_rows(), 3)
    terms = popularity_terms(6, items, mask, clip=0.5)[:, :, 0]
    # patient 1 holds item 3 alone; its padding (item 0, mask 0) counts for nothing
    torch.testing.assert_close(terms[1], torch.tensor([0, 0, 0, -0.5, 0, 0.0]))
    torch.testing.assert_close(terms.norm(dim=1), torch.full((3,), 0.5))
    assert (terms[0, [1, 2, 4]] < 0).all() and (terms[0, [0, 3, 5]] == 0).all()
