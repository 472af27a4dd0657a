"""Render ``docs/configuration.md`` from the key declarations and the registries.

Regenerate after adding or changing a key, strategy, model or dataset::

    python -m app.config.docs > docs/configuration.md

``tests/unit/test_config_docs.py`` fails while the file on disk differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from app.config.keys import GROUPS, Key
from app.config.run_config import RunConfig
from data.preprocessing import NORMALISATIONS
from data.registry import DATASETS
from models import MODELS
from strategies import STRATEGIES

COMMAND = "python -m app.config.docs > docs/configuration.md"

INTRO = f"""\
# Run configuration

<!-- Generated from app/config/keys.py by `{COMMAND}`; do not edit. -->

Keys of `[tool.flwr.app.config]` in `pyproject.toml`, overridden with
`flwr run . --run-config "key=value key2='text'"` or
`make demo RUN_CONFIG="..."`. They are parsed once into a frozen dataclass
(`app.config.RunConfig`): an unknown key, a value of the wrong type or outside
"allowed", or a combination of keys that would not mean what it says
(`app/config/checks.py`) stops the run before training with a message naming the
key. A float key also takes an integer (`learning-rate=1`).
"""

TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "string"}


def toml_value(value: Any) -> str:
    """``value`` as written in ``pyproject.toml``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _number(value: float, kind: type) -> str:
    if kind is int:
        return str(int(value))
    return f"{value:g}".replace("e+0", "e").replace("e+", "e")  # 1e+06 -> 1e6


def allowed(decl: Key) -> str:
    """The values ``decl`` accepts, e.g. ``[1, 10000]``, ``> 0`` or a list."""
    if decl.choices is not None:
        return ", ".join(f"`{choice}`" for choice in decl.choices)
    if decl.type is bool:
        return "`true`, `false`"
    if decl.type is str:
        return "any text"
    low = None if decl.low is None else _number(decl.low, decl.type)
    high = None if decl.high is None else _number(decl.high, decl.type)
    if low is not None and high is not None:
        return f"{'(' if decl.low_open else '['}{low}, {high}]"
    if low is not None:
        return f"{'>' if decl.low_open else '>='} {low}"
    return "any number" if high is None else f"<= {high}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table (``|`` in a cell is escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return lines


def key_sections() -> list[str]:
    """One section per group: key, type, default, allowed values, meaning."""
    keys = RunConfig.keys().values()
    lines: list[str] = []
    for group in GROUPS:
        rows = [
            (
                f"`{k.name}`",
                TYPE_NAMES[k.type],
                f"`{toml_value(k.default)}`",
                allowed(k),
                k.help,
            )
            for k in keys
            if k.group == group
        ]
        header = ("key", "type", "default", "allowed", "meaning")
        lines += ["", f"## {group.capitalize()}", "", *table(header, rows)]
    return lines


def _keys_of(fields: Iterable[str]) -> str:
    return ", ".join(f"`{f.replace('_', '-')}`" for f in fields) or "-"


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"


def registry_sections() -> list[str]:
    """The names ``strategy``, ``model``, ``dataset`` and ``normalisation`` take."""
    mean = "weighted mean (secure aggregation, central DP)"
    strategies = table(
        ("strategy", "its keys", "robust", mean),
        (
            (f"`{n}`", _keys_of(r.options), _yes(r.robust), _yes(r.weighted_mean))
            for n, r in STRATEGIES.items()
        ),
    )
    models = table(
        ("model", "task", "default of its task", "its keys"),
        (
            (f"`{n}`", r.task, _yes(r.default), _keys_of(r.options.values()))
            for n, r in MODELS.items()
        ),
    )
    datasets = table(
        ("dataset", "task"), ((f"`{n}`", r.task) for n, r in DATASETS.items())
    )
    normalisations = table(
        ("normalisation", "one global transform (server side)"),
        ((f"`{n}`", f"`{how}`" if how else "-") for n, how in NORMALISATIONS.items()),
    )
    return [
        "",
        "## Registered names",
        "",
        "### Strategies (`strategy`)",
        "",
        *strategies,
        "",
        "### Models (`model`)",
        "",
        *models,
        "",
        "### Datasets (`dataset`)",
        "",
        *datasets,
        "",
        "### Normalisations (`normalisation`)",
        "",
        *normalisations,
    ]


def render_markdown() -> str:
    """The whole text of ``docs/configuration.md``."""
    return INTRO + "\n".join([*key_sections(), *registry_sections()]) + "\n"


def main() -> None:
    print(render_markdown(), end="")


if __name__ == "__main__":
    main()
