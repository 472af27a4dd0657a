"""Named run-config presets: the TOML files of ``app/config/presets/``.

A preset is one flat ``key = value`` TOML file of run-config keys, the format
``flwr run . --run-config app/config/presets/<name>.toml`` accepts, with a header
comment saying its version, how it was chosen and any rule behind its values.
:meth:`app.config.RunConfig.from_run_config` applies it (see
:func:`app.config.run_config.apply_preset`): the preset's value fills each key
left at its declared default; a key given any other value keeps it. The folder
ships inside the Flower app bundle (FABs include ``**/*.toml``), so a deployed
app resolves presets as a local run does.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).with_name("presets")
AUTO, NONE = "auto", "none"
# ``preset = "auto"``: the preset of the run's task (a task not listed has none).
TASK_PRESETS: dict[str, str] = {
    "imaging": "imaging-2d",
    "tabular": "tabular",
    "recommendation": "recommendation",
}


def preset_names() -> tuple[str, ...]:
    """The shipped presets: the stems of ``app/config/presets/*.toml``, sorted."""
    return tuple(sorted(path.stem for path in PRESETS_DIR.glob("*.toml")))


def preset_path(name: str) -> Path:
    """The file of preset ``name``."""
    return PRESETS_DIR / f"{name}.toml"


def chosen_preset(preset: str, task: str) -> str:
    """The preset a run uses: ``preset`` itself, the task's for ``auto``, or none."""
    if preset == AUTO:
        return TASK_PRESETS.get(task, NONE)
    return preset


def read_preset(name: str) -> dict[str, Any]:
    """The key -> value mapping of preset ``name`` as written in its file."""
    with preset_path(name).open("rb") as file:
        return tomllib.load(file)
