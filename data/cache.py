"""A deployed hospital's prepared data, cached on its own disk between messages.

In Flower's deployment engine every message to a hospital starts a fresh ClientApp
process, which would read, clean, split and standardise the hospital's file again
(and import pandas to do so). When ``MEDFLOWER_CACHE`` names a folder (``medflower
deploy start-supernode`` sets it to ``<dir>/cache``), the prepared splits are kept
there, one ``.npz`` per key. The key is a SHA-256 over

- the content of the data file(s) (so an edited file is prepared anew),
- every data setting of the run (:class:`~data.spec.DataSpec` except the path),
  the dataset kind and the hospital's name,
- the source of the ``data`` package (new preparation code, new key).

The cache never leaves the hospital: it is read and written only by the hospital's
own ClientApp, with owner-only permissions, and removed with
``medflower deploy clear-cache --dir <dir>``. Only array data (tabular splits) is
cached; anything else is prepared as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data.spec import RAW_SPLITS as RAW
from data.spec import DatasetInfo, DataSpec, HospitalData, Split

CACHE_VAR = "MEDFLOWER_CACHE"
FORMAT = 1
MAX_HASHED_BYTES = 512 * 2**20  # larger data are not cached (hashing would cost more)
_SPLITS = ("train", "val", "raw_train", "raw_val")


def cache_dir() -> Path | None:
    """The cache folder (``$MEDFLOWER_CACHE``), or None: no cache."""
    value = os.environ.get(CACHE_VAR, "").strip()
    return Path(value).expanduser() if value else None


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def _source_digest() -> str:
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def cache_key(spec: DataSpec, path: Path, name: str) -> str | None:
    """The key of ``name``'s data at ``path`` prepared as ``spec`` says (None: the
    data are too large to hash cheaply).
    """
    files = _files(path)
    if sum(f.stat().st_size for f in files) > MAX_HASHED_BYTES:
        return None
    digest = hashlib.sha256(f"medflower-prepared-{FORMAT}\0{name}\0".encode())
    settings = dataclasses.asdict(dataclasses.replace(spec, data_path=""))
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(_source_digest().encode())
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _arrays(site: HospitalData) -> dict[str, np.ndarray] | None:
    """The site's splits as named arrays, or None when they are not plain arrays."""
    if not isinstance(site, HospitalData):  # e.g. a recommender's interactions
        return None
    splits = {"train": site.train, "val": site.val}
    extras = dict(site.extras)
    raw = extras.pop(RAW, None)
    if extras:
        return None
    if raw is not None:
        splits["raw_train"], splits["raw_val"] = raw
    out = {}
    for key, split in splits.items():
        if not (isinstance(split.x, np.ndarray) and isinstance(split.y, np.ndarray)):
            return None
        if split.x.dtype == object:
            return None
        out[f"{key}_x"], out[f"{key}_y"] = split.x, split.y
    out["info"] = np.array(json.dumps(dataclasses.asdict(site.info)))
    return out


def _site(name: str, stored: dict[str, np.ndarray]) -> HospitalData:
    splits = {
        key: Split(stored[f"{key}_x"], stored[f"{key}_y"])
        for key in _SPLITS
        if f"{key}_x" in stored
    }
    fields = json.loads(str(stored["info"]))
    info = DatasetInfo(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    )
    extras: dict[str, object] = {}
    if "raw_train" in splits:
        extras[RAW] = (splits["raw_train"], splits["raw_val"])
    return HospitalData(name, splits["train"], splits["val"], info, extras)


def _read(file: Path, name: str) -> HospitalData | None:
    try:
        with np.load(file, allow_pickle=False) as stored:
            return _site(name, {k: stored[k] for k in stored.files})
    except (OSError, ValueError, KeyError, TypeError):  # damaged: prepare anew
        file.unlink(missing_ok=True)
        return None


def _write(file: Path, arrays: dict[str, np.ndarray]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:  # mkstemp: owner-only permissions
            np.savez(out, **arrays)
        os.replace(tmp, file)  # atomic: concurrent messages never read half a file
    finally:
        Path(tmp).unlink(missing_ok=True)


def prepared(
    spec: DataSpec, path: Path, name: str, prepare: Callable[[], HospitalData]
) -> HospitalData:
    """``prepare()``'s result, from the cache when it holds this key."""
    folder = cache_dir()
    key = cache_key(spec, path, name) if folder is not None else None
    if folder is None or key is None:
        return prepare()
    file = folder / f"{key}.npz"
    if file.is_file() and (site := _read(file, name)) is not None:
        return site
    site = prepare()
    if (arrays := _arrays(site)) is not None:
        _write(file, arrays)
    return site


def clear(folder: Path) -> int:
    """Remove every cached file in ``folder``; return how many were removed."""
    removed = 0
    for file in folder.glob("*.npz"):
        file.unlink(missing_ok=True)
        removed += 1
    for tmp in folder.glob("*.tmp"):
        tmp.unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return removed
