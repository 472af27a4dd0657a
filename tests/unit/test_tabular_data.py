import hashlib
import warnings

import numpy as np
import pytest

from data.registry import get_dataset
from data.spec import DataError, DataSpec
from data.tabular import HEART_FEATURES, read_heart_file, read_labelled_csv

HEART_ROWS = {"cleveland": 303, "hungarian": 294, "switzerland": 123, "va": 200}
HEART_COMPLETE = {"cleveland": 303, "hungarian": 261, "switzerland": 46, "va": 130}


def test_wdbc_split_sizes_and_no_overlap_with_test():
    ds = get_dataset(DataSpec())
    hospitals = [ds.hospital(i, 4) for i in range(4)]
    test = ds.server_test()
    total = sum(len(h.train) + len(h.val) for h in hospitals) + len(test)
    assert total == 569
    assert len(test) == round(0.2 * 569)
    assert ds.info().input_shape == (30,) and ds.info().num_classes == 2


def test_wdbc_hospital_is_standardised_with_its_own_statistics():
    site = get_dataset(DataSpec()).hospital(1, 3)
    assert np.allclose(site.train.x.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(site.train.x.std(axis=0), 1, atol=1e-3)
    assert abs(site.val.x.mean()) > 1e-6  # val uses the train statistics, not its own


def test_hospital_name_and_label_counts():
    site = get_dataset(DataSpec()).hospital(0, 2)
    assert site.name == "hospital-0"
    assert sum(site.label_counts()) == len(site.train)


def test_heart_disease_real_files(heart_dir):
    digest = hashlib.sha256((heart_dir / "processed.cleveland.data").read_bytes())
    assert digest.hexdigest().startswith("a74b7efa387bc9d1")
    for name, rows in HEART_ROWS.items():
        lines = (heart_dir / f"processed.{name}.data").read_text().strip().splitlines()
        assert len(lines) == rows
        x, y = read_heart_file(heart_dir / f"processed.{name}.data")
        assert x.shape == (HEART_COMPLETE[name], len(HEART_FEATURES))
        assert set(np.unique(y)) <= {0, 1}
    ds = get_dataset(DataSpec(dataset="heart-disease", data_path=str(heart_dir)))
    assert ds.hospital_names(4) == ["cleveland", "hungarian", "switzerland", "va"]
    sites = [ds.hospital(i, 4) for i in range(4)]
    assert [len(s.train) + len(s.val) for s in sites] == list(HEART_COMPLETE.values())
    assert len(ds.server_test()) == sum(len(s.val) for s in sites)


def test_heart_count_mismatch_is_clear(heart_dir):
    ds = get_dataset(DataSpec(dataset="heart-disease", data_path=str(heart_dir)))
    with pytest.raises(
        DataError, match="holds 4 hospital files but the federation has 3"
    ):
        ds.hospital(0, 3)


def _heart_line(age, cp=4, restecg=0, num=1):
    return f"{age},1,{cp},140,260,0,{restecg},140,1,1.5,2,?,?,{num}"


def test_heart_generated_file_missing_values_dropped(tmp_path):
    lines = [_heart_line(50 + i, num=i % 2) for i in range(10)]
    lines[3] = "?,1,4,140,260,0,0,140,1,1.5,2,?,?,1"  # missing age: dropped
    path = tmp_path / "processed.a.data"
    path.write_text("\n".join(lines) + "\n")
    x, y = read_heart_file(path)
    assert x.shape == (9, 13)
    assert y.sum() == 4


def test_heart_bad_files(tmp_path):
    bad_cols = tmp_path / "processed.b.data"
    bad_cols.write_text("1,2,3\n")
    with pytest.raises(DataError, match=r"processed\.b\.data: expected 14 columns"):
        read_heart_file(bad_cols)
    bad_level = tmp_path / "processed.c.data"
    bad_level.write_text(_heart_line(50, cp=9) + "\n")
    with pytest.raises(DataError, match="'cp' has unknown level"):
        read_heart_file(bad_level)
    with pytest.raises(DataError, match="not found"):
        read_heart_file(tmp_path / "nope.data")


def _write_csv(path, rows, header="a,b,target"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_csv_loader_drops_incomplete_rows(tmp_path):
    path = _write_csv(tmp_path / "h.csv", ["1,2,0", "3,,1", "5,6,1", "7,8,0"])
    x, y, names = read_labelled_csv(path, "target")
    assert x.shape == (3, 2) and names == ("a", "b")
    assert y.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("rows", "label", "message"),
    [
        (["1,2,0"], "outcome", "no label column 'outcome'"),
        (["1,inf,0", "1,2,1"], "target", "infinite value in column 'b', row 1"),
        (["1,abc,0"], "target", "non-numeric value 'abc' in column 'b'"),
        (["1,2,0.5"], "target", "must hold class indices"),
        (["1,2,-1"], "target", "must hold class indices"),
    ],
)
def test_csv_loader_errors_name_file_and_place(tmp_path, rows, label, message):
    path = _write_csv(tmp_path / "site.csv", rows)
    with pytest.raises(DataError, match=message) as info:
        read_labelled_csv(path, label)
    assert "site.csv" in str(info.value)
    assert "site.csv" not in info.value.public_reason


def test_a_header_only_csv_is_named_without_numpy_warnings(tmp_path):
    path = _write_csv(tmp_path / "site.csv", [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "input contained no data" included
        with pytest.raises(DataError, match="site.csv"):
            read_labelled_csv(path, "target")


def _pandas_read(path, label):
    import pandas as pd

    frame = pd.read_csv(path)
    features = [c for c in frame.columns if c != label]
    return frame[features].to_numpy(), frame[label].to_numpy()


def test_plain_csv_is_read_as_pandas_reads_it(tmp_path, monkeypatch):
    # the fast path (no pandas) returns pandas' values, dtype and layout
    import data.tabular as tabular

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)) * 10.0 ** rng.integers(-4, 5, size=(300, 3))
    rows = [f"{a:.6g},{b:.17g},{c:.4f},{k % 2}" for k, (a, b, c) in enumerate(x)]
    path = _write_csv(tmp_path / "h.csv", rows, header="a,b,c,target")
    calls = []
    monkeypatch.setattr(
        tabular,
        "_numeric_frame",
        lambda *a: calls.append(a),  # pandas' path
    )
    got, y, names = read_labelled_csv(path, "target")
    assert not calls and names == ("a", "b", "c")
    want, want_y = _pandas_read(path, "target")
    assert got.dtype == want.dtype and got.flags.f_contiguous == want.flags.f_contiguous
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(y, want_y)


@pytest.mark.parametrize(
    "rows", [["1,2,0", "3,4,1"], ["1.5,,0", "3,4,1"], ['"1.5",2,0'], ["1.5,x,0"]]
)
def test_csv_the_fast_path_declines_goes_through_pandas(tmp_path, rows):
    # whole numbers (pandas' int64), missing values, quotes, text
    from data.tabular import _read_plain_csv

    assert _read_plain_csv(_write_csv(tmp_path / "h.csv", rows), "target") is None


def test_csv_dataset_partitions_like_wdbc(tmp_path):
    rng = np.random.default_rng(0)
    rows = [f"{a:.3f},{b:.3f},{int(a + b > 0)}" for a, b in rng.normal(size=(100, 2))]
    path = _write_csv(tmp_path / "all.csv", rows)
    ds = get_dataset(DataSpec(dataset="csv", data_path=str(path)))
    sites = [ds.hospital(i, 3) for i in range(3)]
    assert sum(len(s.train) + len(s.val) for s in sites) + len(ds.server_test()) == 100
    local = ds.local_hospital(str(path), "site-a")
    assert local.name == "site-a" and len(local.train) + len(local.val) == 100
