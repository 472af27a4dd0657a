"""Helpers for the deployment tests: hospital data folders, an edited app copy and
leak checks."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np

from support.federation import shared_data_dir

HEART_SITES = ("cleveland", "hungarian", "switzerland")


def write_heart_file(path: Path, n: int, seed: int) -> Path:
    """Write ``n`` rows in the UCI ``processed.*.data`` format (14 columns, no
    header, ``?`` for missing), with a learnable disease signal."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        num = int(rng.integers(0, 5))
        sick = num > 0
        row = [
            int(rng.integers(30, 78)),
            int(rng.integers(0, 2)),
            int(rng.integers(3, 5) if sick else rng.integers(1, 4)),
            int(rng.integers(95, 190)),
            int(rng.integers(120, 400)),
            int(rng.integers(0, 2)),
            int(rng.integers(0, 3)),
            int(rng.integers(80, 150) if sick else rng.integers(130, 200)),
            int(sick and rng.random() < 0.7),
            round(float(rng.uniform(0, 4)), 1),
            "?",
            "?",
            "?",
            num,
        ]
        rows.append(",".join(str(v) for v in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def hospital_folders(root: Path) -> dict[str, Path]:
    """One data folder per hospital, each holding its own single file.

    The real UCI hospital files (linked, never copied) when the shared data is
    present, else generated files in the same format.
    """
    shared = shared_data_dir() / "heart-disease"
    folders = {}
    for i, site in enumerate(HEART_SITES):
        folder = root / f"{site}-data"
        folder.mkdir(parents=True)
        source = shared / f"processed.{site}.data"
        if source.is_file():
            (folder / source.name).symlink_to(source)
        else:
            write_heart_file(folder / f"processed.{site}.data", 120, seed=i)
        folders[site] = folder
    return folders


def processes_mentioning(text: str, *, environ: bool = False) -> list[str]:
    """Command lines of live processes that mention ``text`` in their command line
    (or, with ``environ``, in their environment): a leak check."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            env = (entry / "environ").read_bytes() if environ else b""
        except OSError:
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
        if state != "Z" and (text in cmd or text.encode() in env):
            found.append(f"{entry.name}: {cmd[:200]}")
    return found


def app_with_one_byte_changed(app: Path, dest: Path) -> Path:
    """A copy of the app build of ``app`` (its FAB's files) with one byte changed.

    The byte is a letter of ``app/client_app.py``'s docstring: the copy still runs,
    but its build has another hash.
    """
    from scripts.deploy.approval import build_fab

    with zipfile.ZipFile(io.BytesIO(build_fab(app))) as fab:
        fab.extractall(dest)
    shutil.rmtree(dest / ".info")  # Flower's manifest, rebuilt by `flwr run`
    target = dest / "app" / "client_app.py"
    source = bytearray(target.read_bytes())
    index = source.index(b'"""') + 3
    source[index] ^= 0x20  # swap the case of the docstring's first letter
    target.write_bytes(bytes(source))
    return dest
