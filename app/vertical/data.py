"""Vertically partitioned data: each hospital holds some feature columns of its
patients, keyed by a patient ID; one hospital (the label holder) also holds labels.

Simulation splits the columns of WDBC (bundled) or UCI heart disease into feature
groups and gives each party a deterministic, partially overlapping set of patients
with synthetic IDs, rows shuffled locally so that row order reveals nothing. In
deployment each hospital reads its own CSV with an ID column (``id-column``); the
label holder's CSV also has ``label-column``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.preprocessing import Standardizer
from data.spec import DataError, DataSpec
from data.tabular import (
    HEART_FEATURES,
    HeartDiseaseDataset,
    WDBCDataset,
    _labels,
    _numeric_frame,
    read_heart_file,
)

log = logging.getLogger(__name__)

LABEL_HOLDER = 0  # simulation: partition 0 holds the labels

# Named feature groups where a split has a clinical meaning; otherwise the columns
# are cut into contiguous groups (WDBC: 3 groups = mean / standard error / worst).
HEART_GROUPS: dict[int, tuple[tuple[str, ...], ...]] = {
    2: (
        ("age", "sex", "cp_2", "cp_3", "cp_4"),  # general clinic: history, symptoms
        (
            "trestbps",
            "chol",
            "fbs",
            "restecg_1",
            "restecg_2",
            "thalach",
            "exang",
            "oldpeak",
        ),  # cardiology lab: blood tests, ECG, exercise test
    ),
    3: (
        ("age", "sex", "cp_2", "cp_3", "cp_4"),  # general clinic
        ("trestbps", "chol", "fbs"),  # blood lab
        ("restecg_1", "restecg_2", "thalach", "exang", "oldpeak"),  # ECG / stress test
    ),
}


@dataclass(frozen=True)
class VerticalParty:
    """One hospital's vertical share: IDs, raw feature columns and (maybe) labels."""

    name: str
    ids: list[str]
    x: np.ndarray
    feature_names: tuple[str, ...]
    y: np.ndarray | None = None

    @property
    def is_label_holder(self) -> bool:
        return self.y is not None

    def __len__(self) -> int:
        return len(self.ids)


