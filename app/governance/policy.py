"""The site policy: a hospital's ``policy.toml`` read once into a frozen record.

Every key is optional; an absent key is a rule the hospital does not impose. An
unknown key or a value of the wrong type is a :class:`PolicyError` naming the file
and the key, so a typo never silently switches a rule off.

Example::

    tasks = ["tabular"]
    datasets = ["heart-disease", "csv"]
    models = ["logreg", "mlp"]
    dp = "local"
    max-epsilon = 3.0          # per run
    lifetime-epsilon = 10.0    # over every run at this site
    secure-aggregation = true
    min-records = 20
    max-rounds = 50
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import RunConfig
from app.config.run_config import VERTICAL_MODEL

POLICY_KEY = "policy"  # node config: the path of the site's policy.toml
DP_MODES = ("none", "local", "central")
LEDGER_SUFFIX = ".epsilon-ledger.json"


class PolicyError(ValueError):
    """The policy file is unreadable or holds an unknown key or a bad value."""


@dataclass(frozen=True)
class SitePolicy:
    """What a hospital allows; ``None`` = no rule of that kind.

    Attributes
    ----------
    path
        The file the policy was read from.
    tasks, datasets, models
        The allowed run-config ``task`` values, datasets and model names.
    dp
        The ``dp`` mode every run must use.
    max_epsilon
        The most epsilon one run may plan to spend here.
    lifetime_epsilon
        The most epsilon all runs together may spend here (needs ``dp='local'``).
    epsilon_ledger
        Where the site's spent epsilon is kept (beside the policy by default).
    secure_aggregation
        ``True``: every run must use secure aggregation.
    min_records
        No aggregate resting on fewer records leaves the hospital.
    max_rounds
        The most rounds a run may have.
    """

    path: Path
    tasks: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    dp: str | None = None
    max_epsilon: float | None = None
    lifetime_epsilon: float | None = None
    epsilon_ledger: Path | None = None
    secure_aggregation: bool | None = None
    min_records: int | None = None
    max_rounds: int | None = None


def _names(allowed: tuple[str, ...]) -> Callable[[str, Any], tuple[str, ...]]:
    def parse(key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PolicyError(f"'{key}' must be a list of names, got {value!r}")
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise PolicyError(
                f"'{key}' names unknown {unknown}; known: {', '.join(allowed)}"
            )
        return tuple(value)

    return parse


def _positive(kind: type) -> Callable[[str, Any], Any]:
    def parse(key: str, value: Any) -> Any:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)):
            raise PolicyError(f"'{key}' must be {_KIND[kind]}, got {value!r}")
        if not (value > 0 and math.isfinite(value)):
            raise PolicyError(f"'{key}' must be > 0 and finite, got {value!r}")
        return kind(value)

    return parse


_KIND = {int: "an integer", float: "a number"}


def _dp(key: str, value: Any) -> str:
    if value not in DP_MODES:
        modes = ", ".join(DP_MODES)
        raise PolicyError(f"'{key}' must be one of {modes}, got {value!r}")
    return str(value)


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"'{key}' must be true or false, got {value!r}")
    return value


def _path(key: str, value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"'{key}' must be a file path, got {value!r}")
    return Path(value).expanduser()


def _model_names() -> tuple[str, ...]:
    models = RunConfig.keys()["model"].choices or ()
    return (*(m for m in models if m != "auto"), VERTICAL_MODEL)


# TOML key -> (SitePolicy field, parser). Adding a rule's setting = one line here.
FIELDS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "tasks": ("tasks", _names(RunConfig.keys()["task"].choices or ())),
    "datasets": ("datasets", _names(RunConfig.keys()["dataset"].choices or ())),
    "models": ("models", _names(_model_names())),
    "dp": ("dp", _dp),
    "max-epsilon": ("max_epsilon", _positive(float)),
    "lifetime-epsilon": ("lifetime_epsilon", _positive(float)),
    "epsilon-ledger": ("epsilon_ledger", _path),
    "secure-aggregation": ("secure_aggregation", _flag),
    "min-records": ("min_records", _positive(int)),
    "max-rounds": ("max_rounds", _positive(int)),
}


def parse_policy(data: Mapping[str, Any], path: Path) -> SitePolicy:
    """Build the policy from the parsed TOML ``data`` of ``path``."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise PolicyError(
            f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}"
        )
    values: dict[str, Any] = {}
    for key, value in data.items():
        attr, parse = FIELDS[key]
        try:
            values[attr] = parse(key, value)
        except PolicyError as err:
            raise PolicyError(f"{path}: {err}") from None
    ledger = values.get("epsilon_ledger")
    if ledger is not None and not ledger.is_absolute():
        values["epsilon_ledger"] = path.parent / ledger
    if values.get("lifetime_epsilon") is not None and ledger is None:
        values["epsilon_ledger"] = path.with_name(path.stem + LEDGER_SUFFIX)
    if ledger is not None and values.get("lifetime_epsilon") is None:
        raise PolicyError(f"{path}: 'epsilon-ledger' needs 'lifetime-epsilon'")
    return SitePolicy(path=path, **values)


def load_policy(path: str | Path) -> SitePolicy:
    """Read and check ``policy.toml``; errors name the file and the key."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise PolicyError(f"{path}: cannot read the site policy ({err})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise PolicyError(f"{path}: not valid TOML ({err})") from None
    return parse_policy(data, path)
