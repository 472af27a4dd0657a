"""The MIMIC-IV demo as recommendation matrices (real data; skips when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.federation import shared_data_dir

from data.mimic import MimicDemoDataset
from data.spec import DataError, DataSpec

CAREUNITS = {
    "Cardiac Vascular Intensive Care Unit (CVICU)": 25,
    "Coronary Care Unit (CCU)": 8,
    "Medical Intensive Care Unit (MICU)": 18,
    "Medical/Surgical Intensive Care Unit (MICU/SICU)": 13,
    "Surgical Intensive Care Unit (SICU)": 21,
    "Trauma SICU (TSICU)": 12,
    "other": 3,  # Neuro SICU 2 + Neuro Stepdown 1 (units under 5 patients)
}
ADMISSION_LOCATIONS = {
    "EMERGENCY ROOM": 48,
    "PHYSICIAN REFERRAL": 20,
    "TRANSFER FROM HOSPITAL": 24,
    "other": 8,
}
# matrix -> (items, patient-item pairs), measured on the fixed demo v2.2
MATRICES = {"drugs": (598, 5529), "labs": (498, 10013), "diagnoses": (1474, 3223)}


@pytest.fixture(scope="module")
def mimic() -> Path:
    path = shared_data_dir() / "recommendation" / "mimic-iv-demo-2.2"
    if not (path / "hosp" / "prescriptions.csv.gz").is_file():
        pytest.skip(f"MIMIC-IV demo not found in {path}")
    return path


def demo(root: Path, **spec: object) -> MimicDemoDataset:
    return MimicDemoDataset(
        DataSpec(dataset="mimic-demo", data_path=str(root), **spec)  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def matrices(mimic) -> dict[str, MimicDemoDataset]:
    """One dataset per matrix (careunit sites), shared by this module's tests."""
    return {matrix: demo(mimic, rec_matrix=matrix) for matrix in MATRICES}


@pytest.mark.parametrize("matrix", sorted(MATRICES))
def test_matrix_sizes_and_careunit_sites(matrices, matrix):
    ds = matrices[matrix]
    items, pairs = MATRICES[matrix]
    sites = ds.sites(len(CAREUNITS))
    assert len(ds.catalogue()) == items and ds.info().input_shape == (items,)
    assert {s.name: s.num_users for s in sites} == CAREUNITS
    assert sum(len(s.train) + len(s.val) + len(s.test) for s in sites) == pairs
    # every patient has >= 3 items, so each gives one val and one test row
    assert all(len(s.test) == len(s.val) == s.num_users for s in sites)
    assert not any(s.explicit for s in sites)
    assert all(np.all(s.value == 1.0) for s in (sites[0].train, sites[0].test))
    assert ds.info().description == f"mimic-demo (100 users, {items} items, implicit)"


def test_item_names_come_from_the_dictionaries(matrices):
    labs = matrices["labs"].catalogue()
    names = dict(zip(labs.ids, labs.names, strict=True))
    assert names["50912"] == "Creatinine" and names["51222"] == "Hemoglobin"
    drugs = matrices["drugs"].catalogue()
    # spellings differing in case are one drug, shown in its commonest spelling
    assert "heparin" in drugs.index() and "Heparin" not in drugs.index()
    assert drugs.names[drugs.index()["heparin"]] == "Heparin"
    icd = matrices["diagnoses"].catalogue()
    assert icd.names[icd.index()["ICD9:4019"]] == "Unspecified essential hypertension"


def test_admission_location_and_user_sites(mimic):
    ds = demo(mimic, site_by="admission-location")
    assert (
        dict(zip(ds.hospital_names(4), [s.num_users for s in ds.sites(4)], strict=True))
        == ADMISSION_LOCATIONS
    )
    with pytest.raises(DataError, match="holds 4 sites .* 7 hospitals"):
        ds.hospital(0, 7)
    users = demo(mimic, site_by="users").sites(10)
    assert [s.num_users for s in users] == [10] * 10


def test_diagnosis_times_follow_admissions_and_seq_num(matrices):
    site = matrices["diagnoses"].pooled(len(CAREUNITS))
    for u in range(site.num_users):
        train = site.train.time[site.train.user == u]
        assert site.test.time[site.test.user == u][0] >= train.max()


def test_bad_settings_are_named(mimic, tmp_path):
    with pytest.raises(DataError, match="rec-matrix 'procedures' is not one of"):
        demo(mimic, rec_matrix="procedures").catalogue()
    with pytest.raises(DataError, match="site-by 'column' does not apply"):
        demo(mimic, site_by="column").sites(7)
    with pytest.raises(DataError, match="hosp/prescriptions.csv.gz"):
        demo(tmp_path).catalogue()
