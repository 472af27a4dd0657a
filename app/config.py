"""Run configuration: ``[tool.flwr.app.config]`` parsed once into a frozen dataclass."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from data.preprocessing import GLOBAL_NORMALISATIONS, NORMALISATIONS
from data.registry import DATASET_TASKS, DATASETS, TASKS
from data.spec import DataSpec
from models import DEFAULT_MODELS, MODEL_TASKS, MODELS

# Kept here (not imported from ``strategies``) so the config has no torch/Flower
# strategy import; tests check it equals ``strategies.STRATEGIES``.
STRATEGY_NAMES = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
)


# Vertical runs build app/vertical/split.py's bottom and top networks,
# not a MODELS entry.
VERTICAL_MODEL = "split-nn"


class ConfigError(ValueError):
    """A run-config key is unknown, of the wrong type or out of range."""


def _opt(
    default: Any,
    key: str,
    *,
    choices: tuple[str, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    help: str = "",  # noqa: A002 - mirrors argparse
) -> Any:
    """Declare one run-config key with its validation rule."""
    meta = {
        "key": key,
        "choices": choices,
        "low": low,
        "high": high,
        "low_open": low_open,
        "help": help,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    """Validated run configuration shared by the ServerApp, ClientApp and scripts.

    Every field maps to one kebab-case key of ``[tool.flwr.app.config]``; the field
    metadata carries its validation rule, so the README table, the parser and the
    tests use one source of truth.
    """

    num_server_rounds: int = _opt(5, "num-server-rounds", low=1, high=10_000)
    task: str = _opt("tabular", "task", choices=(*TASKS, "vertical"))
    dataset: str = _opt("wdbc", "dataset", choices=tuple(DATASETS))
    data_path: str = _opt("", "data-path")
    label_column: str = _opt("target", "label-column")
    feature_columns: str = _opt("", "feature-columns")
    num_classes: int = _opt(0, "num-classes", low=0, high=100_000)
    partitioner: str = _opt("iid", "partitioner", choices=("iid", "dirichlet"))
    dirichlet_alpha: float = _opt(0.5, "dirichlet-alpha", low=0.0, low_open=True)
    val_fraction: float = _opt(0.2, "val-fraction", low=0.05, high=0.5)
    test_fraction: float = _opt(0.2, "test-fraction", low=0.05, high=0.5)
    image_size: int = _opt(0, "image-size", low=0, high=1024)
    augment: bool = _opt(True, "augment")
    class_names: str = _opt("", "class-names")
    model: str = _opt("auto", "model", choices=("auto", *MODELS))
    mlp_hidden: int = _opt(64, "mlp-hidden", low=1, high=4096)
    mlp_layers: int = _opt(2, "mlp-layers", low=1, high=8)
    strategy: str = _opt("fedavg", "strategy", choices=STRATEGY_NAMES)
    proximal_mu: float = _opt(0.0, "proximal-mu", low=0.0, high=100.0)
    eta: float = _opt(0.1, "eta", low=0.0, high=10.0, low_open=True)
    beta_1: float = _opt(0.9, "beta-1", low=0.0, high=0.999)
    beta_2: float = _opt(0.99, "beta-2", low=0.0, high=0.9999)
    tau: float = _opt(1e-3, "tau", low=0.0, high=10.0, low_open=True)
    trim_beta: float = _opt(0.2, "trim-beta", low=0.0, high=0.49)
    num_malicious: int = _opt(0, "num-malicious", low=0, high=100_000)
    num_to_keep: int = _opt(0, "num-to-keep", low=0, high=100_000)
    local_epochs: int = _opt(1, "local-epochs", low=1, high=1000)
    local_steps: int = _opt(0, "local-steps", low=0, high=1_000_000)
    batch_size: int = _opt(32, "batch-size", low=1, high=65_536)
    learning_rate: float = _opt(
        0.05, "learning-rate", low=0.0, high=10.0, low_open=True
    )
    optimizer: str = _opt("sgd", "optimizer", choices=("sgd", "adam"))
    lr_schedule: str = _opt("constant", "lr-schedule", choices=("constant", "cosine"))
    select_best: str = _opt("none", "select-best", choices=("none", "auc", "loss"))
    model_ema: float = _opt(0.0, "model-ema", low=0.0, high=0.9999)
    tta: str = _opt("none", "tta", choices=("none", "flip"))
    momentum: float = _opt(0.9, "momentum", low=0.0, high=0.999)
    weight_decay: float = _opt(0.0, "weight-decay", low=0.0, high=1.0)
    label_smoothing: float = _opt(0.0, "label-smoothing", low=0.0, high=0.99)
    fraction_train: float = _opt(
        1.0, "fraction-train", low=0.0, high=1.0, low_open=True
    )
    fraction_evaluate: float = _opt(1.0, "fraction-evaluate", low=0.0, high=1.0)
    min_hospitals: int = _opt(2, "min-hospitals", low=1, high=100_000)
    round_timeout: float = _opt(3600.0, "round-timeout", low=0.0, low_open=True)
    wait_for_hospitals: float = _opt(600.0, "wait-for-hospitals", low=0.0)
    checkpoint_keep: int = _opt(3, "checkpoint-keep", low=1, high=10_000)
    resume_from: str = _opt("", "resume-from")
    deterministic: bool = _opt(False, "deterministic")
    poison_fraction: float = _opt(0.0, "poison-fraction", low=0.0, high=0.99)
    poison_scale: float = _opt(10.0, "poison-scale", low=0.0, high=1e6, low_open=True)
    server_eval: bool = _opt(True, "server-eval")
    seed: int = _opt(42, "seed", low=0, high=2**31 - 1)
    device: str = _opt("auto", "device", choices=("auto", "cpu", "cuda"))
    torch_threads: int = _opt(1, "torch-threads", low=0, high=256)
    output_dir: str = _opt("outputs", "output-dir")
    run_name: str = _opt("", "run-name")
    # Vertical FL (task = "vertical"): see docs/vertical.md.
    id_column: str = _opt("patient_id", "id-column")
    vertical_overlap: float = _opt(0.8, "vertical-overlap", low=0.0, high=1.0)
    vertical_embedding: int = _opt(8, "vertical-embedding", low=1, high=4096)
    # Transfer and personalization: see docs/vertical.md.
    init_model: str = _opt("", "init-model")
    personalize_epochs: int = _opt(0, "personalize-epochs", low=0, high=1000)
    local_norm: bool = _opt(False, "local-norm")
    # Secure aggregation (docs/secure-aggregation.md); 0 = derived from the round size.
    secure_aggregation: bool = _opt(False, "secure-aggregation")
    aggregation_encryption: str = _opt(
        "masking", "aggregation-encryption", choices=("masking", "ckks")
    )
    secagg_num_shares: int = _opt(0, "secagg-num-shares", low=0, high=100_000)
    secagg_reconstruction_threshold: int = _opt(
        0, "secagg-reconstruction-threshold", low=0, high=100_000
    )
    secagg_clipping_range: float = _opt(
        2.0, "secagg-clipping-range", low=0.0, high=1e6, low_open=True
    )
    secagg_quantization_range: int = _opt(
        2**30, "secagg-quantization-range", low=2**8, high=2**30
    )
    secagg_max_weight: float = _opt(
        100_000.0, "secagg-max-weight", low=0.0, high=1e12, low_open=True
    )
    # Differential privacy (README "Differential privacy").
    dp: str = _opt("none", "dp", choices=("none", "local", "central"))
    dp_noise_multiplier: float = _opt(0.0, "dp-noise-multiplier", low=0.0, high=1000.0)
    dp_target_epsilon: float = _opt(0.0, "dp-target-epsilon", low=0.0, high=1000.0)
    dp_epsilon_budget: float = _opt(0.0, "dp-epsilon-budget", low=0.0, high=1000.0)
    dp_delta: float = _opt(1e-5, "dp-delta", low=0.0, high=0.1, low_open=True)
    dp_max_grad_norm: float = _opt(1.0, "dp-max-grad-norm", low=0.0, low_open=True)
    dp_update_clip_norm: float = _opt(
        1.0, "dp-update-clip-norm", low=0.0, low_open=True
    )
    dp_accountant: str = _opt("prv", "dp-accountant", choices=("prv", "rdp"))
    dp_secure_rng: bool = _opt(False, "dp-secure-rng")
    dp_grad_sampler: str = _opt(
        "layers", "dp-grad-sampler", choices=("layers", "opacus")
    )
    # Feature standardisation: each site's own statistics, global statistics
    # combined from the hospitals' Laplace-noised cohort sums
    # (app/privacy/cohort_stats.py),
    # or the dataset's public a-priori bounds (no data statistics at all).
    normalisation: str = _opt("per-site", "normalisation", choices=NORMALISATIONS)
    dp_stats_epsilon: float = _opt(0.0, "dp-stats-epsilon", low=0.0, high=1000.0)
    report: bool = _opt(True, "report")
    tensorboard: bool = _opt(False, "tensorboard")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        self._check_task()
        if getattr(DATASETS[self.dataset], "needs_path", False) and not self.data_path:
            # In deployment each hospital names its own data (node config) and the
            # coordinator may hold none: server-eval=false, and the model's shape
            # must then be known without data (see FederatedDataset.shape_known).
            if self.server_eval:
                raise ConfigError(
                    f"dataset='{self.dataset}' needs 'data-path' (a directory of "
                    "hospital files for heart-disease, a CSV file for csv, an .npz "
                    "file for medmnist, a class-per-folder directory for "
                    "image-folder), unless server-eval=false in a deployment where "
                    "each hospital names its own data."
                )
            if not DATASETS[self.dataset].shape_known(self.data_spec()):
                raise ConfigError(
                    f"dataset='{self.dataset}' without a coordinator 'data-path': "
                    "the server cannot know the model's input shape. "
                    + DATASETS[self.dataset].shape_hint
                )
        if self.num_classes == 1:
            raise ConfigError(
                "'num-classes' must be 0 (infer from data) or >= 2, got 1."
            )
        if self.tta != "none" and self.task != "imaging":
            raise ConfigError(
                f"tta='{self.tta}' flips images; it applies to task='imaging' only."
            )
        if self.select_best != "none" and self.fraction_evaluate == 0.0:
            raise ConfigError(
                f"select-best='{self.select_best}' chooses the round by the "
                "hospitals' evaluation, but 'fraction-evaluate' = 0 asks none to "
                "evaluate."
            )
        if self.strategy == "fedprox" and self.proximal_mu <= 0.0:
            raise ConfigError(
                "strategy='fedprox' needs 'proximal-mu' > 0 (got "
                f"{self.proximal_mu}); use strategy='fedavg' for mu = 0."
            )
        if self.secure_aggregation:
            _check_secure_aggregation(self)
        elif self.aggregation_encryption != "masking":
            raise ConfigError(
                f"aggregation-encryption='{self.aggregation_encryption}' needs "
                "'secure-aggregation' = true."
            )
        if any(c in self.run_name for c in "/\\") or self.run_name in (".", ".."):
            raise ConfigError(
                f"'run-name' must be a plain name, got {self.run_name!r}."
            )
        self._check_privacy()
        self._check_normalisation()

    def _check_normalisation(self) -> None:
        """Refuse a global normalisation the task or dataset cannot support, and a
        ``dp-global`` run that could not keep its privacy promise.
        """
        if self.normalisation != "dp-global" and self.dp_stats_epsilon:
            raise ConfigError(
                f"'dp-stats-epsilon' = {self.dp_stats_epsilon} has no effect with "
                f"normalisation='{self.normalisation}'; set "
                "normalisation='dp-global' or leave it unset."
            )
        if self.normalisation not in GLOBAL_NORMALISATIONS:
            return
        mode = f"normalisation='{self.normalisation}'"
        if self.task != "tabular":
            raise ConfigError(
                f"{mode} standardises tabular features; "
                f"'task' = {self.task!r} is not supported."
            )
        if DATASETS[self.dataset].feature_bounds is None:
            raise ConfigError(
                f"{mode} needs public a-priori feature bounds, "
                f"and dataset='{self.dataset}' declares none (bounds taken from the "
                "data would leak it); use normalisation='per-site'."
            )
        if self.normalisation != "dp-global":
            return
        if self.dp_stats_epsilon <= 0:
            raise ConfigError(
                "normalisation='dp-global' needs 'dp-stats-epsilon' > 0 (the "
                "epsilon each hospital spends on releasing its cohort statistics)."
            )
        if self.dp == "central":
            raise ConfigError(
                "normalisation='dp-global' cannot be combined with dp='central': the "
                "statistics release is record-level per hospital and would not be "
                "covered by the hospital-level central epsilon."
            )
        if self.resume_from:
            raise ConfigError(
                "'resume-from' is not supported with normalisation='dp-global': the "
                "resumed run's hospitals would release (and pay for) their "
                "statistics again."
            )
        if self.dp == "local" and self.dp_target_epsilon:
            if self.dp_target_epsilon <= self.dp_stats_epsilon:
                raise ConfigError(
                    f"'dp-target-epsilon' = {self.dp_target_epsilon} must exceed "
                    f"'dp-stats-epsilon' = {self.dp_stats_epsilon}: the target covers "
                    "the statistics release and DP-SGD together."
                )
        if self.dp == "local" and self.dp_budget <= self.dp_stats_epsilon:
            raise ConfigError(
                f"'dp-epsilon-budget' = {self.dp_budget} leaves nothing for DP-SGD "
                f"after 'dp-stats-epsilon' = {self.dp_stats_epsilon}."
            )

    def _check_privacy(self) -> None:
        """Reject DP settings that would silently not mean what they say."""
        if self.dp != "local" and self.dp_grad_sampler != "layers":
            raise ConfigError(
                f"'dp-grad-sampler' = {self.dp_grad_sampler!r} only applies to "
                f"dp='local' (per-sample gradients in DP-SGD); dp='{self.dp}'."
            )
        if self.dp == "none":
            for key, value in (
                ("dp-noise-multiplier", self.dp_noise_multiplier),
                ("dp-target-epsilon", self.dp_target_epsilon),
                ("dp-epsilon-budget", self.dp_epsilon_budget),
                ("dp-secure-rng", self.dp_secure_rng),
            ):
                if value:
                    raise ConfigError(
                        f"'{key}' = {value!r} has no effect with dp='none'; set "
                        "dp='local' or dp='central', or leave it unset."
                    )
            return
        if (self.dp_noise_multiplier > 0) == (self.dp_target_epsilon > 0):
            raise ConfigError(
                f"dp='{self.dp}' needs exactly one of 'dp-noise-multiplier' > 0 or "
                "'dp-target-epsilon' > 0 (got "
                f"{self.dp_noise_multiplier} and {self.dp_target_epsilon})."
            )
        if self.dp_epsilon_budget and self.dp_target_epsilon > self.dp_epsilon_budget:
            raise ConfigError(
                f"'dp-target-epsilon' = {self.dp_target_epsilon} exceeds "
                f"'dp-epsilon-budget' = {self.dp_epsilon_budget}: the planned run "
                "would be refused before its last round."
            )
        if self.dp == "local" and self.local_steps:
            raise ConfigError(
                f"'local-steps' = {self.local_steps} is not supported with "
                "dp='local': the privacy accountant counts whole local epochs; use "
                "'local-epochs'."
            )
        if self.dp == "local" and self.proximal_mu > 0:
            raise ConfigError(
                f"'proximal-mu' = {self.proximal_mu} is not supported with dp='local': "
                "Opacus clips per-sample gradients of the data loss only, so the "
                "proximal term would be silently dropped. Use strategy='fedavg'."
            )
        if (
            self.dp == "local"
            and self.dp_secure_rng
            and importlib.util.find_spec("torchcsprng") is None
        ):
            raise ConfigError(
                "'dp-secure-rng' = true with dp='local' needs the torchcsprng package "
                "(Opacus' secure mode), which is not installed."
            )
        if self.dp == "local" and self.resume_from:
            raise ConfigError(
                "'resume-from' is not supported with dp='local': a resumed run is a "
                "new Flower run whose hospitals start with an empty context.state, so "
                "their privacy accountants would restart and under-report epsilon."
            )
        if self.dp == "central" and self.strategy not in ("fedavg", "fedprox"):
            raise ConfigError(
                f"dp='central' replaces the aggregation by a clipped, noised mean; "
                f"'strategy' = {self.strategy!r} would silently lose its own rule. "
                "Use strategy='fedavg' or 'fedprox'."
            )
        for key, active, why in (
            (
                "secure-aggregation",
                self.secure_aggregation,
                "DP accounting with secure aggregation is not implemented yet (central "
                "DP needs each hospital's update; local DP's per-hospital epsilon "
                "reporting is untested under SecAgg+)",
            ),
            (
                "personalize-epochs",
                self.personalize_epochs > 0,
                "fine-tuning on training records at evaluation is not DP-SGD, so the "
                "metrics it releases would fall outside the guarantee",
            ),
            (
                "task",
                self.task == "vertical",
                "vertical FL exchanges embeddings and gradients that DP-SGD does not "
                "cover",
            ),
        ):
            if active:
                raise ConfigError(
                    f"'{key}' cannot be combined with dp='{self.dp}': {why}."
                )
        if self.dp == "central" and self.dp_epsilon_budget:
            raise ConfigError(
                "'dp-epsilon-budget' applies to dp='local' (each hospital refuses "
                "rounds past it); for dp='central' set 'dp-target-epsilon'."
            )

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
        return DEFAULT_MODELS[self.task] if self.model == "auto" else self.model

    def _check_task(self) -> None:
        """Refuse a dataset or model meant for another task."""
        if self.task == "vertical":  # feature groups of tabular data, split NN
            if DATASET_TASKS[self.dataset] != "tabular":
                raise ConfigError(
                    f"task='vertical' splits tabular columns; dataset='{self.dataset}' "
                    "is not tabular (use wdbc, heart-disease or csv)."
                )
            split_network = (
                "task='vertical' trains its split network one epoch per round "
                "with plain cross-entropy."
            )
            for key, active, why in (
                ("local-epochs", self.local_epochs != 1, split_network),
                ("local-steps", self.local_steps > 0, split_network),
                ("label-smoothing", self.label_smoothing > 0, split_network),
                (
                    "model-ema",
                    self.model_ema > 0,
                    "task='vertical' has no global model to average (each party "
                    "keeps its own part of the split network).",
                ),
            ):
                if active:
                    raise ConfigError(
                        f"'{key}' applies to horizontal federations; {why}"
                    )
            return
        data_task = DATASET_TASKS[self.dataset]
        if data_task != self.task:
            raise ConfigError(
                f"dataset='{self.dataset}' is {data_task} data but task='{self.task}'; "
                f"set task='{data_task}' or pick a {self.task} dataset."
            )
        if MODEL_TASKS[self.model_name] != self.task:
            fitting = [m for m, t in MODEL_TASKS.items() if t == self.task]
            raise ConfigError(
                f"model='{self.model}' is a {MODEL_TASKS[self.model_name]} model but "
                f"task='{self.task}'; use one of {', '.join(fitting)} (or 'auto')."
            )

    @classmethod
    def keys(cls) -> dict[str, dataclasses.Field[Any]]:
        """Map each run-config key to its dataclass field."""
        return {f.metadata["key"]: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Parse ``context.run_config``; bad keys or values raise ConfigError."""
        known = cls.keys()
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise ConfigError(
                f"Unknown run-config key(s): {', '.join(unknown)}. "
                f"Known keys: {', '.join(sorted(known))}."
            )
        kwargs = {}
        for key, value in run_config.items():
            f = known[key]
            kwargs[f.name] = _coerce(key, value, type(f.default))
        return cls(**kwargs)

    def to_run_config(self) -> dict[str, Any]:
        """Return the kebab-case mapping (as written to ``run_config.json``)."""
        return {
            f.metadata["key"]: getattr(self, f.name) for f in dataclasses.fields(self)
        }

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
        )


