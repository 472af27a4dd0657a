"""Learning-rate schedule across rounds and federated best-round model selection."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from support.federation import make_run_config

from app.client_app import app as client_app
from app.config import ConfigError, RunConfig
from app.server.federation import BestRound
from app.server.history import RoundEntry
from app.server.outputs import RunRecorder
from app.server_app import app as server_app
from data.registry import get_dataset
from data.spec import DatasetInfo
from models import ModelSpec
from models.checkpoint import load_model, save_model
from models.training import LR_SCHEDULES, evaluate_split, scheduled_learning_rate
from scripts.harness.inprocess import run_inprocess
from strategies.screening import FEDERATED_EVALUATE


def test_schedules_match_the_config_choices():
    assert set(LR_SCHEDULES) == set(RunConfig.keys()["lr-schedule"].choices)


def test_cosine_schedule_decays_from_the_base_rate():
    rates = [scheduled_learning_rate("cosine", 0.1, r, 10) for r in range(1, 11)]
    assert rates[0] == pytest.approx(0.1)
    assert rates[5] == pytest.approx(0.05)  # half-way: half the rate
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert 0 < rates[-1] < 0.003
    assert scheduled_learning_rate("constant", 0.1, 7, 10) == 0.1
    with pytest.raises(ValueError, match="step 0 of 10"):
        scheduled_learning_rate("cosine", 0.1, 0, 10)


def test_select_best_needs_hospitals_to_evaluate():
    with pytest.raises(ConfigError, match="fraction-evaluate"):
        RunConfig(select_best="auc", fraction_evaluate=0.0)


def test_cosine_rates_reach_hospitals_and_best_round_is_saved(
    tmp_path, client_training
):
    rounds = 4
    run_config = make_run_config(
        tmp_path,
        **{
            "num-server-rounds": rounds,
            "learning-rate": 0.2,
            "lr-schedule": "cosine",
            "select-best": "loss",
        },
    )
    run_inprocess(server_app, client_app, num_hospitals=2, run_config=run_config)
    expected = [scheduled_learning_rate("cosine", 0.2, r, rounds) for r in range(1, 5)]
    seen = [settings.learning_rate for settings, _ in client_training]
    assert seen == pytest.approx(np.repeat(expected, 2))  # two hospitals per round

    run_dir = tmp_path / "outputs" / "test-run"
    history = json.loads((run_dir / "history.json").read_text())
    losses = {r["round"]: r["federated"]["loss"] for r in history["rounds"][1:]}
    best = min(losses, key=losses.get)
    assert history["selected_round"]["round"] == best
    assert history["selected_round"]["value"] == pytest.approx(losses[best])
    assert not (run_dir / "selected_model.pt").exists()
    # final_model.pt holds the selected round's weights: its server-side test
    # metrics are the ones recorded for that round
    selected = next(r for r in history["rounds"] if r["round"] == best)["server"]
    assert history["final_server_metrics"] == selected
    model, _ = load_model(run_dir / "final_model.pt")
    test = get_dataset(RunConfig.from_run_config(run_config).data_spec()).server_test()
    metrics = evaluate_split(model, test, torch.device("cpu"))
    assert metrics["loss"] == pytest.approx(selected["loss"], rel=1e-5)


class Ledger:
    def __init__(self) -> None:
        self.rounds: dict[int, dict] = {}


class Strategy:
    def __init__(self) -> None:
        self.ledger = Ledger()


def test_best_round_keeps_the_best_not_the_last_and_survives_resume(tmp_path):
    cfg = RunConfig(output_dir=str(tmp_path), run_name="sel", select_best="auc")
    spec = ModelSpec("logreg", {"in_features": 3, "num_classes": 2})
    info = DatasetInfo("tabular", (3,), 2)

    def save(path, arrays):
        save_model(
            path,
            arrays.to_torch_state_dict(),
            spec,
            info,
            run_config={},
            preprocessing={},
        )

    def arrays_of(value: float) -> ArrayRecord:
        model = spec.build()
        for p in model.parameters():
            torch.nn.init.constant_(p, value)
        return ArrayRecord(model.state_dict())

    strategy, recorder = Strategy(), RunRecorder(cfg, run_id=1)
    selection = BestRound("auc", strategy, recorder, save)
    for r, auc in enumerate([0.6, 0.9, float("nan"), 0.7], start=1):
        recorder.record_round(RoundEntry(round=r))
        if auc == auc:
            strategy.ledger.rounds[r] = {FEDERATED_EVALUATE: {"auc": auc}}
        # training arrays (-1) and the round's model (r) differ under model-ema:
        # the selection keeps the model
        selection(r, arrays_of(-1.0), arrays_of(float(r)))
    assert selection.round == 2 and selection.value == 0.9
    first = next(iter(selection.arrays.to_torch_state_dict().values()))
    assert torch.all(first == 2.0)
    on_disk = json.loads(recorder.history_path.read_text())["selected_round"]
    assert on_disk["round"] == 2

    # a resumed run (after round 3) continues from the saved selection...
    resumed = RunRecorder.resume(cfg, 2, recorder.dir, after_round=3)
    again = BestRound("auc", strategy, resumed, save)
    assert again.round == 2 and again.value == 0.9
    assert torch.all(next(iter(again.arrays.to_torch_state_dict().values())) == 2.0)
    # ...but forgets a selection from a round the resume will run again
    rerun = RunRecorder.resume(cfg, 3, recorder.dir, after_round=1)
    assert BestRound("auc", strategy, rerun, save).round is None
    assert rerun.history.selected_round is None

    loss = BestRound("loss", Strategy(), RunRecorder(cfg, 4, tmp_path / "l"), save)
    for r, value in enumerate([0.5, 0.3, 0.4], start=1):
        loss.strategy.ledger.rounds[r] = {FEDERATED_EVALUATE: {"loss": value}}
        loss(r, arrays_of(-1.0), arrays_of(float(r)))
    assert loss.round == 2
