"""The lazy registries agree with the modules they point to."""

import subprocess
import sys

from app.privacy.cohort_stats import GLOBAL_NORMALISERS
from data.preprocessing import GLOBAL_NORMALISATIONS, NORMALISATIONS
from data.registry import DATASET_TASKS, DATASETS
from models import IMAGING_MODEL_NAMES, MODEL_TASKS, MODELS
from models.imaging import IMAGING_MODELS


def test_dataset_tasks_match_the_classes():
    assert set(DATASET_TASKS) == set(DATASETS)
    for name, task in DATASET_TASKS.items():
        assert DATASETS[name].name == name
        assert DATASETS[name].task == task


def test_every_global_normalisation_has_a_server_side_normaliser():
    # The config validates against data.preprocessing's names (it cannot import
    # the app layer); the federation looks the mode up in app.privacy.cohort_stats.
    assert set(GLOBAL_NORMALISERS) == set(GLOBAL_NORMALISATIONS)
    assert set(GLOBAL_NORMALISATIONS) < set(NORMALISATIONS)


def test_imaging_model_entries_match_models_imaging():
    assert set(IMAGING_MODEL_NAMES) == set(IMAGING_MODELS)
    for name in IMAGING_MODEL_NAMES:
        assert MODELS[name] is IMAGING_MODELS[name].factory
        assert MODEL_TASKS[name] == "imaging"
    assert set(MODEL_TASKS) == set(MODELS)


def test_tabular_client_app_does_not_import_monai():
    code = "import sys, app.client_app, app.server_app;print('monai' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False"
