"""Name -> dataset class. Adding a dataset is one module plus one line here."""

from __future__ import annotations

from data.base import FederatedDataset
from data.lazy import LazyRegistry
from data.spec import DataSpec

# Imported on first use, so a tabular hospital never imports MONAI.
DATASETS: LazyRegistry = LazyRegistry(
    {
        "wdbc": "data.tabular:WDBCDataset",
        "heart-disease": "data.tabular:HeartDiseaseDataset",
        "csv": "data.tabular:CSVDataset",
        "medmnist": "data.imaging:MedMNISTDataset",
        "image-folder": "data.imaging:ImageFolderDataset",
        "synthetic-lesions": "data.imaging:SyntheticLesionsDataset",
    }
)
# Each dataset's task, known without importing it (a test checks it against .task).
DATASET_TASKS: dict[str, str] = {
    "wdbc": "tabular",
    "heart-disease": "tabular",
    "csv": "tabular",
    "medmnist": "imaging",
    "image-folder": "imaging",
    "synthetic-lesions": "imaging",
}

# The kinds of data a run can train on (the run-config key ``task``).
TASKS: tuple[str, ...] = tuple(dict.fromkeys(DATASET_TASKS.values()))


def local_kinds() -> tuple[str, ...]:
    """Dataset kinds a deployed hospital can read from its own file or folder."""
    return tuple(
        name
        for name, cls in DATASETS.items()
        if cls.local_hospital is not FederatedDataset.local_hospital
    )


def get_dataset(spec: DataSpec) -> FederatedDataset:
    """Instantiate the dataset named by ``spec.dataset``."""
    try:
        cls = DATASETS[spec.dataset]
    except KeyError:
        raise ValueError(
            f"Unknown dataset {spec.dataset!r}; known: {', '.join(sorted(DATASETS))}"
        ) from None
    return cls(spec)
