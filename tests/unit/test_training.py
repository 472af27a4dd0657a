"""Local training's light paths give exactly what torch's general ones give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.spec import Split
from models.training import CpuSGD, TrainSettings, make_loader, train_epochs


def a_split(n: int = 45, features: int = 6) -> Split:
    rng = np.random.default_rng(3)
    return Split(rng.normal(size=(n, features)), rng.integers(0, 2, n))


def a_model(features: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(features, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)
    )


def test_batched_loader_gives_the_same_batches():
    split = a_split()
    plain = make_loader(split, 8, shuffle=True, seed=11)
    batched = make_loader(split, 8, shuffle=True, seed=11, batched=True)
    for _ in range(2):  # two epochs: the generator advances alike
        pairs = list(zip(plain, batched, strict=True))
        assert len(pairs) == 6
        for (x1, y1), (x2, y2) in pairs:
            assert x1.dtype == x2.dtype and y1.dtype == y2.dtype
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 0.0), (0.9, 1e-3), (0.0, 0.0)])
def test_cpu_sgd_is_bit_identical_to_torch_sgd(momentum, weight_decay):
    settings = TrainSettings(
        epochs=3, batch_size=8, momentum=momentum, weight_decay=weight_decay
    )
    ours, theirs = a_model(), a_model()
    theirs.load_state_dict(ours.state_dict())
    frozen = next(ours.parameters()), next(theirs.parameters())
    for p in frozen:  # a parameter without a gradient is left alone by both
        p.requires_grad_(False)
    torch_sgd = torch.optim.SGD(
        theirs.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay
    )
    loader = make_loader(a_split(), 8, shuffle=True, seed=5, batched=True)
    got = train_epochs(ours, loader, settings, torch.device("cpu"))
    loader = make_loader(a_split(), 8, shuffle=True, seed=5)
    want = train_epochs(theirs, loader, settings, torch.device("cpu"), torch_sgd)
    assert got == want
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert all(torch.equal(mine[k], reference[k]) for k in reference)
    assert torch.equal(*frozen)


def test_cpu_sgd_skips_parameters_without_gradients():
    p = torch.nn.Parameter(torch.ones(3))
    CpuSGD([p], TrainSettings()).step()
    assert torch.equal(p.detach(), torch.ones(3))
