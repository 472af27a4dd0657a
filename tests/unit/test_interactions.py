"""Interaction files, leave-last-out splits and sites (data/interactions.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.interactions import (
    InteractionsDataset,
    ItemCatalogue,
    read_interactions,
)
from data.spec import DataError, DataSpec

# user item rating timestamp; user 1 rates item 10 twice (3 then 5).
MOVIELENS_ROWS = [
    (1, 10, 3, 100),
    (1, 20, 4, 200),
    (1, 10, 5, 300),
    (1, 30, 2, 400),
    (2, 20, 1, 150),
    (2, 30, 5, 50),
    (3, 10, 4, 10),
    (3, 20, 4, 20),
    (3, 30, 3, 30),
    (3, 2, 1, 40),
]


def dataset(path: Path | None, **spec: object) -> InteractionsDataset:
    data_path = "" if path is None else str(path)
    return InteractionsDataset(
        DataSpec(dataset="interactions", data_path=data_path, **spec)  # type: ignore[arg-type]
    )


def write_rows(path: Path, rows: list[tuple], sep: str, header: str = "") -> Path:
    lines = [header] if header else []
    lines += [sep.join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def random_rows(n_users: int, seed: int, *, timed: bool = True) -> list[tuple]:
    """Rows with repeated times (ties) and users of 1..12 interactions."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        k = int(rng.integers(1, 13))
        items = rng.choice(40, size=k, replace=False)
        times = rng.integers(0, 5, size=k)  # few distinct times: many ties
        rows += [
            (f"p{u}", f"i{i}", int(rng.integers(1, 6)), int(t))
            if timed
            else (f"p{u}", f"i{i}", int(rng.integers(1, 6)))
            for i, t in zip(items, times, strict=True)
        ]
    return rows


def split_rows(site) -> dict[str, list[tuple[str, int, float, float]]]:
    """Split name -> (user id, item index, value, time) rows."""
    return {
        name: sorted(
            (site.users[u], int(i), float(v), float(t))
            for u, i, v, t in zip(
                part.user, part.item, part.value, part.time, strict=True
            )
        )
        for name, part in (
            ("train", site.train),
            ("val", site.val),
            ("test", site.test),
        )
    }


# ---- file formats -------------------------------------------------------------


def test_movielens_u_data_loads_as_explicit_ratings(tmp_path):
    path = write_rows(tmp_path / "u.data", MOVIELENS_ROWS, "\t")
    table = read_interactions(path)
    assert len(table) == 10 and table.timed and table.site is None
    assert list(table.user[:2]) == ["1", "1"] and table.rating[2] == 5.0
    ds = dataset(path)
    assert ds.catalogue().ids == ("2", "10", "20", "30")  # numeric order
    site = ds.hospital(0, 1)
    assert site.explicit and site.num_users == 3
    assert len(site.train) + len(site.val) + len(site.test) == 9  # 1 repeat merged
    # user 1's repeated (1, 10) keeps the latest rating, at its time
    rows = [r for rows in split_rows(site).values() for r in rows if r[0] == "1"]
    assert ("1", 1, 5.0, 300.0) in rows and ("1", 1, 3.0, 100.0) not in rows
    assert ds.info().description == "interactions (3 users, 4 items, explicit)"
    assert ds.info().input_shape == (4,) and ds.info().task == "recommendation"


