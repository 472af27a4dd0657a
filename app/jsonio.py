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
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return json_safe(value.tolist())
    return str(value)


def dumps(payload: Any, *, indent: int | None = 2) -> str:
    """``payload`` as JSON text (after :func:`json_safe`), newline-ended.

    Indented by default; ``indent=None`` gives one line, written by the json
    module's C encoder (the indenting one is pure Python, ~10x slower), for files
    rewritten while a run goes on.
    """
    return json.dumps(json_safe(payload), indent=indent, allow_nan=False) + "\n"


def compact(payload: Any) -> str:
    """``payload`` as one line of canonical JSON (sorted keys, no spaces).

    The form of JSONL logs: equal payloads give equal text, so it can be hashed.
    """
    return json.dumps(
        json_safe(payload), sort_keys=True, separators=(",", ":"), allow_nan=False
    )


def write_json(path: Path, payload: Any, *, indent: int | None = 2) -> None:
    """Write ``payload`` to ``path`` atomically; parent folders are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(payload, indent=indent))
    tmp.replace(path)