def pooled_table(
    dataset: str, data_path: str = ""
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """All records of a dataset (features, labels, names) before any split."""
    if dataset == "wdbc":
        return WDBCDataset(DataSpec(dataset="wdbc")).load_table()
    if dataset == "heart-disease":
        if not data_path:
            raise DataError("vertical heart-disease needs 'data-path'.", "no data-path")
        files = HeartDiseaseDataset(DataSpec("heart-disease", data_path)).files
        parts = [read_heart_file(f) for f in files]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return x, y, HEART_FEATURES
    raise DataError(
        "vertical simulation supports datasets wdbc and heart-disease, not "
        f"{dataset!r}; "
        "a deployed hospital reads its own CSV (node config 'data-path').",
        f"dataset {dataset!r} has no vertical simulation",
    )


def feature_groups(
    dataset: str, names: tuple[str, ...], num_parties: int
) -> list[list[int]]:
    """Column indices held by each party."""
    if num_parties < 2:
        raise DataError(
            f"vertical learning needs at least 2 parties, got {num_parties}.",
            "fewer than 2 vertical parties",
        )
    if num_parties > len(names):
        raise DataError(
            f"{num_parties} parties but only {len(names)} feature columns.",
            "more parties than feature columns",
        )
    if dataset == "heart-disease" and num_parties in HEART_GROUPS:
        return [[names.index(n) for n in group] for group in HEART_GROUPS[num_parties]]
    return [list(c) for c in np.array_split(np.arange(len(names)), num_parties)]


def patient_ids(num_records: int, seed: int) -> list[str]:
    """Distinct synthetic medical record numbers, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(10_000_000, size=num_records, replace=False)
    return [f"MRN-{c:07d}" for c in codes]


def membership(
    num_records: int, num_parties: int, overlap: float, seed: int
) -> np.ndarray:
    """Boolean (records x parties): who holds each patient.

    A fraction ``overlap`` of the patients is held by every party; each other
    patient is held by a random non-empty proper subset of the parties (so some
    are shared by two of three hospitals but not by all).
    """
    rng = np.random.default_rng(seed + 7)
    held = np.zeros((num_records, num_parties), dtype=bool)
    shared = rng.random(num_records) < overlap
    held[shared] = True
    for r in np.flatnonzero(~shared):
        k = rng.integers(1, num_parties)  # 1 .. num_parties - 1
        held[r, rng.choice(num_parties, size=k, replace=False)] = True
    return held


def simulate_parties(
    dataset: str,
    num_parties: int,
    *,
    overlap: float,
    seed: int,
    data_path: str = "",
) -> list[VerticalParty]:
    """Split a dataset's columns across ``num_parties`` hospitals (party 0 has the
    labels), with partially overlapping patients and locally shuffled rows.
    """
    x, y, names = pooled_table(dataset, data_path)
    groups = feature_groups(dataset, names, num_parties)
    ids = np.asarray(patient_ids(len(y), seed))
    held = membership(len(y), num_parties, overlap, seed)
    parties = []
    for p, cols in enumerate(groups):
        rows = np.flatnonzero(held[:, p])
        rows = np.random.default_rng(seed + 100 + p).permutation(rows)
        parties.append(
            VerticalParty(
                name=f"party-{p}",
                ids=[str(i) for i in ids[rows]],
                x=x[np.ix_(rows, cols)],
                feature_names=tuple(names[c] for c in cols),
                y=y[rows] if p == LABEL_HOLDER else None,
            )
        )
    return parties


def read_party_csv(
    path: str | Path, *, id_column: str, label_column: str, name: str
) -> VerticalParty:
    """A hospital's own CSV: an ID column, numeric features, maybe a label column.

    The hospital whose file has ``label_column`` is the label holder. Rows with a
    missing feature are dropped (counted in the local log).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}", "data file not found")
    import pandas as pd  # only where a vertical party's table is read

    try:
        frame = pd.read_csv(path, dtype={id_column: str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(
            f"{path}: not a readable CSV ({err}).", "unreadable CSV"
        ) from err
    if id_column not in frame.columns:
        raise DataError(
            f"{path}: no ID column {id_column!r}; columns are "
            f"{', '.join(map(str, frame.columns))}.",
            f"missing ID column {id_column!r}",
        )
    features = [c for c in frame.columns if c not in (id_column, label_column)]
    if not features:
        raise DataError(f"{path}: no feature columns.", "no feature columns")
    numeric = _numeric_frame(
        frame[features + ([label_column] if label_column in frame else [])], str(path)
    )
    complete = numeric.notna().all(axis=1) & frame[id_column].notna()
    if dropped := int((~complete).sum()):
        log.warning(
            "%s: dropped %d of %d rows with missing values", path, dropped, len(frame)
        )
    ids = frame.loc[complete, id_column].astype(str).str.strip().tolist()
    if len(set(ids)) != len(ids):
        raise DataError(
            f"{path}: duplicate values in ID column {id_column!r}.",
            f"duplicate IDs in column {id_column!r}",
        )
    y = None
    if label_column in frame.columns:
        y = _labels(
            numeric.loc[complete, label_column].to_numpy(), str(path), label_column
        )
    return VerticalParty(
        name=name,
        ids=ids,
        x=numeric.loc[complete, features].to_numpy(np.float64),
        feature_names=tuple(map(str, features)),
        y=y,
    )


def load_party(
    *,
    dataset: str,
    data_path: str,
    id_column: str,
    label_column: str,
    overlap: float,
    seed: int,
    node_config: Mapping[str, Any],
) -> VerticalParty:
    """This node's vertical share: its own CSV (deployment) or a simulated party."""
    name = str(node_config.get("hospital-name", ""))
    if path := node_config.get("data-path"):
        return read_party_csv(
            str(path),
            id_column=str(node_config.get("id-column", id_column)),
            label_column=label_column,
            name=name or "hospital",
        )
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise DataError(
            "node config has neither 'data-path' nor 'partition-id'/'num-partitions'.",
            "the SuperNode was started without a data-path",
        )
    pid, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
    party = simulate_parties(
        dataset, n, overlap=overlap, seed=seed, data_path=data_path
    )[pid]
    return (
        party
        if not name
        else VerticalParty(name, party.ids, party.x, party.feature_names, party.y)
    )


def split_positions(
    num_aligned: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train / test positions of the aligned patients, identical at every party
    (a function of the public count and seed only).
    """
    perm = np.random.default_rng(seed + 11).permutation(num_aligned)
    n_test = int(round(test_fraction * num_aligned))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def standardized_features(x: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """Standardise with the party's own statistics of its training rows."""
    if len(train_rows) == 0:
        return np.zeros_like(x, dtype=np.float32)
    return Standardizer.fit(x[train_rows]).transform(x)
