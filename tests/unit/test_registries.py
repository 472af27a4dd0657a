"""The registry records agree with the modules they name."""

import subprocess
import sys

import pytest

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


def test_tabular_client_app_does_not_import_monai_or_opacus():
    # Opacus costs ~2 s of CPU in every ClientApp actor: imported only under DP.
    code = (
        "import sys, app.client_app, app.server_app;"
        "print(sorted({'monai', 'opacus'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
