"""``--run-config`` text, read as ``flwr run`` reads it and checked before a run.

``flwr run`` starts a run whatever its run config holds: a bad value is refused
only by the ServerApp, after the SuperLink, the simulation and Ray have started,
with a traceback. The ``medflower`` commands that submit runs read the text the
same way here, check it with the ServerApp's own :class:`~app.config.RunConfig`,
then hand ``flwr run`` the values back as text.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import RunConfig

# How ``flwr run`` finds the key=value pairs of ``--run-config`` (Flower's own
# pattern); anything else in the text it skips without a word.
PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")


def read_run_config(text: str) -> dict[str, Any]:
    """``--run-config`` text (``"k=v k2='s'"`` or a TOML file's path) as values.

    Raises
    ------
    ValueError
        Text ``flwr run`` cannot read, or would partly ignore, naming it.
    """
    from flwr.common.config import parse_config_args

    text = text.strip()
    try:
        values = parse_config_args([text] if text else None)
    except Exception as err:  # click's error for bad syntax, OSError for a file
        raise ValueError(f"--run-config {text!r}: {err}") from None
    if not text.endswith(".toml") and (stray := PAIR.sub(" ", text).split()):
        raise ValueError(
            f"--run-config {text!r}: not key=value: {' '.join(stray)} (flwr run "
            "would ignore it)"
        )
    return values


def is_medflower(app_dir: Path) -> bool:
    """Tell whether the Flower app in ``app_dir`` is medflower (a checkout or a
    copy of it), whose run config :func:`check_run_config` knows; the commands
    also run other apps (the benchmarks' bare Flower apps).
    """
    try:
        with (app_dir / "pyproject.toml").open("rb") as file:
            return tomllib.load(file).get("project", {}).get("name") == "medflower"
    except (OSError, tomllib.TOMLDecodeError):
        return False


def check_run_config(values: Mapping[str, Any]) -> RunConfig:
    """The run config medflower's ServerApp will read; refuses what it would
    refuse (``ConfigError``, naming the key).
    """
    from app.config import RunConfig

    return RunConfig.from_run_config(values)


def flower_run_config(values: Mapping[str, Any]) -> str:
    """``values`` as ``flwr run --run-config`` text (``"k=v k2='text'"``)."""
    return " ".join(f"{key}={_toml_value(key, v)}" for key, v in values.items())


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text and "\\" not in text:
        return f'"{text}"'
    raise ValueError(f"run-config '{key}' holds both quote characters: {text!r}")
