"""Split learning computes exactly what one centralised network would."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.vertical.coordinator import VerticalPlan, run_vertical_training
from app.vertical.data import simulate_parties
from app.vertical.party import PartySession, PartyState, VerticalSettings
from app.vertical.split import (
    BottomModel,
    BottomStep,
    SplitNetwork,
    TopModel,
    TopStep,
    load_optimizer_state,
    optimizer_state,
)
from models.training import TrainSettings


def test_split_gradients_equal_centralised_autograd():
    torch.manual_seed(0)
    dims, emb, batch = (4, 3, 5), 6, 16
    bottoms = [BottomModel(d, emb, 10) for d in dims]
    top = TopModel(emb * len(dims), 2, 10)
    xs = [torch.randn(batch, d) for d in dims]
    y = torch.randint(0, 2, (batch,))

    central = SplitNetwork(
        [BottomModel(d, emb, 10) for d in dims], TopModel(emb * 3, 2, 10)
    )
    central.load_state_dict(SplitNetwork(bottoms, top).state_dict())
    torch.nn.functional.cross_entropy(central(xs), y).backward()

    sgd = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    label = TopStep(bottoms[0], top, sgd([*bottoms[0].parameters(), *top.parameters()]))
    remote = [BottomStep(b, sgd(b.parameters())) for b in bottoms[1:]]
    embeddings = [
        r.embed(x) for r, x in zip(remote, xs[1:], strict=True)
    ]  # what crosses the wire
    loss, grads = label.loss_and_grads(xs[0], embeddings, y)
    for r, x, g in zip(remote, xs[1:], grads, strict=True):
        r.backward(x, g)

    assert torch.allclose(loss, torch.nn.functional.cross_entropy(central(xs), y))
    for split_module, central_module in zip(
        [*bottoms, top], [*central.bottoms, central.top], strict=True
    ):
        for p, q in zip(
            split_module.parameters(), central_module.parameters(), strict=True
        ):
            assert p.grad is not None
            assert torch.allclose(p.grad, q.grad, atol=1e-6)


def test_gradient_shape_mismatch_is_rejected():
    step = BottomStep(
        BottomModel(3, 4), torch.optim.SGD(BottomModel(3, 4).parameters(), lr=0.1)
    )
    with pytest.raises(ValueError, match="gradient of shape"):
        step.backward(torch.randn(5, 3), torch.randn(5, 2))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_state_round_trip(optimizer):
    model = BottomModel(3, 2)
    settings = TrainSettings(optimizer=optimizer, learning_rate=0.01)
    from app.vertical.split import make_optimizer

    opt = make_optimizer(list(model.parameters()), settings)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    saved = optimizer_state(opt)
    assert saved  # momentum / moments exist after one step
    fresh = make_optimizer(list(model.parameters()), settings)
    load_optimizer_state(fresh, saved)
    for key, value in optimizer_state(fresh).items():
        assert torch.equal(value, saved[key])


def _sessions(parties, settings, states):
    def transport(requests):
        return [
            PartySession(parties[p], settings, states[p]).handle(a, payload, tensors)
            for p, a, payload, tensors in requests
        ]

    return transport


def test_pipelined_protocol_trains_like_centralised_sgd():
    """One epoch through the message protocol (state persisted between messages,
    pipelined backward/forward) ends at the same weights as centralised SGD."""
    parties = simulate_parties("wdbc", 3, overlap=0.7, seed=5)
    settings = VerticalSettings(
        embedding=4,
        hidden=8,
        test_fraction=0.2,
        seed=5,
        train=TrainSettings(learning_rate=0.05, optimizer="sgd", momentum=0.9),
    )
    states = [PartyState() for _ in parties]
    plan = VerticalPlan(epochs=1, batch_size=32, test_fraction=0.2, seed=5)
    result = run_vertical_training(
        _sessions(parties, settings, states), [0, 1, 2], plan
    )

    # Centralised replica: same initial weights, same aligned data, same batches.
    views = [
        PartySession(p, settings, s)._aligned()
        for p, s in zip(parties, states, strict=True)
    ]
    xs = [v[0] for v in views]
    y = torch.as_tensor(views[0][1])
    torch.manual_seed(5)
    b0 = BottomModel(xs[0].shape[1], 4, 8)
    top = TopModel(4 * 3, 2, 8)
    others = []
    for x in xs[1:]:
        torch.manual_seed(5)
        others.append(BottomModel(x.shape[1], 4, 8))
    central = SplitNetwork([b0, *others], top)
    opt = torch.optim.SGD(central.parameters(), lr=0.05, momentum=0.9)
    n = result.alignment.intersection_size
    from app.vertical.data import split_positions

    train_pos, _ = split_positions(n, 0.2, 5)
    order = np.random.default_rng(5 + 3).permutation(train_pos)
    for i in range(0, len(order), 32):
        b = order[i : i + 32]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(central([x[b] for x in xs]), y[b]).backward()
        opt.step()

    label_weights = states[0].model
    for name, value in b0.state_dict().items():
        assert torch.allclose(label_weights[f"bottom.{name}"], value, atol=1e-5)
    for name, value in top.state_dict().items():
        assert torch.allclose(label_weights[f"top.{name}"], value, atol=1e-5)
    for state, bottom in zip(states[1:], others, strict=True):
        for name, value in bottom.state_dict().items():
            assert torch.allclose(state.model[f"bottom.{name}"], value, atol=1e-5)
