"""Shadow-model membership inference: it finds memorisation and nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.client.hospital import model_spec
from app.config import RunConfig
from app.privacy.shadow import (
    attack_features,
    fit_shadow_attack,
    recipe_trainer,
    shadow_attack,
    split_attacker_data,
)
from data.registry import get_dataset
from data.spec import Split
from models.checkpoint import save_model
from models.tabular import TabularMLP
from models.training import TrainSettings
from scripts import cli

CPU = torch.device("cpu")
OVERFIT = TrainSettings(epochs=150, batch_size=16, learning_rate=0.01, optimizer="adam")


def _data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10)).astype(np.float32)
    # Labels mostly noise: what a model learns beyond 60/40 is memorisation.
    y = ((x[:, 0] + rng.normal(scale=3.0, size=n)) > 0).astype(np.int64)
    return Split(x, y)


def test_attack_features_are_per_record_and_label_aware():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    feats = attack_features(probs, np.array([0, 0]))
    assert feats.shape == (2, 2 + 2 + 2)
    assert feats[0, 2] == pytest.approx(0.9) and feats[1, 2] == pytest.approx(0.2)
    assert feats[0, 4:].tolist() == [1.0, 0.0]


def test_shadow_attack_detects_an_overfit_model_and_not_an_unseen_one():
    torch.manual_seed(0)
    members, pool = _data(100, 0), _data(300, 1)
    attacker, non_members = split_attacker_data(pool, seed=0)
    train = recipe_trainer(lambda: TabularMLP(10, hidden=128, layers=2), OVERFIT, CPU)
    attack = fit_shadow_attack(train, attacker, CPU, shadow_models=3, seed=0)
    target = train(members, 123)
    result = shadow_attack(target, members, non_members, attack, CPU)
    assert result.attack == "shadow" and result.members == 100
    assert result.non_members == 150
    assert result.auc > 0.7, result
    # A model of the same recipe that never saw the "members": no signal.
    unseen = train(_data(100, 2), 7)
    blind = shadow_attack(unseen, members, non_members, attack, CPU)
    assert abs(blind.auc - 0.5) < 0.1, blind
    assert result.auc > blind.auc + 0.15


def test_attacker_split_is_disjoint_and_complete():
    pool = _data(11, 3)
    a, b = split_attacker_data(pool, seed=1)
    assert len(a) + len(b) == 11
    rows = {tuple(r) for r in np.concatenate([a.x, b.x])}
    assert len(rows) == 11


@pytest.mark.slow
def test_audit_command_runs_the_shadow_attack(tmp_path, capsys, heart_dir):
    cfg = RunConfig(
        dataset="heart-disease",
        data_path=str(heart_dir),
        model="mlp",
        mlp_hidden=128,
        num_server_rounds=50,
        local_epochs=3,
        batch_size=16,
        learning_rate=0.01,
        optimizer="adam",
    )
    dataset = get_dataset(cfg.data_spec())
    info = dataset.info()
    spec = model_spec(cfg, info)
    site = dataset.hospital(0, 4)
    train = recipe_trainer(spec.build, OVERFIT, CPU)
    model = train(site.train, 0)
    path = tmp_path / "final_model.pt"
    save_model(
        path,
        model.state_dict(),
        spec,
        info,
        run_config=cfg.to_run_config(),
        preprocessing={},
    )
    argv = ["audit", "--model", str(path), "--attack", "shadow", "--json"]
    assert cli.main([*argv, "--shadow-models", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["attack"] == "shadow" and report["shadow_models"] == 2
    assert report["attacker_records"] > 0
    trained = report["hospitals"]["cleveland"]["shadow"]
    unseen = report["hospitals"]["hungarian"]["shadow"]
    assert set(trained) >= {"auc", "tpr_at_1pct_fpr", "members", "non_members"}
    assert trained["auc"] > unseen["auc"] + 0.05, (trained, unseen)
