"""MIMIC-IV Clinical Database Demo v2.2 as patient x item interactions.

``data-path`` is the demo's folder (``hosp/``, ``icu/``; PhysioNet, 100
de-identified patients, ODbL v1.0, DOI 10.13026/dp1f-ex47). ``rec-matrix``:

- ``drugs``: ``prescriptions.drug``, stripped and lower-cased so that spellings
  differing only in case are one drug (rows without a drug are dropped); the
  display name is the drug's most frequent spelling; time = ``starttime``.
- ``labs``: ``labevents.itemid``; names from ``d_labitems.label``; time =
  ``charttime``.
- ``diagnoses``: ``ICD{icd_version}:{icd_code}``; names from
  ``d_icd_diagnoses.long_title``; time = the admission's ``admittime``
  (``admissions``, via ``hadm_id``) plus ``seq_num`` seconds as the order
  within an admission.

Rows without a patient, an item or a time are dropped (none in the demo).
Feedback is implicit: one row per patient-item pair at its first time.

Sites (``site-by``): ``careunit`` (= ``auto`` when the federation has one hospital
per unit, else ``auto`` deals the patients) is the ``first_careunit`` of the
patient's first ICU stay (by ``intime``); ``admission-location`` is the
``admission_location`` of the patient's first admission (by ``admittime``);
``users`` deals patients like any interaction file. Patients without an ICU
stay (or admission), and units or locations with fewer than 5 patients, are
merged into one site named ``other``. In deployment a hospital reads its own
interactions file like dataset ``interactions`` (``item-catalogue`` required).

Measured on the demo (seed 42; every patient has >= 3 interactions):

============  =====  ========  =====  =============================
matrix        items  patients  pairs  val / test rows (one/patient)
============  =====  ========  =====  =============================
drugs         598    100       5529   100 / 100
labs          498    100       10013  100 / 100
diagnoses     1474   100       3223   100 / 100
============  =====  ========  =====  =============================

``careunit`` gives 7 sites: CVICU 25, SICU 21, MICU 18, MICU/SICU 13, TSICU 12,
CCU 8, other 3 (Neuro SICU 2, Neuro Stepdown 1). ``admission-location`` gives
4 sites: EMERGENCY ROOM 48, TRANSFER FROM HOSPITAL 24, PHYSICIAN REFERRAL 20,
other 8.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from data.interaction_files import InteractionTable
from data.interactions import InteractionsDataset
from data.spec import DataError

MIN_SITE_PATIENTS = 5
OTHER_SITE = "other"
# site-by value -> (file, site column, time column that orders a patient's rows)
SITE_SOURCES = {
    "careunit": ("icu/icustays.csv.gz", "first_careunit", "intime"),
    "admission-location": (
        "hosp/admissions.csv.gz",
        "admission_location",
        "admittime",
    ),
}
Matrix = tuple[pd.DataFrame, dict[str, str]]  # (subject_id, item, time) rows; names


def read_demo_csv(root: Path, name: str, columns: list[str]) -> pd.DataFrame:
    """Read ``columns`` of one demo file; an error names the file."""
    path = root / name
    if not path.is_file():
        raise DataError(
            f"MIMIC-IV demo file not found: {path} (data-path must be the demo's "
            "folder, holding hosp/ and icu/).",
            "MIMIC-IV demo file not found",
        )
    try:
        return pd.read_csv(path, usecols=columns, dtype=object)
    except ValueError as err:  # a missing column, or an unreadable file
        raise DataError(f"{path}: unreadable ({err}).", "unreadable data file") from err


def seconds(values: pd.Series) -> np.ndarray:
    """Date-times as float seconds (NaN where missing); fine past year 2262."""
    dates = pd.to_datetime(values, format="ISO8601", errors="coerce")
    out = dates.to_numpy("datetime64[s]").astype(np.float64)
    out[dates.isna().to_numpy()] = np.nan
    return out


def _drugs(root: Path) -> Matrix:
    frame = read_demo_csv(
        root, "hosp/prescriptions.csv.gz", ["subject_id", "starttime", "drug"]
    )
    spelling = frame["drug"].fillna("").str.strip()
    frame = frame.assign(spelling=spelling, item=spelling.str.lower())
    frame = frame[frame["item"] != ""]
    counts = frame.groupby(["item", "spelling"]).size().reset_index(name="n")
    counts = counts.sort_values(["item", "n", "spelling"], ascending=[1, 0, 1])
    names = counts.drop_duplicates("item").set_index("item")["spelling"]
    return frame.assign(time=seconds(frame["starttime"])), names.to_dict()


def _labs(root: Path) -> Matrix:
    frame = read_demo_csv(
        root, "hosp/labevents.csv.gz", ["subject_id", "itemid", "charttime"]
    )
    labels = read_demo_csv(root, "hosp/d_labitems.csv.gz", ["itemid", "label"])
    names = labels.dropna().set_index("itemid")["label"].str.strip().to_dict()
    return frame.assign(item=frame["itemid"], time=seconds(frame["charttime"])), names


def icd_ids(frame: pd.DataFrame) -> pd.Series:
    """``ICD{version}:{code}``: ICD-9 and ICD-10 codes may coincide as text."""
    version, code = frame["icd_version"].str.strip(), frame["icd_code"].str.strip()
    return "ICD" + version + ":" + code


def _diagnoses(root: Path) -> Matrix:
    frame = read_demo_csv(
        root,
        "hosp/diagnoses_icd.csv.gz",
        ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"],
    )
    admissions = read_demo_csv(root, "hosp/admissions.csv.gz", ["hadm_id", "admittime"])
    admitted = admissions.set_index("hadm_id")["admittime"]
    titles = read_demo_csv(
        root, "hosp/d_icd_diagnoses.csv.gz", ["icd_code", "icd_version", "long_title"]
    )
    items = icd_ids(frame)
    # The dictionary lists ~110k codes; name only the few the patients have.
    titles = titles[titles["icd_code"].str.strip().isin(frame["icd_code"].str.strip())]
    names = dict(
        zip(icd_ids(titles), titles["long_title"].fillna("").str.strip(), strict=True)
    )
    order = pd.to_numeric(frame["seq_num"], errors="coerce").fillna(0).to_numpy()
    time = seconds(frame["hadm_id"].map(admitted)) + order
    return frame.assign(item=items, time=time), names


MATRICES: dict[str, Callable[[Path], Matrix]] = {
    "drugs": _drugs,
    "labs": _labs,
    "diagnoses": _diagnoses,
}


def patient_sites(root: Path, site_by: str, patients: np.ndarray) -> np.ndarray:
    """Each patient's site: the first stay's unit or first admission's location.

    Patients without one, and places with fewer than ``MIN_SITE_PATIENTS`` of
    ``patients``, go to ``other``.
    """
    file, column, time = SITE_SOURCES[site_by]
    frame = read_demo_csv(root, file, ["subject_id", column, time])
    frame = frame.assign(order=seconds(frame[time])).dropna(subset=[column])
    first = frame.sort_values(["order", column]).drop_duplicates("subject_id")
    place = first.set_index("subject_id")[column].str.strip()
    sites = pd.Series(patients).map(place).fillna(OTHER_SITE)
    sizes = sites.value_counts()
    small = sizes.index[sizes < MIN_SITE_PATIENTS]
    return sites.where(~sites.isin(small), OTHER_SITE).to_numpy(dtype=object)


class MimicDemoDataset(InteractionsDataset):
    """MIMIC-IV demo patients x drugs, lab tests or diagnoses (module docstring)."""

    name = "mimic-demo"
    site_modes = ("auto", "careunit", "admission-location", "users")

    @property
    def root(self) -> Path:
        root = Path(self.spec.data_path)
        if not self.spec.data_path or not root.is_dir():
            raise DataError(
                f"dataset 'mimic-demo' needs 'data-path' = the MIMIC-IV demo folder "
                f"(hosp/, icu/); got {self.spec.data_path!r}.",
                "MIMIC-IV demo folder not found",
            )
        return root

    def _matrix(self) -> Matrix:
        if self.spec.rec_matrix not in MATRICES:
            raise DataError(
                f"rec-matrix {self.spec.rec_matrix!r} is not one of "
                f"{', '.join(MATRICES)}.",
                "unknown rec-matrix",
            )
        return MATRICES[self.spec.rec_matrix](self.root)

    @cached_property
    def matrix(self) -> Matrix:
        """The chosen matrix's rows and its item names (read once)."""
        return self._matrix()

    def load_table(self) -> InteractionTable:
        frame = self.matrix[0].dropna(subset=["subject_id", "item", "time"])
        users = frame["subject_id"].str.strip().to_numpy(dtype=object)
        site = None
        if self.spec.site_by in SITE_SOURCES or self.spec.site_by == "auto":
            by = "careunit" if self.spec.site_by == "auto" else self.spec.site_by
            distinct, inverse = np.unique(users, return_inverse=True)
            site = patient_sites(self.root, by, distinct)[inverse]
        return InteractionTable(
            source=f"{self.root} ({self.spec.rec_matrix})",
            user=users,
            item=frame["item"].astype(str).str.strip().to_numpy(dtype=object),
            time=frame["time"].to_numpy(np.float64),
            line=frame.index.to_numpy(np.int64) + 2,
            timed=True,
            site=site,
        )

    def item_names(self) -> dict[str, str]:
        """Drug spellings, ``d_labitems`` labels or ICD long titles by item id."""
        return self.matrix[1]

    def site_mode(self) -> str:
        super().site_mode()  # checks the value
        return "users" if self.spec.site_by == "users" else "column"
