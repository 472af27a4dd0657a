"""docs/configuration.md is generated from the key declarations and registries."""

import re
import tomllib

from support.federation import REPO

from app.config.docs import COMMAND, allowed, render_markdown
from app.config.keys import Key


def test_docs_on_disk_equal_the_generated_text():
    on_disk = (REPO / "docs" / "configuration.md").read_text()
    assert on_disk == render_markdown(), f"docs are stale; run: {COMMAND}"


def test_docs_list_every_pyproject_key():
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]
    row = r"^\| `([a-z0-9-]+)` \| (?:bool|int|float|string) \|"
    documented = re.findall(row, render_markdown(), flags=re.M)
    assert sorted(documented) == sorted(table["app"]["config"])


def test_allowed_values_read_like_intervals():
    assert allowed(Key("k", 5, "training", "h.", low=1, high=10_000)) == "[1, 10000]"
    eta = Key("k", 0.1, "strategy", "h.", low=0.0, high=10.0, low_open=True)
    assert allowed(eta) == "(0, 10]"
    assert allowed(Key("k", 1.0, "privacy", "h.", low=0.0, low_open=True)) == "> 0"
    assert allowed(Key("k", 0.0, "privacy", "h.", low=0.0)) == ">= 0"
    assert allowed(Key("k", 2.0, "privacy", "h.", high=1e6)) == "<= 1e6"
    assert allowed(Key("k", "a", "data", "h.", choices=("a", "b"))) == "`a`, `b`"
    assert allowed(Key("k", False, "outputs", "h.")) == "`true`, `false`"
