"""Tabular datasets: WDBC (bundled with scikit-learn), UCI heart disease, any CSV."""

from __future__ import annotations

import csv
import dataclasses
import logging
import warnings
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data.base import (
    FederatedDataset,
    PooledTabularDataset,
    check_partition,
    make_local_splits,
    raw_splits,
)
from data.preprocessing import Standardizer
from data.spec import (
    DataError,
    DatasetInfo,
    DataSpec,
    HospitalData,
    SiteRecords,
    Split,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


class WDBCDataset(PooledTabularDataset):
    """Breast Cancer Wisconsin (Diagnostic), shipped inside scikit-learn.

    569 real patients, 30 features of digitised fine-needle aspirates. Label 1 =
    malignant (the disease, so sensitivity is the malignant recall), 0 = benign.
    """

    name = "wdbc"

    def load_table(self) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        # scikit-learn (~2 s of imports with SciPy) only for the dataset it ships
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        # scikit-learn codes malignant as 0; a diagnosis model predicts the disease.
        y = (1 - bunch.target).astype(np.int64)
        return (
            bunch.data.astype(np.float64),
            y,
            tuple(str(n) for n in bunch.feature_names),
        )


def _numeric_frame(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Coerce every column to float, naming the first bad cell."""
    import pandas as pd

    out = frame.apply(pd.to_numeric, errors="coerce")
    bad = out.isna() & frame.notna()
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        raise DataError(
            f"{source}: non-numeric value {frame.iat[row, col]!r} in column "
            f"{frame.columns[col]!r}, row {row + 1}.",
            f"non-numeric value in column {frame.columns[col]!r}",
        )
    values = out.to_numpy(dtype=np.float64)
    if np.isinf(values).any():
        row, col = np.argwhere(np.isinf(values))[0]
        raise DataError(
            f"{source}: infinite value in column {frame.columns[col]!r}, "
            f"row {row + 1}.",
            f"infinite value in column {frame.columns[col]!r}",
        )
    return out


def _labels(values: np.ndarray, source: str, column: str) -> np.ndarray:
    if (values < 0).any() or (values != np.round(values)).any():
        bad = values[(values < 0) | (values != np.round(values))][0]
        raise DataError(
            f"{source}: label column {column!r} must hold class indices 0, 1, ...; "
            f"found {bad!r}.",
            f"label column {column!r} holds a value that is not a class index",
        )
    return values.astype(np.int64)


def read_labelled_csv(
    path: Path, label_column: str
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read a CSV with a header row and a label column.

    Rows with an empty or NA cell are dropped (and counted in the log); text or
    infinite values are errors that name the column and row.
    """
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}", "data file not found")
    if (plain := _read_plain_csv(path, label_column)) is not None:
        return plain
    import pandas as pd  # ~0.6 s of imports: only for tables the fast path declines

    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(
            f"{path}: not a readable CSV ({err}).", "unreadable CSV"
        ) from err
    if label_column not in frame.columns:
        raise DataError(
            f"{path}: no label column {label_column!r}; columns are "
            f"{', '.join(map(str, frame.columns))}.",
            f"missing label column {label_column!r}",
        )
    numeric = _numeric_frame(frame, str(path))
    complete = numeric.dropna(axis=0)
    if dropped := len(numeric) - len(complete):
        log.warning(
            "%s: dropped %d of %d rows with missing values", path, dropped, len(numeric)
        )
    if complete.empty:
        raise DataError(f"{path}: no complete rows.", "no complete rows")
    features = [c for c in complete.columns if c != label_column]
    y = _labels(complete[label_column].to_numpy(), str(path), label_column)
    return complete[features].to_numpy(), y, tuple(map(str, features))


def _read_plain_csv(
    path: Path, label_column: str
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]] | None:
    """:func:`read_labelled_csv` for a plain numeric table, without pandas.

    Only a table with distinct, unquoted, non-empty header names including
    ``label_column``, and a finite number in every cell of every row (no
    missing value, text or quote) is read here; ``np.loadtxt`` parses the
    numbers to the same float64 values as pandas' reader, returned in pandas'
    column-major layout (tests/unit/test_tabular_data.py compares the two). A
    table of whole numbers only, or anything else, returns None and goes through
    pandas, with its dtypes, its handling of missing values and its errors.
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n")
            if '"' in header or "'" in header:
                return None
            names = next(csv.reader([header]))
            with warnings.catch_warnings():
                # a header-only file: pandas' path below names the problem
                warnings.filterwarnings("ignore", "loadtxt: input contained no data")
                values = np.loadtxt(
                    f, delimiter=",", dtype=np.float64, comments=None, ndmin=2
                )
    except (OSError, UnicodeError, ValueError, StopIteration):
        return None
    if (
        len(set(names)) != len(names)
        or not all(n.strip() for n in names)
        or label_column not in names
        or values.shape[0] == 0
        or values.shape[1] != len(names)
        or not np.isfinite(values).all()
    ):
        return None
    label = names.index(label_column)
    y = values[:, label]
    if (y < 0).any() or (y != np.round(y)).any():
        return None  # pandas' path names the bad label
    features = [i for i in range(len(names)) if i != label]
    x = values[:, features]
    if (x == np.round(x)).all():
        return None  # pandas may read whole numbers as int64: its dtype decides
    # pandas hands a table back column-major, and reductions over it sum in
    # that order: the same layout keeps every later float bit-identical
    return np.asfortranarray(x), y.astype(np.int64), tuple(names[i] for i in features)


def single_data_file(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """``path`` itself if it is a file, else the one ``suffixes`` file in the folder.

    A deployed hospital points ``data-path`` at its own file or at a folder
    holding exactly one; anything else is an error naming the path.
    """
    if path.is_file():
        return path
    if not path.exists():
        raise DataError(
            f"{what} data path does not exist: {path}", "data path not found"
        )
    if not path.is_dir():
        raise DataError(
            f"{what} data path is neither a file nor a folder: {path}",
            "data path is not a file or folder",
        )
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in suffixes)
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise DataError(
            f"{path}: expected exactly one {'/'.join(suffixes)} file for this "
            f"hospital, found {len(files)} ({found}).",
            f"expected one data file in the data folder, found {len(files)}",
        )
    return files[0]


class CSVDataset(PooledTabularDataset):
    """A CSV with a header row and a ``label-column`` of class indices.

    In simulation the table is split like WDBC; in deployment each hospital points
    ``data-path`` at its own CSV (or a folder holding one) with the same columns.
    ``feature-columns`` and ``num-classes`` declare the schema: every hospital then
    uses exactly these columns in this order, and a coordinator without data knows
    the model's shape.
    """

    name = "csv"
    needs_path = True
    shape_hint = (
        "Declare the schema in the run config: 'feature-columns' (comma-separated "
        "CSV column names, in order) and 'num-classes' (>= 2)."
    )

    @classmethod
    def shape_known(cls, spec: DataSpec) -> bool:
        return bool(spec.feature_columns and spec.num_classes)

    @property
    def declared(self) -> bool:
        return bool(self.spec.feature_columns and self.spec.num_classes)

    def read(self, path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """Read a labelled CSV and apply the declared schema, if any."""
        x, y, names = read_labelled_csv(path, self.spec.label_column)
        if cols := self.spec.feature_columns:
            missing = [c for c in cols if c not in names]
            if missing:
                raise DataError(
                    f"{path}: missing feature column(s) {', '.join(missing)} declared "
                    "in 'feature-columns'.",
                    f"missing feature column(s) {', '.join(missing)}",
                )
            x, names = x[:, [names.index(c) for c in cols]], tuple(cols)
        if self.spec.num_classes and int(y.max()) >= self.spec.num_classes:
            raise DataError(
                f"{path}: label {int(y.max())} is outside "
                f"0..{self.spec.num_classes - 1} ('num-classes').",
                "a label is outside the declared number of classes",
            )
        return x, y, names

    def load_table(self) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        return self.read(Path(self.spec.data_path))

    def info(self) -> DatasetInfo:
        if self.declared:
            return DatasetInfo(
                task="tabular",
                input_shape=(len(self.spec.feature_columns),),
                num_classes=self.spec.num_classes,
                feature_names=self.spec.feature_columns,
                description=self.name,
            )
        info = super().info()
        if self.spec.num_classes:
            info = dataclasses.replace(info, num_classes=self.spec.num_classes)
        return info

    def local_hospital(self, path: str, name: str) -> HospitalData:
        file = single_data_file(Path(path), (".csv",), "csv")
        x, y, _ = self.read(file)
        return make_local_splits(
            name,
            x,
            y,
            held_out_fraction=self.spec.val_fraction,
            seed=self.spec.seed,
            info=self.info() if self.declared else self.info_from(x, y),
        )

    def info_from(self, x: np.ndarray, y: np.ndarray) -> DatasetInfo:
        return DatasetInfo(
            task="tabular",
            input_shape=(x.shape[1],),
            num_classes=max(2, int(y.max()) + 1),
            description=self.name,
        )


HEART_COLUMNS = (
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
    "num",
)
# FLamby's Fed-Heart-Disease protocol: slope/ca/thal are mostly missing outside
# Cleveland, so they are dropped; cp and restecg are one-hot coded with the first
# level dropped, giving 13 features. Fixed levels keep every hospital's columns equal.
HEART_DROPPED = ("slope", "ca", "thal")
HEART_CATEGORIES = {"cp": (1, 2, 3, 4), "restecg": (0, 1, 2)}
HEART_FEATURES = (
    "age",
    "sex",
    "trestbps",
    "chol",
    "fbs",
    "thalach",
    "exang",
    "oldpeak",
    "cp_2",
    "cp_3",
    "cp_4",
    "restecg_1",
    "restecg_2",
)
# Public, a-priori ranges of the 13 features (UCI data dictionary and clinical
# plausibility), never derived from the data: they bound one patient's influence
# on the DP-released feature sums (``normalisation = "dp-global"``).
HEART_BOUNDS: dict[str, tuple[float, float]] = {
    "age": (20, 90),
    "sex": (0, 1),
    "trestbps": (80, 220),
    "chol": (0, 600),
    "fbs": (0, 1),
    "thalach": (60, 220),
    "exang": (0, 1),
    "oldpeak": (-3, 7),
    "cp_2": (0, 1),
    "cp_3": (0, 1),
    "cp_4": (0, 1),
    "restecg_1": (0, 1),
    "restecg_2": (0, 1),
}


def read_heart_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one UCI ``processed.*.data`` file: 14 columns, no header, ``?`` missing.

    Every row is kept: a missing value stays NaN in the 13 features (a missing
    ``cp`` or ``restecg`` makes its one-hot columns NaN), so federated statistics
    can count what is missing. Target ``num`` > 0 is disease (1).
    """
    if not path.is_file():
        raise DataError(f"heart-disease file not found: {path}", "data file not found")
    import pandas as pd

    try:
        frame = pd.read_csv(path, header=None, na_values="?", skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: unreadable ({err}).", "unreadable data file") from err
    if frame.shape[1] != len(HEART_COLUMNS):
        raise DataError(
            f"{path}: expected {len(HEART_COLUMNS)} columns "
            f"({', '.join(HEART_COLUMNS)}), found {frame.shape[1]}.",
            f"expected {len(HEART_COLUMNS)} columns, found {frame.shape[1]}",
        )
    frame.columns = list(HEART_COLUMNS)
    frame = _numeric_frame(frame, str(path)).drop(columns=list(HEART_DROPPED))
    frame = frame.dropna(subset=["num"])
    if frame.empty:
        raise DataError(f"{path}: no labelled rows.", "no labelled rows")
    for column, levels in HEART_CATEGORIES.items():
        unknown = sorted(set(frame[column].dropna().unique()) - set(levels))
        if unknown:
            raise DataError(
                f"{path}: column {column!r} has unknown level(s) {unknown}; "
                f"expected {levels}.",
                f"column {column!r} has an unknown level",
            )
        known = frame[column].notna()
        for level in levels[1:]:
            coded = (frame[column] == level).astype(np.float64)
            frame[f"{column}_{level}"] = coded.where(known)
    y = _labels(frame["num"].to_numpy(), str(path), "num")
    return frame[list(HEART_FEATURES)].to_numpy(np.float64), (y > 0).astype(np.int64)


def read_heart_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The complete rows of :func:`read_heart_table` (what a hospital trains on).

    Rows with a missing value in a kept column are dropped.
    """
    x, y = read_heart_table(path)
    complete = ~np.isnan(x).any(axis=1)
    if not complete.any():
        raise DataError(f"{path}: no complete rows.", "no complete rows")
    return x[complete], y[complete]


class HeartDiseaseDataset(FederatedDataset):
    """UCI heart disease: one file per real hospital (Cleveland, Hungary,
    Switzerland, Long Beach VA), the natural federated split.

    ``data-path`` is a directory; hospital ``i`` is its ``i``-th data file in name
    order. Each hospital holds out ``test-fraction`` of its rows (stratified);
    the server's test set is the union of those held-out rows (FLamby's pooled
    test), each standardised with its own hospital's training statistics.
    """

    name = "heart-disease"
    needs_path = True
    task = "tabular"
    feature_bounds = tuple(HEART_BOUNDS[f] for f in HEART_FEATURES)

    @classmethod
    def shape_known(cls, spec: DataSpec) -> bool:
        return True  # 13 fixed features (FLamby protocol), 2 classes

    @cached_property
    def files(self) -> list[Path]:
        root = Path(self.spec.data_path)
        if root.is_file():
            return [root]
        if not root.is_dir():
            raise DataError(
                f"heart-disease directory not found: {root}", "data path not found"
            )
        files = sorted(
            p for p in root.iterdir() if p.is_file() and p.suffix in (".data", ".csv")
        )
        if not files:
            raise DataError(f"{root}: no .data or .csv files.", "no data files")
        return files

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            task="tabular",
            input_shape=(len(HEART_FEATURES),),
            num_classes=2,
            feature_names=HEART_FEATURES,
            class_names=("no disease", "disease"),
            description="UCI heart disease (FLamby protocol)",
        )

    @staticmethod
    def site_name(path: Path) -> str:
        stem = path.name.removesuffix(path.suffix)
        return stem.removeprefix("processed.")

    def hospital_names(self, num_partitions: int) -> list[str]:
        return [self.site_name(p) for p in self.files]

    def _check_count(self, num_partitions: int) -> None:
        if num_partitions != len(self.files):
            raise DataError(
                f"{self.spec.data_path} holds {len(self.files)} hospital files but the "
                f"federation has {num_partitions} hospitals; they must match.",
                "number of hospitals does not match the number of hospital files",
            )

    def _site(self, path: Path, name: str) -> HospitalData:
        x, y = read_heart_file(path)
        return make_local_splits(
            name,
            x,
            y,
            held_out_fraction=self.spec.test_fraction,
            seed=self.spec.seed,
            info=self.info(),
        )

    def _records(self, path: Path, name: str) -> SiteRecords:
        x, y = read_heart_table(path)  # every row, missing values as NaN
        return SiteRecords(name, x, y, self.info())

    def hospital_records(self, partition_id: int, num_partitions: int) -> SiteRecords:
        check_partition(partition_id, num_partitions)
        self._check_count(num_partitions)
        path = self.files[partition_id]
        return self._records(path, self.site_name(path))

    def local_records(self, path: str, name: str) -> SiteRecords:
        file = single_data_file(Path(path), (".data", ".csv"), "heart-disease")
        return self._records(file, name)

    def hospital(self, partition_id: int, num_partitions: int) -> HospitalData:
        check_partition(partition_id, num_partitions)
        self._check_count(num_partitions)
        path = self.files[partition_id]
        return self._site(path, self.site_name(path))

    def local_hospital(self, path: str, name: str) -> HospitalData:
        """Read a deployed hospital's own ``processed.*.data`` file.

        ``path`` is the file or a folder holding exactly one.
        """
        file = single_data_file(Path(path), (".data", ".csv"), "heart-disease")
        return self._site(file, name)

    def server_test(self) -> Split:
        sites = [self._site(p, self.site_name(p)) for p in self.files]
        return Split(
            np.concatenate([s.val.x for s in sites]),
            np.concatenate([s.val.y for s in sites]),
        )

    def raw_server_test(self) -> Split:
        """The pooled held-out rows before any standardisation."""
        held_out = [raw_splits(self._site(p, self.site_name(p)))[1] for p in self.files]
        return Split(
            np.concatenate([s.x for s in held_out]),
            np.concatenate([s.y for s in held_out]),
        )


def standardize_for_evaluation(x: np.ndarray) -> np.ndarray:
    """Standardise a new evaluation site's data with its own statistics."""
    return Standardizer.fit(x).transform(x)
