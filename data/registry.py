"""Name -> dataset class. Adding a dataset is one module plus one line here."""

from __future__ import annotations

from data.base import FederatedDataset
from data.imaging import ImageFolderDataset, MedMNISTDataset, SyntheticLesionsDataset
from data.spec import DataSpec
from data.tabular import CSVDataset, HeartDiseaseDataset, WDBCDataset

DATASETS: dict[str, type[FederatedDataset]] = {
    WDBCDataset.name: WDBCDataset,
    HeartDiseaseDataset.name: HeartDiseaseDataset,
    CSVDataset.name: CSVDataset,
    MedMNISTDataset.name: MedMNISTDataset,
    ImageFolderDataset.name: ImageFolderDataset,
    SyntheticLesionsDataset.name: SyntheticLesionsDataset,
}

# The kinds of data a run can train on (the run-config key ``task``).
TASKS: tuple[str, ...] = tuple(dict.fromkeys(cls.task for cls in DATASETS.values()))


def local_kinds() -> tuple[str, ...]:
    """Dataset kinds a deployed hospital can read from its own file or folder."""
    return tuple(
        name for name, cls in DATASETS.items()
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
