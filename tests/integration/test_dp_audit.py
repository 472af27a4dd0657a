"""Membership-inference audit: it detects an overfit model and ignores unseen data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.client.hospital import model_spec
from app.config import RunConfig
from app.privacy.membership import audit_model, score_attack
from data.registry import get_dataset
from data.spec import Split
from models.checkpoint import save_model
from models.tabular import TabularMLP
from models.training import TrainSettings, make_loader, train_epochs
from scripts import cli

CPU = torch.device("cpu")


def _overfit(model, split, epochs=150):
    settings = TrainSettings(
        epochs=epochs, batch_size=16, learning_rate=0.01, optimizer="adam"
    )
    train_epochs(model, make_loader(split, 16, shuffle=True, seed=0), settings, CPU)
    return model


def test_score_attack_on_known_scores():
    perfect = score_attack("x", np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    assert perfect.auc == 1.0 and perfect.tpr_at_1pct_fpr == 1.0
    assert perfect.advantage == 1.0
    blind = score_attack("x", np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    assert blind.auc == 0.5
    with pytest.raises(ValueError):
        score_attack("x", np.array([]), np.array([1.0]))


def test_overfit_model_leaks_membership():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # Labels independent of the features: anything learned is memorisation.
    x = rng.normal(size=(200, 10)).astype(np.float32)
    y = rng.integers(0, 2, 200)
    members, others = Split(x[:100], y[:100]), Split(x[100:], y[100:])
    model = _overfit(TabularMLP(10, hidden=128, layers=2), members)
    loss, confidence = audit_model(model, members, others, CPU)
    assert loss.attack == "loss" and confidence.attack == "confidence"
    # Members have ~0 loss; a memorising model is confidently right on about half
    # of the non-members by chance, so the ceiling is near 0.75 here.
    assert loss.auc > 0.7
    assert loss.advantage > 0.4
    # Fresh model, same data: no memorisation, no signal.
    fresh = audit_model(TabularMLP(10, hidden=128, layers=2), members, others, CPU)[0]
    assert abs(fresh.auc - 0.5) < 0.15


@pytest.mark.slow
def test_audit_command_tells_the_trained_hospital_from_the_other(
    tmp_path, capsys, heart_dir
):
    cfg = RunConfig(
        dataset="heart-disease", data_path=str(heart_dir), model="mlp", mlp_hidden=128
    )
    dataset = get_dataset(cfg.data_spec())
    info = dataset.info()
    spec = model_spec(cfg, info)
    torch.manual_seed(0)
    model = _overfit(spec.build(), dataset.hospital(0, 4).train, epochs=200)
    path = tmp_path / "final_model.pt"
    save_model(
        path,
        model.state_dict(),
        spec,
        info,
        run_config=cfg.to_run_config(),
        preprocessing={},
    )
    assert cli.main(["audit", "--model", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["hospitals"]) == {"cleveland", "hungarian", "switzerland", "va"}
    trained = report["hospitals"]["cleveland"]["loss"]
    unseen = report["hospitals"]["hungarian"]["loss"]
    assert trained["members"] == len(dataset.hospital(0, 4).train)
    assert trained["auc"] > unseen["auc"] + 0.05, (trained, unseen)
    assert trained["auc"] > 0.57
    assert 0.3 < unseen["auc"] < 0.7