def test_ml1m_ratings_dat_reads_like_u_data(tmp_path):
    tab = dataset(write_rows(tmp_path / "u.data", MOVIELENS_ROWS, "\t")).hospital(0, 1)
    (tmp_path / "ml-1m").mkdir()
    dat = write_rows(tmp_path / "ml-1m" / "ratings.dat", MOVIELENS_ROWS, "::")
    assert split_rows(dataset(dat).hospital(0, 1)) == split_rows(tab)
    # a folder with several .dat files picks the MovieLens ratings.dat
    (tmp_path / "ml-1m" / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    assert read_interactions(tmp_path / "ml-1m").source == str(dat)


def test_csv_with_header_aliases_and_site_column(tmp_path):
    rows = [
        (f"h{s}", f"p{u}", f"d{(u * 3 + k) % 7}", k * 10 + u)
        for s in (1, 0)
        for u in range(4)
        for k in range(3)
    ]
    path = write_rows(tmp_path / "x.csv", rows, ",", "Hospital,Patient_ID,Drug,Time")
    ds = dataset(path)
    assert ds.hospital_names(2) == ["h0", "h1"]
    sites = ds.sites(2)
    assert [s.name for s in sites] == ["h0", "h1"]
    assert all(s.num_users == 4 and not s.explicit for s in sites)  # no rating col
    assert all(len(s.test) == 4 and len(s.val) == 4 for s in sites)
    assert sites[0].catalogue is sites[1].catalogue and len(ds.catalogue()) == 7
    # auto deals users to another number of hospitals; site-by='column' refuses
    assert [s.name for s in ds.sites(3)] == ["hospital-0", "hospital-1", "hospital-2"]
    with pytest.raises(DataError, match=r"holds 2 sites \(h0, h1\).* 3 hospitals"):
        dataset(path, site_by="column").sites(3)
    # site-by users ignores the column: p0..p3 are then one user each
    assert sum(s.num_users for s in dataset(path, site_by="users").sites(4)) == 4


def test_tsv_with_iso_dates_implicit_earliest_time(tmp_path):
    header = "user\titem\tdate"
    rows = [
        ("a", "x", "2020-01-02"),
        ("a", "y", "2020-01-01T12:00:00"),
        ("a", "x", "2020-01-01"),  # repeat of (a, x), earlier
        ("a", "z", "2020-01-03"),
        ("b", "x", "2020-01-05"),
    ]
    path = write_rows(tmp_path / "events.tsv", rows, "\t", header)
    site = dataset(path).hospital(0, 1)
    day = 86400.0
    jan1 = float(np.datetime64("2020-01-01", "s").astype(np.int64))
    assert not site.explicit and site.users == ("a", "b")
    assert split_rows(site) == {
        "train": [("a", 0, 1.0, jan1), ("b", 0, 1.0, jan1 + 4 * day)],
        "val": [("a", 1, 1.0, jan1 + day / 2)],
        "test": [("a", 2, 1.0, jan1 + 2 * day)],
    }


def test_implicit_flag_column_of_zeros_and_ones(tmp_path):
    rows = [("u", "a", 1), ("u", "b", 0), ("u", "c", 1), ("u", "d", 1), ("v", "a", 1)]
    path = write_rows(tmp_path / "flags.csv", rows, ",", "user,item,implicit")
    site = dataset(path).hospital(0, 1)
    assert not site.explicit
    b = site.catalogue.index()["b"]
    assert b not in np.concatenate([site.train.item, site.val.item, site.test.item])
    ratings = [("u", "a", 4), ("u", "b", 4), ("u", "c", 4)]
    same = write_rows(tmp_path / "same.csv", ratings, ",", "user,item,rating")
    assert not dataset(same).hospital(0, 1).explicit  # all equal: implicit
    assert dataset(same, feedback="explicit").hospital(0, 1).explicit


# ---- errors ---------------------------------------------------------------------


def test_non_numeric_rating_names_file_line_and_value(tmp_path):
    rows = [*MOVIELENS_ROWS[:3], (1, 40, "five", 500), *MOVIELENS_ROWS[3:]]
    path = write_rows(tmp_path / "u.data", rows, "\t")
    with pytest.raises(DataError) as err:
        read_interactions(path)
    assert str(err.value) == f"{path}, line 4: non-numeric rating 'five'."
    assert (
        "five" not in err.value.public_reason
        and "u.data" not in err.value.public_reason
    )


def test_line_numbers_count_the_header_and_blank_lines(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("user,item,timestamp\nu,a,1\n\nu,b,yesterday\n")
    with pytest.raises(DataError, match=r"x\.csv, line 4: .*'yesterday'"):
        read_interactions(path)
    path.write_text("user,item\nu,a\n,b\n")
    with pytest.raises(DataError, match=r"x\.csv, line 3: missing user"):
        read_interactions(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("\n\n", "empty file"),
        ("user,item\n", "empty file"),
        ("patient,when\np1,3\n", r"no recognisable header: columns are patient, when"),
        ("1\t2\t3\t4\t5\n", "no header and 5 columns"),
    ],
)
def test_unreadable_files_are_named(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_interactions(path)
    assert str(path) in str(err.value) and str(path) not in err.value.public_reason


def test_explicit_feedback_without_ratings_and_unknown_site_by(tmp_path):
    path = write_rows(tmp_path / "x.csv", [("u", "a")], ",", "user,item")
    with pytest.raises(DataError, match="feedback='explicit' but .* no rating"):
        dataset(path, feedback="explicit").hospital(0, 1)
    with pytest.raises(DataError, match="site-by 'careunit' does not apply"):
        dataset(path, site_by="careunit").hospital(0, 1)
    with pytest.raises(DataError, match="site-by='column' but .* no site column"):
        dataset(path, site_by="column").hospital(0, 1)


def test_site_without_evaluable_users_is_named(tmp_path):
    rows = [("A", "u1", "a"), ("A", "u1", "b"), ("A", "u1", "c"), ("B", "u2", "a")]
    path = write_rows(tmp_path / "x.csv", rows, ",", "site,user,item")
    with pytest.raises(DataError, match="site 'B' has no user with >= 3"):
        dataset(path).sites(2)


def test_local_hospital_maps_items_through_the_catalogue(tmp_path):
    sim = dataset(write_rows(tmp_path / "u.data", MOVIELENS_ROWS, "\t"))
    sim.catalogue().to_csv(tmp_path / "items.csv")
    own = write_rows(tmp_path / "mine.tsv", MOVIELENS_ROWS[6:], "\t")
    deployed = dataset(None, item_catalogue=str(tmp_path / "items.csv"))
    assert deployed.info().input_shape == (4,)  # a coordinator without data
    site = deployed.local_hospital(str(own), "clinic")
    assert site.name == "clinic" and site.users == ("3",)
    simulated = [r for rows in split_rows(sim.hospital(0, 1)).values() for r in rows]
    assert all(r in simulated for rows in split_rows(site).values() for r in rows)
    stranger = write_rows(tmp_path / "other.tsv", [(3, 10, 4, 1), (3, 99, 4, 2)], "\t")
    with pytest.raises(DataError) as err:
        deployed.local_hospital(str(stranger), "clinic")
    assert str(err.value).startswith(f"{stranger}, line 2: item '99' is not in")
    assert "99" not in err.value.public_reason
    with pytest.raises(DataError, match="needs 'item-catalogue'"):
        sim.local_hospital(str(own), "clinic")
    with pytest.raises(DataError, match="no server-side test set"):
        sim.server_test()


# ---- leave-last-out -------------------------------------------------------------


def test_leave_last_out_never_trains_on_a_users_future(tmp_path):
    path = write_rows(
        tmp_path / "r.csv", random_rows(60, 0), ",", "user,item,rating,time"
    )
    site = dataset(path).hospital(0, 1)
    counts = np.bincount(
        np.concatenate([site.train.user, site.val.user, site.test.user]),
        minlength=site.num_users,
    )
    assert (counts < 3).any() and (counts >= 3).any()
    for part in (site.val, site.test):  # one row per user with >= 3, none otherwise
        assert np.array_equal(np.sort(part.user), np.flatnonzero(counts >= 3))
    for u in range(site.num_users):
        train_times = site.train.time[site.train.user == u]
        val = site.val.time[site.val.user == u]
        test = site.test.time[site.test.user == u]
        if counts[u] < 3:
            assert len(train_times) == counts[u] and len(val) == len(test) == 0
        else:
            assert test[0] >= val[0] >= train_times.max()
        items = np.concatenate([site.train.item, site.val.item, site.test.item])[
            np.concatenate([site.train.user, site.val.user, site.test.user]) == u
        ]
        assert len(set(items)) == len(items)  # no (user, item) in two splits
        assert np.array_equal(
            np.sort(site.history(u)), np.sort(site.train.item[site.train.user == u])
        )


def test_split_is_deterministic_for_a_seed_and_ties_follow_it(tmp_path):
    path = write_rows(
        tmp_path / "r.csv", random_rows(60, 1), ",", "user,item,rating,time"
    )
    first = split_rows(dataset(path, seed=3).hospital(0, 1))
    assert split_rows(dataset(path, seed=3).hospital(0, 1)) == first
    assert split_rows(dataset(path, seed=4).hospital(0, 1))["test"] != first["test"]


def test_untimed_file_holds_out_random_rows_per_user(tmp_path):
    path = write_rows(
        tmp_path / "r.csv", random_rows(40, 2, timed=False), ",", "user,item,rating"
    )
    sites = [dataset(path, seed=s).hospital(0, 1) for s in (0, 1)]
    for site in sites:
        assert len(np.unique(site.test.user)) == len(site.test)
    assert not np.array_equal(sites[0].test.item, sites[1].test.item)


# ---- sites ----------------------------------------------------------------------


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_users_dealt_to_sites_cover_every_user_once(tmp_path, partitioner):
    path = write_rows(
        tmp_path / "u.data",
        [
            (u, i, 1 + (u * i) % 5, u * 100 + i)
            for u in range(1, 121)
            for i in range(1, 4 + u % 9)
        ],
        "\t",
    )
    ds = dataset(path, partitioner=partitioner, dirichlet_alpha=0.3)
    sites = ds.sites(5)
    ids = [user for s in sites for user in s.users]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 120
    sizes = [s.num_users for s in sites]
    if partitioner == "iid":
        assert sizes == [24] * 5
    assert ds.hospital_names(5) == [f"hospital-{i}" for i in range(5)]
    assert split_rows(ds.hospital(2, 5)) == split_rows(sites[2])


def test_pooled_equals_the_union_of_the_sites(tmp_path):
    path = write_rows(
        tmp_path / "u.data",
        [
            (u, i, 1 + (u + i) % 5, (u * 7 + i * 3) % 11)
            for u in range(1, 31)
            for i in range(1, 2 + u % 6)
        ],
        "\t",
    )
    ds = dataset(path)
    pooled = split_rows(ds.pooled(3))
    union: dict[str, list] = {"train": [], "val": [], "test": []}
    for site in ds.sites(3):
        for name, rows in split_rows(site).items():
            union[name] += rows
    assert pooled == {name: sorted(rows) for name, rows in union.items()}


def test_catalogue_file_round_trip(tmp_path):
    catalogue = ItemCatalogue(("b", "a"), ("Beta", "Alpha"))
    catalogue.to_csv(tmp_path / "c.csv")
    again = ItemCatalogue.from_file(tmp_path / "c.csv")
    assert again == catalogue and again.index() == {"b": 0, "a": 1}
    (tmp_path / "d.csv").write_text("item\nx\ny\nx\n")
    with pytest.raises(DataError, match="item 'x' listed twice"):
        ItemCatalogue.from_file(tmp_path / "d.csv")


def test_movielens_100k_sized_file_splits_over_ten_sites(tmp_path):
    rng = np.random.default_rng(0)
    n = 100_000
    cols = [
        rng.integers(1, 944, n),
        rng.integers(1, 1683, n),
        rng.integers(1, 6, n),
        rng.integers(874_724_710, 893_286_638, n),
    ]
    path = tmp_path / "u.data"
    path.write_text(
        "".join(f"{a}\t{b}\t{c}\t{d}\n" for a, b, c, d in zip(*cols, strict=True))
    )
    sites = dataset(path).sites(10)
    # speed is a benchmark figure (docs/data.md), not a timed test
    assert sum(s.num_users for s in sites) == 943
    assert sum(len(s.train) + len(s.val) + len(s.test) for s in sites) == len(
        {(a, b) for a, b in zip(cols[0], cols[1], strict=True)}
    )
