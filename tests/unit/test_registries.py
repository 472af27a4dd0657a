"""The registry records agree with the modules they name."""

import subprocess
import sys

import pytest

from data.base import FederatedDataset
from data.lazy import load
from data.preprocessing import GLOBAL_NORMALISATIONS, NORMALISATIONS
from data.registry import DATASETS, dataset_class
from models import MODELS, default_model
from models.imaging import IMAGING_MODELS
from strategies import STRATEGIES, weighted_mean_strategies
from strategies.screening import Screened


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_records_name_their_class_and_task(name):
    cls = dataset_class(name)
    assert cls.name == name
    assert cls.task == DATASETS[name].task
    # a deployed hospital reads `local` without importing the class
    overridden = cls.local_hospital is not FederatedDataset.local_hospital
    assert DATASETS[name].local == overridden


def test_global_normalisations_name_a_server_side_normaliser():
    # The config validates the names without importing the server side.
    assert set(GLOBAL_NORMALISATIONS) < set(NORMALISATIONS)
    for name in GLOBAL_NORMALISATIONS:
        assert callable(load(NORMALISATIONS[name]))


def test_model_records_name_their_factory():
    for name, record in MODELS.items():
        assert callable(record.load()), name
        if record.task == "imaging":
            assert record.load() is IMAGING_MODELS[name].factory
    assert {n for n, r in MODELS.items() if r.task == "imaging"} == set(IMAGING_MODELS)
    assert (default_model("tabular"), default_model("imaging")) == ("logreg", "poolcnn")


def test_strategy_records_name_a_screened_strategy():
    for name, record in STRATEGIES.items():
        assert issubclass(record.load(), Screened), name
    assert weighted_mean_strategies() == ("fedavg", "fedprox")


TABULAR_MESSAGES = """
import sys, numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from app.client import cache
from app.client.hospital import model_spec
from app.client_app import app
from app.config import RunConfig
from scripts.harness.inprocess import InProcessGrid, full_run_config

rng = np.random.default_rng(0)
x = rng.normal(size=(80, 3))
rows = [",".join(["a", "b", "c", "target"])]
rows += [f"{a:.4f},{b:.4f},{c:.4f},{int(a > 0)}" for a, b, c in x]
open(sys.argv[1], "w").write("\\n".join(rows) + "\\n")
raw = full_run_config(**{"dataset": "csv", "data-path": sys.argv[1],
                         "label-column": "target", "partitioner": "iid"})
grid = InProcessGrid(app, 2, raw)
node = grid.node_ids[0]
cfg = RunConfig.from_run_config(raw)
site = cache.hospital(1, cfg, grid.contexts[node].node_config)
arrays = ArrayRecord(cache.model(1, model_spec(cfg, site.info)).state_dict())
for kind in ("train", "evaluate"):
    config = ConfigRecord({"server-round": 1})
    content = RecordDict({"arrays": arrays, "config": config})
    message = Message(content, dst_node_id=node, message_type=kind, group_id="1")
    (reply,) = grid.send_and_receive([message])
    assert reply.has_content(), reply.error
# a deployed hospital (its own file, named by its node config): one train message
local = {"data-path": sys.argv[1], "dataset": "csv", "hospital-name": "a"}
deployed = InProcessGrid(app, 1, raw, node_configs=[local])
content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
node = deployed.node_ids[0]
message = Message(content, dst_node_id=node, message_type="train", group_id="1")
(reply,) = deployed.send_and_receive([message])
assert reply.has_content(), reply.error
heavy = {"sklearn", "scipy", "datasets", "torch._dynamo", "monai", "opacus", "pandas"}
print(sorted(heavy & set(sys.modules)))
import app.server_app
print(sorted({"monai", "opacus", "sklearn", "matplotlib", "pandas"} & set(sys.modules)))
"""


def test_tabular_client_app_imports_no_sklearn_dynamo_monai_opacus_or_pandas(tmp_path):
    # Each costs ~2 s of CPU per simulation actor (and per deployed message): a
    # train and an evaluate message of a CSV run, simulated or deployed, import
    # none of them; Opacus only under DP, MONAI only for images (neither in the
    # ServerApp either, which imports scikit-learn and matplotlib only at the run's
    # end, for the ROC curve and the report).
    out = subprocess.run(
        [sys.executable, "-c", TABULAR_MESSAGES, str(tmp_path / "t.csv")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-2:] == ["[]", "[]"]
