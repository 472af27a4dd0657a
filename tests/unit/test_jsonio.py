"""The JSON writer's fast path (no Python copy) writes what the copy would."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from app.jsonio import compact, dumps, json_safe

PAYLOADS = {
    "plain": {"a": 1.5, "b": [1, 2, (3, 4)], "c": None, "d": True, "e": "x"},
    "odd-keys": {3: 2, 2.5: "x", False: 1, None: 2, "s": -0.0},
    "nan": {"x": math.nan, "y": [math.inf, 1.0]},
    "numpy-and-paths": {"n": np.float32(1.5), "m": np.int64(3), "p": Path("/a")},
    "float64": {"f": np.float64(0.1), "tiny": 1e-320, "big": 1e300},
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_written_text_equals_the_json_safe_copys(name):
    payload = PAYLOADS[name]
    for indent in (None, 2):
        slow = json.dumps(json_safe(payload), indent=indent, allow_nan=False)
        assert dumps(payload, indent=indent) == slow + "\n"
    canonical = json.dumps(
        json_safe(payload), sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    assert compact(payload) == canonical


def test_non_finite_numbers_become_null():
    assert json.loads(dumps({"x": math.nan, "y": [-math.inf]})) == {
        "x": None,
        "y": [None],
    }
