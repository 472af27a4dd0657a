"""The one JSON writer of medflower: history.json, results.json, reports, pid files,
and the one-line form of the JSONL audit log (:func:`compact`).

Every machine-readable output goes through :func:`write_json`, so all of them treat
non-finite numbers alike (NaN and +-inf become ``null``: JSON has no such numbers)
and a reader never sees half a file (write to a temporary file, then rename).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """A JSON-safe copy: NaN/inf become None, numpy scalars and arrays plain values.

    Paths and other unknown objects become their ``str``.
    """
    if isinstance(value, dict):
        return {_key(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return json_safe(value.tolist())
    return str(value)


# Dict keys json itself would write differently from ``str``.
_JSON_KEYS = {True: "true", False: "false", None: "null"}


def _key(key: Any) -> str:
    """A dict key as the json module names it (``str`` for any other key)."""
    if key is None or isinstance(key, bool):
        return _JSON_KEYS[key]
    return str(key)


def _encode(payload: Any, **options: Any) -> str:
    """``json.dumps(json_safe(payload), allow_nan=False, **options)``, skipping the
    Python copy where the payload needs none.

    ``json_safe`` walks every value in Python: for history.json, rewritten after
    every round, that grew with rounds x hospitals x metrics. A payload of plain
    dicts, lists, strings, finite floats, ints, bools and None encodes to the same
    text without it (:func:`json_safe` names keys as json does); anything else
    (NaN, numpy values, paths) makes the C encoder raise, and the copy is made.
    """
    try:
        return json.dumps(payload, allow_nan=False, **options)
    except (TypeError, ValueError):
        return json.dumps(json_safe(payload), allow_nan=False, **options)


def dumps(payload: Any, *, indent: int | None = 2) -> str:
    """``payload`` as JSON text (after :func:`json_safe`), newline-ended.

    Indented by default; ``indent=None`` gives one line, written by the json
    module's C encoder (the indenting one is pure Python, ~10x slower), for files
    rewritten while a run goes on.
    """
    return _encode(payload, indent=indent) + "\n"


def compact(payload: Any) -> str:
    """``payload`` as one line of canonical JSON (sorted keys, no spaces).

    The form of JSONL logs: equal payloads give equal text, so it can be hashed.
    """
    return _encode(payload, sort_keys=True, separators=(",", ":"))


def write_json(path: Path, payload: Any, *, indent: int | None = 2) -> None:
    """Write ``payload`` to ``path`` atomically; parent folders are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(payload, indent=indent))
    tmp.replace(path)
