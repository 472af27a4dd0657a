"""RunConfig: ``[tool.flwr.app.config]`` parsed once into a frozen dataclass."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.config import checks
from app.config.keys import ConfigError, Key, RunConfigKeys, declared_keys
from app.config.preset import NONE, chosen_preset, read_preset
from data.spec import DataSpec
from models import default_model

# Vertical runs build app/vertical/split.py's bottom and top networks,
# not a MODELS entry.
VERTICAL_MODEL = "split-nn"


@dataclass(frozen=True)
class RunConfig(RunConfigKeys):
    """Validated run configuration shared by the ServerApp, ClientApp and scripts.

    Its fields are the keys declared in :class:`app.config.keys.RunConfigKeys`;
    construction checks each value against its declaration, then the rules that
    tie keys together (:mod:`app.config.checks`), so a bad setting stops the run
    before training with a message naming the key.
    """

    def __post_init__(self) -> None:
        for decl in _KEYS.values():
            decl.check(getattr(self, decl.attr))
        checks.check_run(self)

    @property
    def dp_budget(self) -> float:
        """The epsilon a hospital may not exceed (inf when none is set)."""
        return self.dp_epsilon_budget or self.dp_target_epsilon or float("inf")

    @property
    def stats_epsilon(self) -> float:
        """Epsilon each hospital spends on its cohort statistics (0: none)."""
        return self.dp_stats_epsilon if self.normalisation == "dp-global" else 0.0

    @property
    def dp_sgd_target_epsilon(self) -> float:
        """The part of ``dp-target-epsilon`` left for DP-SGD after the statistics."""
        return self.dp_target_epsilon - self.stats_epsilon

    @property
    def model_name(self) -> str:
        """The network to build: ``model``, or the task's default for ``'auto'``."""
        if self.task == "vertical":
            return VERTICAL_MODEL
        return default_model(self.task) if self.model == "auto" else self.model

    @property
    def evaluation_interval(self) -> int:
        """Rounds between evaluations (``evaluate-every``; 0: about 10 per run)."""
        if self.evaluate_every:
            return self.evaluate_every
        return max(1, math.ceil(self.num_server_rounds / 10))

    @classmethod
    def keys(cls) -> dict[str, Key]:
        """Map each run-config key to its declaration."""
        return dict(_KEYS)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Parse ``context.run_config``; bad keys or values raise ConfigError."""
        known = _KEYS
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise ConfigError(
                f"Unknown run-config key(s): {', '.join(unknown)}. "
                f"Known keys: {', '.join(sorted(known))}."
            )
        given = {k: known[k].parse(v) for k, v in run_config.items()}
        name, values, filled = apply_preset(given)
        try:
            return cls(**{known[k].attr: v for k, v in values.items()}, preset=name)
        except ConfigError as err:
            if not filled:
                raise
            raise ConfigError(
                f"{err} (preset '{name}' set {', '.join(filled)}; preset='none' "
                "runs without it)"
            ) from None

    @classmethod
    def from_saved(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Parse a run config a run saved (``run_config.json``, a model file).

        Its values are read as saved, the preset it names is not applied again
        (one saved before presets existed, or built without parsing, would
        otherwise be completed from today's preset); the name is kept when it is
        still a shipped preset.
        """
        cfg = cls.from_run_config({**run_config, "preset": NONE})
        name = run_config.get("preset", NONE)
        return cfg.replace(preset=name) if name in _KEYS["preset"].choices else cfg

    def to_run_config(self) -> dict[str, Any]:
        """Return the kebab-case mapping (as written to ``run_config.json``)."""
        return {name: getattr(self, decl.attr) for name, decl in _KEYS.items()}

    def replace(self, **changes: Any) -> RunConfig:
        """Return a validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def data_spec(self) -> DataSpec:
        """The data-related subset of the configuration."""
        return DataSpec(
            dataset=self.dataset,
            data_path=self.data_path,
            label_column=self.label_column,
            feature_columns=tuple(
                c.strip() for c in self.feature_columns.split(",") if c.strip()
            ),
            num_classes=self.num_classes,
            partitioner=self.partitioner,
            dirichlet_alpha=self.dirichlet_alpha,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
            image_size=self.image_size,
            augment=self.augment,
            class_names=tuple(
                n.strip() for n in self.class_names.split(",") if n.strip()
            ),
            rec_matrix=self.rec_matrix,
            site_by=self.site_by,
            item_catalogue=self.item_catalogue,
            feedback=self.feedback,
        )


_KEYS = declared_keys(RunConfigKeys)


def preset_values(name: str) -> dict[str, Any]:
    """Preset ``name``'s values, each checked as its key's declaration checks it.

    A key the preset names must be declared. The file names itself
    (``preset = "<name>"``), so that ``flwr run --run-config <file>`` selects this
    preset rather than the task's; that line is not one of its values.
    """
    values = read_preset(name)
    where = f"preset '{name}' (app/config/presets/{name}.toml)"
    if values.pop("preset", name) != name:
        raise ConfigError(f"{where}: its 'preset' line must name the file itself.")
    for key, value in values.items():
        if key not in _KEYS:
            raise ConfigError(f"{where}: '{key}' is not a key a preset may set.")
        try:
            values[key] = _KEYS[key].parse(value)
            _KEYS[key].check(values[key])
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    return values


def apply_preset(
    given: Mapping[str, Any],
) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """Fill the keys of ``given`` left at their default from the run's preset.

    The rule, the same in the ServerApp, every ClientApp and the scripts: a key
    whose value equals its declared default (``[tool.flwr.app.config]``, or left
    out) takes the preset's value; any other value is the user's and wins. So a
    key set on purpose to its default is indistinguishable from one left alone:
    ``preset='none'`` restores every default. ``preset = "auto"`` picks the
    preset of the task (given, else the default task). Returns the preset used
    (``none`` when none), the resolved values and the keys the preset changed.
    """
    preset_key = _KEYS["preset"]
    requested = given.get("preset", preset_key.default)
    preset_key.check(requested)  # an unknown name is refused, naming the key
    name = chosen_preset(requested, given.get("task", _KEYS["task"].default))
    values = {k: v for k, v in given.items() if k != "preset"}
    if name == NONE:
        return name, values, ()
    filled = []
    for key, value in preset_values(name).items():
        if values.get(key, _KEYS[key].default) == _KEYS[key].default != value:
            values[key] = value
            filled.append(key)
    return name, values, tuple(filled)
