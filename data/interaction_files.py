"""Read interaction files (user, item, rating, time, site) into a typed table.

Formats, detected from the first non-blank line:

- MovieLens ``u.data``: tab-separated, no header, ``user item rating timestamp``
  (three numeric columns ``user item rating`` load too);
- MovieLens-1M ``ratings.dat``: the same columns separated by ``::``;
- CSV or TSV with a header (a tab in the first line makes it TSV). Columns are
  found by name, case-insensitively: user = ``user|user_id|userid|patient|
  patient_id|subject_id``; item = ``item|item_id|itemid|movie_id|movieid|drug|
  code``; rating = ``rating|value|score|implicit`` (optional: absent = implicit
  1.0); time = ``timestamp|time|date`` (optional: numbers in seconds or ISO dates;
  absent = the row order); site = ``site|hospital`` (optional).

A first line whose fields are all numbers is data (no header); otherwise it is a
header, and one without a user and an item column is an error listing the columns.
Every error is a :class:`~data.spec.DataError` whose message names the file, the
line and the bad value, and whose ``public_reason`` names neither.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.spec import DataError

USER_COLUMNS = ("user", "user_id", "userid", "patient", "patient_id", "subject_id")
ITEM_COLUMNS = ("item", "item_id", "itemid", "movie_id", "movieid", "drug", "code")
RATING_COLUMNS = ("rating", "value", "score", "implicit")
TIME_COLUMNS = ("timestamp", "time", "date")
SITE_COLUMNS = ("site", "hospital")
ROLES = {
    "user": USER_COLUMNS,
    "item": ITEM_COLUMNS,
    "rating": RATING_COLUMNS,
    "time": TIME_COLUMNS,
    "site": SITE_COLUMNS,
}
# Headerless files are MovieLens: user item [rating [timestamp]].
HEADERLESS_ROLES = ("user", "item", "rating", "time")
# Suffixes of interaction files, and the MovieLens file picked from a folder of many.
SUFFIXES = (".csv", ".tsv", ".data", ".dat", ".txt")
PREFERRED_NAMES = ("u.data", "ratings.dat", "ratings.csv")


@dataclass(frozen=True)
class InteractionTable:
    """The rows of one interaction file, parsed and checked, before any split.

    ``user``, ``item`` and ``site`` are string ids (object arrays); ``time`` is in
    seconds, or the row order when ``timed`` is false; ``line`` is each row's line
    number in ``source`` (for error messages).
    """

    source: str
    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    line: np.ndarray
    rating: np.ndarray | None = None
    rating_column: str = ""
    timed: bool = False
    site: np.ndarray | None = None

    def __post_init__(self) -> None:
        sizes = {len(self.user), len(self.item), len(self.time), len(self.line)}
        sizes |= {len(a) for a in (self.rating, self.site) if a is not None}
        if len(sizes) != 1:
            raise ValueError(f"{self.source}: columns of unequal lengths {sizes}.")

    def __len__(self) -> int:
        return len(self.user)


def interactions_file(path: Path) -> Path:
    """``path`` if it is a file, else the interaction file of the folder.

    A folder must hold one interaction file (``.csv .tsv .data .dat .txt``), or
    a MovieLens ``u.data`` / ``ratings.dat`` / ``ratings.csv`` among several.
    """
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(
            f"interactions data path not found: {path}", "data path not found"
        )
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    preferred = [p for p in files if p.name in PREFERRED_NAMES]
    if len(files) == 1 or len(preferred) == 1:
        return (preferred or files)[0]
    found = ", ".join(p.name for p in files) or "none"
    raise DataError(
        f"{path}: expected one interactions file ({' '.join(SUFFIXES)}) or a "
        f"MovieLens {' / '.join(PREFERRED_NAMES)}, found {len(files)} ({found}).",
        f"expected one interactions file in the data folder, found {len(files)}",
    )


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                return line.rstrip("\r\n")
    raise DataError(f"{path}: empty file (no interaction rows).", "empty file")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_frame(path: Path, sep: str, header: bool) -> pd.DataFrame:
    source: str | io.StringIO = str(path)
    if sep == "::":  # pandas' C parser takes one-character separators only
        text = path.read_text(encoding="utf-8", errors="replace")
        source, sep = io.StringIO(text.replace("::", "\t")), "\t"
    try:
        return pd.read_csv(
            source,
            sep=sep,
            header=0 if header else None,
            dtype=object,
            keep_default_na=False,
            skip_blank_lines=False,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(
            f"{path}: unreadable as an interactions file ({err}).",
            "unreadable interactions file",
        ) from err


def _columns(frame: pd.DataFrame, path: Path, header: bool) -> dict[str, str]:
    """Role -> column name of ``frame``."""
    if not header:
        if not 2 <= frame.shape[1] <= 4:
            raise DataError(
                f"{path}: no header and {frame.shape[1]} columns; a file without a "
                "header must be MovieLens 'user item rating timestamp'.",
                "no header and an unexpected number of columns",
            )
        return dict(zip(HEADERLESS_ROLES, frame.columns, strict=False))
    lowered = {str(c).strip().lower(): str(c) for c in frame.columns}
    roles = {
        role: next(lowered[a] for a in aliases if a in lowered)
        for role, aliases in ROLES.items()
        if any(a in lowered for a in aliases)
    }
    if "user" not in roles or "item" not in roles:
        raise DataError(
            f"{path}: no recognisable header: columns are "
            f"{', '.join(map(str, frame.columns))}; need a user column "
            f"({'|'.join(USER_COLUMNS)}) and an item column "
            f"({'|'.join(ITEM_COLUMNS)}).",
            "no recognisable user and item columns in the header",
        )
    return roles


def _bad(path: Path, line: int, what: str, value: str, public: str) -> DataError:
    """An error naming the file, the line and the value (the value only locally)."""
    shown = "(empty cell)" if value == "" else repr(value)
    return DataError(f"{path}, line {line}: {what} {shown}.", public)


def _ids(values: np.ndarray, lines: np.ndarray, path: Path, role: str) -> np.ndarray:
    empty = values == ""
    if empty.any():
        i = int(np.argmax(empty))
        raise _bad(path, int(lines[i]), f"missing {role}", "", f"missing {role}")
    return values


def _as_floats(values: np.ndarray) -> np.ndarray:
    """Parse text to float64; NaN where a cell is not a finite number."""
    try:
        numbers = values.astype(np.float64)  # fast path: every cell a number
    except (ValueError, TypeError):
        numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64)
    return np.where(np.isfinite(numbers), numbers, np.nan)


def _numbers(
    values: np.ndarray, lines: np.ndarray, path: Path, role: str
) -> np.ndarray:
    numbers = _as_floats(values)
    bad = np.isnan(numbers)
    if bad.any():
        i = int(np.argmax(bad))
        what = f"missing {role}" if values[i] == "" else f"non-numeric {role}"
        raise _bad(path, int(lines[i]), what, values[i], what)
    return numbers


def _times(values: np.ndarray, lines: np.ndarray, path: Path) -> np.ndarray:
    """Seconds: numbers as they are, or ISO dates as seconds since 1970.

    The first row decides which; a column mixing both is an error.
    """
    numbers = _as_floats(values)
    if not np.isnan(numbers[0]):  # a column of numbers: every cell must be one
        return _numbers(values, lines, path, "timestamp")
    dates = pd.to_datetime(
        pd.Series(values), format="ISO8601", errors="coerce", utc=True
    )
    bad = dates.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise _bad(
            path,
            int(lines[i]),
            "timestamp is neither a number nor an ISO date:",
            values[i],
            "a timestamp is neither a number nor an ISO date",
        )
    return dates.dt.tz_localize(None).to_numpy("datetime64[s]").astype(np.float64)


def _table(
    path: Path, frame: pd.DataFrame, roles: dict[str, str], header: bool
) -> InteractionTable:
    # Numbers parse with surrounding blanks; ids are stripped.
    cells = {
        role: (
            frame[col].str.strip() if role in ("user", "item", "site") else frame[col]
        ).to_numpy(dtype=object)
        for role, col in roles.items()
    }
    lines = np.arange(len(frame), dtype=np.int64) + (2 if header else 1)
    blank = np.logical_and.reduce([v == "" for v in cells.values()])
    if blank.all():
        raise DataError(f"{path}: empty file (no interaction rows).", "empty file")
    if blank.any():
        cells = {role: v[~blank] for role, v in cells.items()}
        lines = lines[~blank]
    rating, time = cells.get("rating"), cells.get("time")
    return InteractionTable(
        source=str(path),
        user=_ids(cells["user"], lines, path, "user"),
        item=_ids(cells["item"], lines, path, "item"),
        time=lines.astype(np.float64) if time is None else _times(time, lines, path),
        line=lines,
        rating=None if rating is None else _numbers(rating, lines, path, "rating"),
        rating_column=str(roles.get("rating", "")).strip().lower(),
        timed=time is not None,
        site=None if "site" not in cells else _ids(cells["site"], lines, path, "site"),
    )


def read_interactions(path: str | Path) -> InteractionTable:
    """Read an interaction file (MovieLens ``u.data``/``ratings.dat``, CSV, TSV).

    Parameters
    ----------
    path
        The file, or a folder holding one (see :func:`interactions_file`).

    Returns
    -------
    InteractionTable
        Every non-blank row, in file order, with its line number.

    Raises
    ------
    DataError
        Naming the file, the line and the value: an empty file, no recognisable
        header, a missing user/item/site, a non-numeric rating, a bad timestamp.
    """
    file = interactions_file(Path(path))
    first = _first_line(file)
    sep = "::" if "::" in first else "\t" if "\t" in first else ","
    header = not all(_is_number(f.strip()) for f in first.split(sep))
    frame = _read_frame(file, sep, header)
    return _table(file, frame, _columns(frame, file, header), header)


def read_item_list(path: str | Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Item ids and display names from a catalogue CSV (or TSV).

    With a header, the id column is found like an interaction file's item
    column (or ``id``) and names in ``name|title|label|long_title``; without one,
    column 1 is the id and column 2, if any, the name. Names default to the ids.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"item catalogue not found: {file}", "item catalogue not found")
    first = _first_line(file)
    sep = "\t" if "\t" in first else ","
    fields = [f.strip().lower() for f in first.split(sep)]
    header = fields[0] in (*ITEM_COLUMNS, "id")
    frame = _read_frame(file, sep, header)
    lowered = {str(c).strip().lower(): c for c in frame.columns}
    id_col = frame.columns[0]
    name_col = next(
        (lowered[n] for n in ("name", "title", "label", "long_title") if n in lowered),
        frame.columns[1] if not header and frame.shape[1] > 1 else None,
    )
    ids = frame[id_col].str.strip().to_numpy(dtype=object)
    keep = ids != ""
    ids = ids[keep]
    names = ids if name_col is None else frame[name_col].to_numpy(dtype=object)[keep]
    unique, counts = np.unique(ids, return_counts=True)
    if len(ids) == 0 or (counts > 1).any():
        what = "no item ids" if len(ids) == 0 else f"item {unique[counts > 1][0]!r}"
        raise DataError(
            f"{file}: {what}{' listed twice' if len(ids) else ''}; an item "
            "catalogue lists every item id once.",
            "the item catalogue is empty or lists an item twice",
        )
    names = [str(n).strip() or i for n, i in zip(names, ids, strict=True)]
    return tuple(map(str, ids)), tuple(names)
