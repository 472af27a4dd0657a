"""Name -> dataset record. Adding a dataset is one module plus one line here."""

from __future__ import annotations

from dataclasses import dataclass

from data.base import FederatedDataset
from data.lazy import LazyTarget
from data.spec import DataSpec


@dataclass(frozen=True)
class DatasetRecord(LazyTarget):
    """One registered dataset: its class (imported on first use) and its task.

    The task, and whether a deployed hospital can read the dataset from its own
    file or folder (the class overrides ``local_hospital``), are declared here so
    the run config and a deployed hospital can check them without importing the
    class (a test checks both against the class). Importing every class to find
    out cost a deployed hospital ~7 s of CPU (MONAI, torchvision, ...) per message.
    """

    task: str = "tabular"
    local: bool = True


# Imported on first use, so a tabular hospital never imports MONAI.
DATASETS: dict[str, DatasetRecord] = {
    "wdbc": DatasetRecord("data.tabular:WDBCDataset", "tabular", local=False),
    "heart-disease": DatasetRecord("data.tabular:HeartDiseaseDataset", "tabular"),
    "csv": DatasetRecord("data.tabular:CSVDataset", "tabular"),
    "medmnist": DatasetRecord("data.imaging:MedMNISTDataset", "imaging"),
    "image-folder": DatasetRecord("data.imaging:ImageFolderDataset", "imaging"),
    "synthetic-lesions": DatasetRecord(
        "data.imaging:SyntheticLesionsDataset", "imaging", local=False
    ),
    "interactions": DatasetRecord(
        "data.interactions:InteractionsDataset", "recommendation"
    ),
    "mimic-demo": DatasetRecord("data.mimic:MimicDemoDataset", "recommendation"),
}

# The kinds of data a run can train on (the run-config key ``task``).
TASKS: tuple[str, ...] = tuple(dict.fromkeys(rec.task for rec in DATASETS.values()))


def dataset_class(name: str) -> type[FederatedDataset]:
    """The class of the registered dataset ``name`` (KeyError when unknown)."""
    return DATASETS[name].load()


def local_kinds() -> tuple[str, ...]:
    """Dataset kinds a deployed hospital can read from its own file or folder."""
    return tuple(name for name, record in DATASETS.items() if record.local)


def get_dataset(spec: DataSpec) -> FederatedDataset:
    """Instantiate the dataset named by ``spec.dataset``."""
    try:
        cls = dataset_class(spec.dataset)
    except KeyError:
        raise ValueError(
            f"Unknown dataset {spec.dataset!r}; known: {', '.join(sorted(DATASETS))}"
        ) from None
    return cls(spec)
