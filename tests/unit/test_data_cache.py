"""A deployed hospital's prepared-data cache (data/cache.py)."""

import stat

import numpy as np
from support.deploy import write_heart_file

import app.client.hospital as hospital
from app.config import RunConfig
from data.cache import CACHE_VAR, cache_key
from data.spec import RAW_SPLITS
from scripts.cli import main as medflower


def load(cfg, path, calls):
    real = hospital.get_dataset

    def counting(spec):
        calls.append(spec)
        return real(spec)

    node = {"data-path": str(path), "dataset": "heart-disease", "hospital-name": "h1"}
    hospital.get_dataset, saved = counting, hospital.get_dataset
    try:
        return hospital.load_local_hospital(cfg, node)
    finally:
        hospital.get_dataset = saved


def same(a, b):
    for x, y in (
        (a.train, b.train),
        (a.val, b.val),
        *zip(a.extras[RAW_SPLITS], b.extras[RAW_SPLITS], strict=True),
    ):
        np.testing.assert_array_equal(x.x, y.x)
        np.testing.assert_array_equal(x.y, y.y)
    assert a.info == b.info and a.name == b.name


def test_prepared_once_then_read_back_and_keyed_by_content_and_settings(
    tmp_path, monkeypatch
):
    data = write_heart_file(tmp_path / "site" / "processed.h1.data", 80, seed=1)
    cache = tmp_path / "hospital" / "cache"
    cfg = RunConfig(dataset="heart-disease", data_path=str(data.parent))
    calls = []
    uncached = load(cfg, data.parent, calls)  # no MEDFLOWER_CACHE: no cache
    assert len(calls) == 1 and not cache.exists()

    monkeypatch.setenv(CACHE_VAR, str(cache))
    first = load(cfg, data.parent, calls)
    again = load(cfg, data.parent, calls)
    assert len(calls) == 2  # the second message read the cache
    same(first, uncached)
    same(again, first)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) & 0o077 == 0  # owner only

    load(cfg.replace(val_fraction=0.3), data.parent, calls)  # a setting that shapes it
    assert len(calls) == 3
    write_heart_file(data, 90, seed=2)  # the hospital's file changed
    changed = load(cfg, data.parent, calls)
    assert len(calls) == 4 and len(changed.train) + len(changed.val) == 90
    assert len(list(cache.glob("*.npz"))) == 3

    spec = cfg.replace(data_path=str(data.parent)).data_spec()
    assert cache_key(spec, data.parent, "h1") != cache_key(spec, data.parent, "h2")

    files[0].write_bytes(b"damaged")  # a damaged entry is prepared anew
    assert medflower(["deploy", "clear-cache", "--dir", str(cache.parent)]) == 0
    assert not cache.exists()