def _check_secure_aggregation(cfg: RunConfig) -> None:
    from app.secagg.registry import SECURE_STRATEGIES, params_from_config

    if cfg.task == "vertical":
        raise ConfigError(
            "secure-aggregation applies to horizontal FedAvg/FedProx rounds; "
            "task='vertical' exchanges embeddings, not model updates."
        )
    if cfg.strategy not in SECURE_STRATEGIES:
        raise ConfigError(
            f"secure-aggregation works with strategy = {' or '.join(SECURE_STRATEGIES)}"
            f" (a sum of updates); '{cfg.strategy}' needs each update in the clear."
        )
    if cfg.min_hospitals < 2:
        raise ConfigError(
            "secure-aggregation needs 'min-hospitals' >= 2: the sum of one update is "
            f"that update (got {cfg.min_hospitals})."
        )
    try:
        params_from_config(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _coerce(key: str, value: Any, expected: type) -> Any:
    """Check one value's type; ints are accepted where floats are expected."""
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, got {value!r}.")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be an integer, got {value!r}.")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got {value!r}.")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"'{key}' must be a string, got {value!r}.")
    return value


def _check_field(f: dataclasses.Field[Any], value: Any) -> None:
    meta = f.metadata
    key = meta["key"]
    choices = meta["choices"]
    if choices is not None and value not in choices:
        raise ConfigError(
            f"'{key}' must be one of {', '.join(choices)}; got {value!r}."
        )
    low, high = meta["low"], meta["high"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"'{key}' must be finite, got {value!r}.")
    if low is not None and (value <= low if meta["low_open"] else value < low):
        bound = f"> {low}" if meta["low_open"] else f">= {low}"
        raise ConfigError(f"'{key}' must be {bound}, got {value!r}.")
    if high is not None and value > high:
        raise ConfigError(f"'{key}' must be <= {high}, got {value!r}.")
