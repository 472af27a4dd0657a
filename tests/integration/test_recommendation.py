"""task='recommendation': the real ServerApp and ClientApps in process.

What is checked: only the shared model leaves a site (no patient id, no patient
vector, in any message), sparse row updates give exactly the dense result with
fewer bytes, FedProx's term covers exactly the shared parameters, patient-level
DP is accounted as Opacus accounts it (under ``rec-dp-shared`` ``biases`` and
``popularity``: item factors as received, every item bias noised, only shared
arrays and scalar metrics in the replies), and ``medflower recommend`` answers
or names what is wrong.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array

from app.client_app import app as client_app
from app.config import ConfigError, RunConfig
from app.server.history import read_history
from app.server_app import app as server_app
from models.checkpoint import load_model
from scripts.benchmarks.federation import federate
from scripts.cli import main as medflower
from scripts.harness.inprocess import full_run_config, run_inprocess

USERS, ITEMS = 90, 1000


@pytest.fixture(scope="module")
def ratings(tmp_path_factory) -> str:
    """A MovieLens-format file (user item rating timestamp, tab-separated)."""
    rng = np.random.default_rng(0)
    taste, kind = rng.normal(size=(USERS, 3)), rng.normal(size=(ITEMS, 3))
    lines = []
    for user in range(USERS):
        for t, item in enumerate(rng.choice(ITEMS, size=12, replace=False)):
            rating = int(np.clip(np.round(3 + taste[user] @ kind[item]), 1, 5))
            lines.append(f"{user + 1001}\t{item + 1}\t{rating}\t{880000000 + t}")
    path = tmp_path_factory.mktemp("ratings") / "u.data"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def rec_config(path: str, **extra) -> dict:
    return {
        "task": "recommendation",
        "dataset": "interactions",
        "data-path": path,
        "num-server-rounds": 2,
        "optimizer": "adam",
        "learning-rate": 0.02,
        "batch-size": 64,
        "rec-dim": 8,
        "report": False,
        **extra,
    }


def recording_run(config: dict, out_dir, name: str = "r") -> list:
    """Run ``config`` on 3 in-process hospitals; every reply as it left a site."""
    replies = []

    def recorded(msg, context):
        replies.append(client_app(msg, context))
        return replies[-1]

    run_inprocess(
        server_app,
        recorded,
        num_hospitals=3,
        run_config=full_run_config(
            **config, **{"output-dir": str(out_dir), "run-name": name}
        ),
    )
    return replies


def assert_only_shared_arrays(replies: list, model) -> None:
    """No reply holds a patient id, a patient vector or a per-patient metric."""
    shared = set(model.state_dict())
    patient_ids = {str(u + 1001) for u in range(USERS)}
    assert replies and not any(m.has_error() for m in replies)
    for msg in replies:
        for record in msg.content.array_records.values():
            for key, array in record.items():
                assert key.split("@")[0] in shared, key
                assert array.shape[-1] != model.user_dim or key.startswith("item")
        for record in msg.content.config_records.values():
            assert not patient_ids & {str(v) for v in record.values()}
        for record in msg.content.metric_records.values():
            assert all(np.ndim(v) == 0 for v in record.values())


def test_only_the_shared_model_leaves_a_site(ratings, tmp_path):
    replies = recording_run(rec_config(ratings, contribution=True), tmp_path)
    model, payload = load_model(tmp_path / "r" / "final_model.pt")
    shared = set(model.state_dict())
    assert_only_shared_arrays(replies, model)
    assert payload["task"] == "recommendation"
    # each site's leave-one-out influence on HR@10, measured after the last round
    history = read_history(tmp_path / "r")
    assert history.contributions["metric"] == "hr@10"
    assert set(history.contributions["sites"]) == {f"hospital-{i}" for i in range(3)}
    assert set(payload["state_dict"]) == shared  # no user table in the saved model


def test_sparse_updates_equal_dense_with_fewer_bytes(ratings):
    sparse = federate(rec_config(ratings, **{"rec-update": "sparse"}), 3)
    dense = federate(rec_config(ratings, **{"rec-update": "dense"}), 3)
    for key, value in sparse.final_model.state_dict().items():
        assert torch.equal(value, dense.final_model.state_dict()[key]), key
    assert sparse.wire_bytes < dense.wire_bytes
    assert sparse.rounds[-1].federated["hr@10"] == dense.rounds[-1].federated["hr@10"]


def test_sparse_decode_refuses_unsound_rows():
    from flwr.app import ArrayRecord

    from strategies.sparse import decode, encode

    table = np.zeros((5, 2), dtype=np.float32)
    new = table.copy()
    new[[1, 3]] = 1.0
    record = encode({"t": new}, {"t": table}, ["t"])
    dense, problem = decode(record, {"t": table})
    assert problem is None and np.array_equal(dense["t"].numpy(), new)
    for rows, why in (([7], "outside"), ([1, 1], "repeat")):
        bad = ArrayRecord(
            {
                "t@rows": Array(np.array(rows, dtype=np.int64)),
                "t@values": Array(np.ones((len(rows), 2), dtype=np.float32)),
            }
        )
        assert why in decode(bad, {"t": table})[1]


def test_fedprox_pulls_only_the_shared_parameters(ratings):
    from app.recommendation.training import RecTrainSettings, train_site
    from data.registry import get_dataset
    from models.recommender import BiasedMF, UserTable

    site = get_dataset(
        RunConfig.from_run_config(rec_config(ratings)).data_spec()
    ).pooled(1)
    torch.manual_seed(0)
    model = BiasedMF(len(site.catalogue), dim=4)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    users = UserTable(site.num_users, model.user_dim, seed=0)
    before = users.weight.detach().clone()
    settings = RecTrainSettings(
        optimizer="sgd", learning_rate=1e-7, loss="mse", proximal_mu=1e6, l2=0.0
    )
    train_site(model, users, site.train, settings)
    moved = max((model.state_dict()[k] - v).abs().max() for k, v in start.items())
    assert moved < 1e-3  # mu * lr = 0.1: the proximal pull keeps shared weights home
    assert not torch.equal(users.weight.detach(), before)  # patients are not pulled


@pytest.mark.parametrize("shared", ["biases", "popularity"])
def test_patient_level_dp_is_accounted_as_opacus_does(ratings, tmp_path, shared):
    from opacus.accountants import PRVAccountant

    from app.client.hospital import model_spec
    from data.registry import get_dataset

    config = rec_config(
        ratings,
        dp="local",
        optimizer="sgd",  # Adam's first steps are +-lr: two can cancel exactly
        **{"dp-target-epsilon": 4.0, "dp-delta": 1e-3, "rec-dp-shared": shared},
    )
    replies = recording_run(config, tmp_path, "dp")
    history = read_history(tmp_path / "dp")
    privacy = history.privacy
    assert privacy["unit"] == "patient"
    sites = RunConfig.from_run_config(config)
    per_site = get_dataset(sites.data_spec()).sites(3)
    for index, site in enumerate(per_site):
        batches = math.ceil(site.num_users / sites.batch_size)
        steps = sites.num_server_rounds * sites.local_epochs * batches
        accountant = PRVAccountant()
        sigma = history.rounds[-1].hospitals[f"hospital-{index}"]["train"][
            "dp-noise-multiplier"
        ]
        accountant.history = [(sigma, 1 / batches, steps)]
        # Opacus' PRV takes log(1 - q), -inf at q = 1 (one batch), and warns
        with np.errstate(divide="ignore"):
            expected = accountant.get_epsilon(delta=1e-3)
        assert privacy["epsilon"][f"hospital-{index}"] == pytest.approx(
            expected, rel=1e-6
        )
        assert expected <= 4.0 + 1e-6
    # the item factors come back as the server's seeded initial ones; every item
    # bias is noised (the 1000 items outnumber the rated ones)
    torch.manual_seed(sites.seed)
    start = model_spec(sites, get_dataset(sites.data_spec()).info()).build()
    final, _ = load_model(tmp_path / "dp" / "final_model.pt")
    torch.testing.assert_close(
        final.item_embedding.weight, start.item_embedding.weight.detach()
    )
    assert (final.item_bias.weight != start.item_bias.weight).all()
    assert_only_shared_arrays(replies, final)


def test_sparse_updates_are_refused_with_dp_by_name(ratings):
    with pytest.raises(ConfigError, match="rec-update='sparse'.*'dp'"):
        RunConfig.from_run_config(
            rec_config(ratings, dp="local", **{"rec-update": "sparse"})
        )


def test_recommend_prints_top_k_and_names_bad_input(ratings, tmp_path, capsys):
    federate(rec_config(ratings), 3, out_dir=tmp_path, name="m")
    model = str(tmp_path / "m" / "final_model.pt")

    def recommend(data: str, patient: str, *extra: str) -> int:
        argv = ["recommend", "--model", model, "--data", data, "--patient", patient]
        return medflower([*argv, *extra])

    assert recommend(ratings, "1001", "-k", "3") == 0
    out = capsys.readouterr().out
    assert "Top 3 for patient 1001" in out and out.count("\n") == 4
    assert recommend(ratings, "42") == 2
    assert "patient '42' is not in" in capsys.readouterr().out
    other = tmp_path / "other.data"
    other.write_text("1001\t5000\t4\t1\n1001\t1\t4\t2\n1001\t2\t4\t3\n")
    assert recommend(str(other), "1001") == 2
    assert "is not in the model's catalogue" in capsys.readouterr().out
    bad = tmp_path / "bad.data"
    bad.write_text("1001\t1\tfive\t1\n")
    assert recommend(str(bad), "1001") == 2
    assert str(bad) in capsys.readouterr().out


def test_benchmark_on_a_ratings_file_writes_the_methods(ratings, tmp_path, capsys):
    import json

    argv = ["benchmark", "recommendation", "--data", ratings, "--sites", "3"]
    assert medflower([*argv, "--quick", "--seeds", "1", "--out", str(tmp_path)]) == 0
    assert "fedavg" in capsys.readouterr().out
    found = json.loads((tmp_path / "results.json").read_text())
    methods = found["methods"]
    assert set(methods) == {"pooled", "local-only", "popularity", "fedavg", "fedprox"}
    for name in ("pooled", "fedavg"):
        assert 0 <= methods[name]["hr@10"] <= 1 and methods[name]["rmse"] > 0
    assert methods["popularity"]["rmse"] is None  # a ranking, no rating
    assert found["summary"]["fedavg_over_pooled_rmse"] > 0
    assert (tmp_path / "recommendation-hr10.png").is_file()
