"""Name -> dataset class. Adding a dataset is one module plus one line here."""

from __future__ import annotations

from data.base import FederatedDataset
from data.spec import DataSpec
from data.tabular import CSVDataset, HeartDiseaseDataset, WDBCDataset

DATASETS: dict[str, type[FederatedDataset]] = {
    WDBCDataset.name: WDBCDataset,
    HeartDiseaseDataset.name: HeartDiseaseDataset,
    CSVDataset.name: CSVDataset,
}


def get_dataset(spec: DataSpec) -> FederatedDataset:
    """Instantiate the dataset named by ``spec.dataset``."""
    try:
        cls = DATASETS[spec.dataset]
    except KeyError:
        raise ValueError(
            f"Unknown dataset {spec.dataset!r}; known: {', '.join(sorted(DATASETS))}"
        ) from None
    return cls(spec)
