"""RunConfig: ``[tool.flwr.app.config]`` parsed once into a frozen dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.config import checks
from app.config.keys import ConfigError, Key, RunConfigKeys, declared_keys
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
        kwargs = {known[k].attr: known[k].parse(v) for k, v in run_config.items()}
        return cls(**kwargs)

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
