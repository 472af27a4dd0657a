"""The run-config keys: one declaration each (type, default, range, help, group).

:class:`app.config.RunConfig`, the check of ``pyproject.toml`` and
``docs/configuration.md`` (:mod:`app.config.docs`) are all derived from these
declarations. Adding a key = one field below (its name is the key in snake case,
its annotation the type) plus its line in ``[tool.flwr.app.config]``; then
regenerate the docs: ``python -m app.config.docs > docs/configuration.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from app.config.preset import AUTO, NONE, TASK_PRESETS, preset_names
from app.personalization import FINETUNE_PARTS
from app.personalization import METHODS as PERSONALIZATION_METHODS
from data.preprocessing import NORMALISATIONS
from data.registry import DATASETS, TASKS
from models import MODELS
from strategies import STRATEGIES
from strategies.encoding import ENCODINGS

# Sections of docs/configuration.md, in order.
GROUPS = (
    "preset",
    "data",
    "model",
    "training",
    "strategy",
    "evaluation",
    "reliability",
    "outputs",
    "privacy",
    "secure aggregation",
    "vertical",
    "recommendation",
    "personalization",
    "test harness",
    "statistics",
)


class ConfigError(ValueError):
    """A run-config key is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Key:
    """The declaration of one run-config key and its validation rule."""

    name: str
    default: Any
    group: str
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    @property
    def type(self) -> type:
        """``bool``, ``int``, ``float`` or ``str``: the type of the default."""
        return type(self.default)

    @property
    def attr(self) -> str:
        """The RunConfig field: the key in snake case."""
        return self.name.replace("-", "_")

    def parse(self, value: Any) -> Any:
        """Check one value's type; ints are accepted where floats are expected."""
        key, expected = self.name, self.type
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

    def check(self, value: Any) -> None:
        """Refuse a value outside the declared choices or range, naming the key."""
        key = self.name
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"'{key}' must be one of {', '.join(self.choices)}; got {value!r}."
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"'{key}' must be finite, got {value!r}.")
        low, high = self.low, self.high
        if low is not None and (value <= low if self.low_open else value < low):
            bound = f"> {low}" if self.low_open else f">= {low}"
            raise ConfigError(f"'{key}' must be {bound}, got {value!r}.")
        if high is not None and value > high:
            raise ConfigError(f"'{key}' must be <= {high}, got {value!r}.")


def key(
    default: Any,
    group: str,
    *,
    help: str,  # noqa: A002 - mirrors argparse
    choices: tuple[str, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> Any:
    """Declare one run-config key as a dataclass field (see :func:`declared_keys`).

    Parameters
    ----------
    default
        The value when the key is not given; its type is the key's type.
    group
        The section of docs/configuration.md, one of ``GROUPS``.
    help
        One sentence saying what the key does.
    choices, low, high, low_open
        The allowed values: a set of names, or the range ``[low, high]`` (``low``
        excluded when ``low_open``; an omitted bound is unbounded).
    """
    if group not in GROUPS:
        raise ValueError(f"unknown run-config group {group!r}; one of {GROUPS}.")
    rule = {"choices": choices, "low": low, "high": high, "low_open": low_open}
    return dataclasses.field(
        default=default, metadata={"group": group, "help": help, **rule}
    )


def declared_keys(cls: type) -> dict[str, Key]:
    """Map each run-config key of the dataclass ``cls`` to its :class:`Key`."""
    return {
        (name := f.name.replace("_", "-")): Key(name, f.default, **f.metadata)
        for f in dataclasses.fields(cls)
    }


@dataclass(frozen=True)
class RunConfigKeys:
    """Every key of ``[tool.flwr.app.config]``: the field ``num_server_rounds`` is
    the key ``num-server-rounds``. :class:`app.config.RunConfig` adds parsing,
    the cross-key checks and derived settings.
    """

    preset: str = key(
        AUTO,
        "preset",
        choices=(AUTO, NONE, *preset_names()),
        help=(
            "A named set of key values (`app/config/presets/<name>.toml`; "
            "docs/imaging.md#presets) filling every key left at its default; a "
            "key given another value keeps it. `auto`: the task's preset ("
            + ", ".join(f"{task} -> `{name}`" for task, name in TASK_PRESETS.items())
            + "); `none`: the defaults below. run_config.json records the preset "
            "used."
        ),
    )
    num_server_rounds: int = key(
        5, "training", low=1, high=10_000, help="Federated rounds."
    )
    task: str = key(
        "tabular",
        "data",
        choices=(*TASKS, "vertical"),
        help=(
            "`tabular`, `imaging` (see docs/imaging.md), `recommendation` "
            "(which drug or test next; docs/recommendation.md) or `vertical` "
            "(split learning over PSI-aligned patients, docs/vertical.md)."
        ),
    )
    dataset: str = key(
        "wdbc",
        "data",
        choices=tuple(DATASETS),
        help=(
            "The data; tabular: `wdbc` (bundled), `heart-disease` (directory of UCI "
            "hospital files), `csv` (one CSV file); imaging: `medmnist` (a MedMNIST "
            "`.npz`), `image-folder` (`root/<class>/<images>`: PNG/JPEG, DICOM, "
            "NIfTI), `synthetic-lesions` (generated, no file); recommendation: "
            "`interactions` (a user-item file, MovieLens format too), `mimic-demo` "
            "(the MIMIC-IV demo folder)."
        ),
    )
    data_path: str = key(
        "",
        "data",
        help=(
            "Data location for `heart-disease` / `csv` / `medmnist` / "
            "`image-folder` / `interactions` / `mimic-demo` (absolute path); "
            "refused with a dataset that reads no file (`wdbc`, `synthetic-lesions`)."
        ),
    )
    label_column: str = key(
        "target", "data", help="Label column of a CSV (class indices 0, 1, ...)."
    )
    feature_columns: str = key(
        "",
        "data",
        help=(
            "`csv`: comma-separated feature columns, in order, every hospital must "
            "have (empty = all but the label); with `num-classes` it lets a "
            "coordinator without data build the model."
        ),
    )
    num_classes: int = key(
        0,
        "data",
        low=0,
        high=100_000,
        help=(
            "`csv`: number of classes (0 = infer from the data); labels must lie in "
            "0..num-classes-1."
        ),
    )
    partitioner: str = key(
        "iid",
        "data",
        choices=("iid", "dirichlet"),
        help=(
            "`iid` or `dirichlet` label skew across simulated hospitals (pooled "
            "datasets)."
        ),
    )
    dirichlet_alpha: float = key(
        0.5,
        "data",
        low=0.0,
        low_open=True,
        help="Dirichlet concentration (smaller = more skew).",
    )
    val_fraction: float = key(
        0.2,
        "data",
        low=0.05,
        high=0.5,
        help="Share of each hospital's records held out for its local evaluation.",
    )
    test_fraction: float = key(
        0.2,
        "data",
        low=0.05,
        high=0.5,
        help=(
            "Global held-out test share (`wdbc`, `csv`); each hospital's held-out "
            "share (`heart-disease`)."
        ),
    )
    image_size: int = key(
        0,
        "data",
        low=0,
        high=1024,
        help="Imaging: resize images to this side length (0 keeps the data's size).",
    )
    augment: bool = key(
        True,
        "data",
        help=(
            "Imaging: seeded random flip / small rotation, zoom, shift / gain on "
            "training batches."
        ),
    )
    class_names: str = key(
        "",
        "data",
        help=(
            "Imaging: comma-separated class names in label order (image folders: "
            "fixes the label order; default sorted folder names)."
        ),
    )
    rec_matrix: str = key(
        "drugs",
        "data",
        choices=("drugs", "labs", "diagnoses"),
        help=(
            "`mimic-demo`: patient x drug (prescriptions), lab test (labevents) or "
            "diagnosis (ICD) interactions."
        ),
    )
    site_by: str = key(
        "auto",
        "data",
        choices=("auto", "column", "users", "careunit", "admission-location"),
        help=(
            "Recommendation sites: a file's site `column`, `users` dealt by "
            "`partitioner`, MIMIC `careunit` (first ICU unit) or "
            "`admission-location`; `auto`: the data's sites (column, MIMIC care "
            "units) when there are as many hospitals, else users."
        ),
    )
    item_catalogue: str = key(
        "",
        "data",
        help=(
            "Recommendation in deployment: CSV of the item ids (and names) every "
            "site and the coordinator share (absolute path)."
        ),
    )
    feedback: str = key(
        "auto",
        "data",
        choices=("auto", "explicit", "implicit"),
        help=(
            "Recommendation: `explicit` ratings (MSE, RMSE) or `implicit` "
            "interactions (BPR); `auto`: explicit when the file's ratings vary."
        ),
    )
    model: str = key(
        "auto",
        "model",
        choices=("auto", *MODELS),
        help=(
            "The network: `auto` (the task's default), or one of the models below "
            "(`mlp-norm`: MLP with LayerNorm, for `local-norm`; `densenet121` and "
            "`efficientnet-b0` need >= 32 px; `shape`: a linear head on shape "
            "descriptors standardised with the hospitals' pooled sums, not with "
            "`dp`, `secure-aggregation` or int8 encoding)."
        ),
    )
    mlp_hidden: int = key(
        64, "model", low=1, high=4096, help="Hidden units per MLP layer."
    )
    mlp_layers: int = key(2, "model", low=1, high=8, help="Hidden layers of the MLP.")
    contribution: bool = key(
        False,
        "evaluation",
        help=(
            "After the last round, each hospital's contribution: the federated "
            "held-out metric (HR@10; AUC or accuracy) minus that of the round's "
            "average without its update (one evaluation per hospital; "
            "history.json `contributions`)."
        ),
    )
    rec_dim: int = key(
        32, "recommendation", low=1, high=1024, help="Embedding width of `mf`/`ncf`."
    )
    rec_loss: str = key(
        "auto",
        "recommendation",
        choices=("auto", "mse", "bpr"),
        help="`mse` (ratings), `bpr` (implicit); `auto` follows `feedback`.",
    )
    rec_l2: float = key(
        0.01,
        "recommendation",
        low=0.0,
        high=10.0,
        help="L2 weight on the looked-up patient and item rows of each batch.",
    )
    rec_update: str = key(
        "auto",
        "recommendation",
        choices=("auto", "sparse", "dense"),
        help=(
            "`sparse`: a site sends only the item rows it changed (plus the dense "
            "weights); `dense`: the whole item table; `auto`: sparse unless DP or "
            "secure aggregation needs dense."
        ),
    )
    rec_dp_shared: str = key(
        "popularity",
        "recommendation",
        choices=("all", "biases", "popularity"),
        help=(
            '`dp = "local"`: what patient-level DP-SGD trains and noises: '
            "`popularity` (the item biases, from each patient's item indicators "
            "scaled to the clip norm: a noisy count of patients per item), `biases` "
            "(item biases and the global offset, by the loss gradient) or `all`; "
            "the arrays not trained (item factors, NCF weights) stay at the run's "
            "seeded initial values."
        ),
    )
    recommend_mode: str = key(
        "model",
        "recommendation",
        choices=("model", "item-knn", "user-knn"),
        help=(
            "Scoring for evaluation: the model, item-item similarity of the learned "
            "item vectors, or similar patients of the same site (local)."
        ),
    )
    strategy: str = key(
        "fedavg",
        "strategy",
        choices=tuple(STRATEGIES),
        help=(
            "Aggregation rule, one of the strategies below (see docs/reliability.md)."
        ),
    )
    proximal_mu: float = key(
        0.0,
        "strategy",
        low=0.0,
        high=100.0,
        help="FedProx mu (must be > 0 with `fedprox`).",
    )
    eta: float = key(
        0.1,
        "strategy",
        low=0.0,
        high=10.0,
        low_open=True,
        help="FedAdam/FedYogi server learning rate.",
    )
    beta_1: float = key(
        0.9, "strategy", low=0.0, high=0.999, help="FedAdam/FedYogi first-moment decay."
    )
    beta_2: float = key(
        0.99,
        "strategy",
        low=0.0,
        high=0.9999,
        help="FedAdam/FedYogi second-moment decay.",
    )
    tau: float = key(
        1e-3,
        "strategy",
        low=0.0,
        high=10.0,
        low_open=True,
        help="FedAdam/FedYogi adaptivity.",
    )
    trim_beta: float = key(
        0.2,
        "strategy",
        low=0.0,
        high=0.49,
        help="FedTrimmedAvg: fraction cut at each end per coordinate.",
    )
    num_malicious: int = key(
        0,
        "strategy",
        low=0,
        high=100_000,
        help="Krum/MultiKrum: assumed number of malicious hospitals f.",
    )
    num_to_keep: int = key(
        0,
        "strategy",
        low=0,
        high=100_000,
        help="MultiKrum: replies averaged (0 = n - f each round).",
    )
    update_encoding: str = key(
        "float32",
        "strategy",
        choices=ENCODINGS,
        help=(
            "How model arrays travel, both ways: `float32` (exact), `float16` (half "
            "the bytes) or `int8` (8 bits per value, a range per tensor); integer "
            "buffers stay exact. Not with `secure-aggregation` (docs/benchmarks.md)."
        ),
    )
    local_epochs: int = key(
        1,
        "training",
        low=1,
        high=1000,
        help=(
            "Local epochs per round; `task='vertical'` refuses any other value than "
            "1 (its split network trains one epoch per round)."
        ),
    )
    local_steps: int = key(
        0,
        "training",
        low=0,
        high=1_000_000,
        help=(
            "0: each round trains `local-epochs` passes over the hospital's data; N "
            ">= 1: exactly N optimizer steps (mini-batches of `batch-size`, passes "
            "repeated and reshuffled as needed) whatever the hospital's size, "
            "`local-epochs` unused; with N = 1, `optimizer='sgd'`, `momentum=0`, "
            "`learning-rate=1` and `strategy='fedadam'` the server runs Adam on the "
            "pooled mini-batch gradient (FedSGD with a server optimizer); not with "
            "`dp='local'` or `task='vertical'`."
        ),
    )
    batch_size: int = key(32, "training", low=1, high=65_536, help="Local batch size.")
    learning_rate: float = key(
        0.05, "training", low=0.0, high=10.0, low_open=True, help="Local learning rate."
    )
    optimizer: str = key(
        "sgd", "training", choices=("sgd", "adam"), help="Local optimizer."
    )
    lr_schedule: str = key(
        "constant",
        "training",
        choices=("constant", "cosine"),
        help=(
            "`constant`, or `cosine`: the server sends each round's rate, decaying "
            "from `learning-rate` towards 0 over `num-server-rounds`."
        ),
    )
    select_best: str = key(
        "none",
        "evaluation",
        choices=("none", "auc", "loss"),
        help=(
            "`none` saves the last round's model; `auc` / `loss` save the round "
            "whose model had the best federated held-out metric (the hospitals' "
            "evaluation, weighted by their held-out sizes; never the server's test "
            "set), recorded as `selected_round` in `history.json`."
        ),
    )
    threshold_rule: str = key(
        "auto",
        "evaluation",
        choices=("auto", "youden", "sensitivity", "none"),
        help=(
            "Decision threshold stored in `final_model.pt`, chosen after the last "
            "round on the hospitals' pooled validation splits from per-class score "
            "histograms (docs/evaluation.md): `youden` maximises sensitivity + "
            "specificity - 1, `sensitivity` takes the highest threshold reaching "
            "`target-sensitivity`, `none` stores none (0.5 applies); `auto`: "
            "`youden` for a binary tabular or imaging task without `dp` or "
            "`secure-aggregation`, else `none`. Explicit rules need a binary task, "
            "`dp='none'` and no secure aggregation."
        ),
    )
    target_sensitivity: float = key(
        0.9,
        "evaluation",
        low=0.0,
        high=0.999,
        low_open=True,
        help="The sensitivity `threshold-rule='sensitivity'` must reach, in (0, 1).",
    )
    calibration: str = key(
        "none",
        "evaluation",
        choices=("none", "temperature"),
        help=(
            "`temperature`: temperature scaling fitted after the last round on the "
            "hospitals' pooled validation splits (each sends its NLL summed over a "
            "fixed grid of temperatures), stored in `final_model.pt` and applied by "
            "`medflower evaluate`; tabular or imaging, not with `dp` or "
            "`secure-aggregation`."
        ),
    )
    model_ema: float = key(
        0.0,
        "strategy",
        low=0.0,
        high=0.9999,
        help=(
            "Server-side weight averaging: d in (0, 1) keeps an exponential moving "
            "average of the global model over rounds (round i's model weighted by d "
            "** (t - i) after round t, normalised), which the hospitals and the "
            "server evaluate, `select-best` compares and `final_model.pt` holds, "
            "while training continues from the raw global model; post-processing, "
            "no privacy cost; 0 = off; not with `task='vertical'`."
        ),
    )
    evaluate_every: int = key(
        1,
        "evaluation",
        low=0,
        high=10_000,
        help=(
            "Evaluate the global model (server test set, hospitals' held-out "
            "records) every N rounds, and always after round 0 and the last round; "
            "0: about 10 times per run, every ceil(num-server-rounds / 10) rounds. "
            "`select-best` compares the evaluated rounds only."
        ),
    )
    tta: str = key(
        "none",
        "evaluation",
        choices=("none", "flip"),
        help=(
            "Imaging: test-time augmentation wherever the model predicts (server "
            "and hospital evaluation, `medflower evaluate`): `flip` averages the "
            "probabilities of each image and its left-right mirror; saved with the "
            "model."
        ),
    )
    momentum: float = key(0.9, "training", low=0.0, high=0.999, help="SGD momentum.")
    weight_decay: float = key(
        0.0, "training", low=0.0, high=1.0, help="L2 weight decay."
    )
    label_smoothing: float = key(
        0.0,
        "training",
        low=0.0,
        high=0.99,
        help=(
            "Training cross-entropy against targets smoothed by this much (0.1: 0.9 "
            "+ 0.1 / classes on the true class, the rest spread evenly); evaluation "
            "losses stay plain cross-entropy; not with `task='vertical'`."
        ),
    )
    fraction_train: float = key(
        1.0,
        "strategy",
        low=0.0,
        high=1.0,
        low_open=True,
        help="Share of hospitals sampled for training each round.",
    )
    fraction_evaluate: float = key(
        1.0,
        "strategy",
        low=0.0,
        high=1.0,
        help="Share sampled for federated evaluation (0 = none).",
    )
    min_hospitals: int = key(
        2,
        "strategy",
        low=1,
        high=100_000,
        help=(
            "Hospitals required to start a round and sound replies required to "
            "aggregate it (fewer: round skipped, model kept)."
        ),
    )
    round_timeout: float = key(
        3600.0,
        "reliability",
        low=0.0,
        low_open=True,
        help=(
            "Seconds to wait for replies in each train/evaluate phase; late "
            "hospitals are left out of the round."
        ),
    )
    wait_for_hospitals: float = key(
        600.0,
        "reliability",
        low=0.0,
        help=(
            "Seconds the federation may stay below `min-hospitals` before the run "
            "stops (status `stopped`, last checkpoint kept)."
        ),
    )
    checkpoint_keep: int = key(
        3,
        "reliability",
        low=1,
        high=10_000,
        help="Per-round checkpoints kept in `outputs/<run>/checkpoints/`.",
    )
    resume_from: str = key(
        "",
        "reliability",
        help=(
            "Run folder or checkpoint file to continue (same settings; see "
            "docs/reliability.md)."
        ),
    )
    deterministic: bool = key(
        False,
        "reliability",
        help=(
            "Deterministic torch kernels; with per-round, per-hospital seeds a "
            "resumed run is bit-identical."
        ),
    )
    poison_fraction: float = key(
        0.0,
        "test harness",
        low=0.0,
        high=0.99,
        help=(
            "Simulation only: share of hospitals (lowest partition ids) sending "
            "poisoned updates."
        ),
    )
    poison_scale: float = key(
        10.0,
        "test harness",
        low=0.0,
        high=1e6,
        low_open=True,
        help="Poisoned update = `w_global - scale * (w_local - w_global)`.",
    )
    server_eval: bool = key(
        True,
        "evaluation",
        help=(
            "Evaluate on the server's held-out test set every round; `false` in a "
            "deployment whose coordinator holds no data (`data-path` may then stay "
            "empty)."
        ),
    )
    seed: int = key(
        42,
        "training",
        low=0,
        high=2**31 - 1,
        help="Seed of splits, partitions, initialisation and shuffling.",
    )
    device: str = key(
        "auto",
        "training",
        choices=("auto", "cpu", "cuda"),
        help="`auto` (CUDA when present, else CPU), `cpu` or `cuda`.",
    )
    torch_threads: int = key(
        1,
        "training",
        low=0,
        high=256,
        help="Torch threads per process (0 = torch's default).",
    )
    output_dir: str = key(
        "outputs",
        "outputs",
        help=(
            "Where runs are written; relative paths are taken under "
            "`$MEDFLOWER_HOME` (set by the Makefile to the repository)."
        ),
    )
    run_name: str = key(
        "",
        "outputs",
        help="Run folder name (default: time, dataset, strategy, run id).",
    )
    id_column: str = key(
        "patient_id",
        "vertical",
        help=(
            "Patient-ID column of each hospital's CSV (node config `id-column` "
            "overrides)."
        ),
    )
    vertical_overlap: float = key(
        0.8,
        "vertical",
        low=0.0,
        high=1.0,
        help="Simulation: share of patients held by every hospital.",
    )
    vertical_embedding: int = key(
        8,
        "vertical",
        low=1,
        high=4096,
        help="Embedding width of each hospital's bottom model.",
    )
    init_model: str = key(
        "",
        "personalization",
        help=(
            "Transfer: a `final_model.pt` whose weights start the federation (must "
            "match model and features)."
        ),
    )
    personalize_epochs: int = key(
        0,
        "personalization",
        low=0,
        high=1000,
        help=(
            "Local epochs fine-tuning the head at evaluation (0 = off); metrics "
            "before and after."
        ),
    )
    personalize_part: str = key(
        "head",
        "personalization",
        choices=FINETUNE_PARTS,
        help=(
            "What `personalize-epochs` fine-tunes: the whole head, or only its "
            "`bias` (one offset per class: the hospital's case mix)."
        ),
    )
    local_norm: bool = key(
        False,
        "personalization",
        help=(
            "FedBN-style: normalisation layers stay local to each hospital (`model "
            '= "mlp-norm"`).'
        ),
    )
    personalization: str = key(
        "none",
        "personalization",
        choices=tuple(PERSONALIZATION_METHODS),
        help=(
            "Personalised FL (app/personalization/): each hospital also keeps a "
            "model of its own, never sent; `personal_*` metrics score it. "
            "`finetune` = `personalize-epochs` head fine-tuning."
        ),
    )
    ditto_lambda: float = key(
        0.1,
        "personalization",
        low=0.0,
        high=1e6,
        help="Ditto: weight of the personal model's pull toward the global one.",
    )
    apfl_alpha: float = key(
        0.5,
        "personalization",
        low=0.0,
        high=1.0,
        help="APFL: initial weight of the local model in the mixture (then learned).",
    )
    fedrep_head_epochs: int = key(
        1,
        "personalization",
        low=1,
        high=1000,
        help="FedRep: local epochs on the hospital's head before the shared body's.",
    )
    secure_aggregation: bool = key(
        False,
        "secure aggregation",
        help=(
            "The server sees only the sum of hospital updates (SecAgg+; see "
            "docs/secure-aggregation.md)."
        ),
    )
    aggregation_encryption: str = key(
        "masking",
        "secure aggregation",
        choices=("masking", "ckks"),
        help="`masking` (SecAgg+) or `ckks` (TenSEAL; `pip install .[he]`).",
    )
    secagg_num_shares: int = key(
        0,
        "secure aggregation",
        low=0,
        high=100_000,
        help="Shares per secret; 0 = derived from the hospitals in the round.",
    )
    secagg_reconstruction_threshold: int = key(
        0,
        "secure aggregation",
        low=0,
        high=100_000,
        help="Shares to rebuild a secret (strict majority); 0 = derived.",
    )
    secagg_clipping_range: float = key(
        2.0,
        "secure aggregation",
        low=0.0,
        high=1e6,
        low_open=True,
        help="Hospitals clip each update coordinate to +/- this before masking.",
    )
    secagg_quantization_range: int = key(
        2**30,
        "secure aggregation",
        low=2**8,
        high=2**30,
        help="Fixed-point levels over the clipping range.",
    )
    secagg_max_weight: float = key(
        100_000.0,
        "secure aggregation",
        low=0.0,
        high=1e12,
        low_open=True,
        help="Public cap on a hospital's weight (`num-examples`).",
    )
    dp: str = key(
        "none",
        "privacy",
        choices=("none", "local", "central"),
        help=(
            "Differential privacy: `none`, `local` (Opacus DP-SGD in each hospital) "
            "or `central` (server-side clipping + noise)."
        ),
    )
    dp_noise_multiplier: float = key(
        0.0,
        "privacy",
        low=0.0,
        high=1000.0,
        help="DP noise std / clip norm; give this or `dp-target-epsilon`.",
    )
    dp_target_epsilon: float = key(
        0.0,
        "privacy",
        low=0.0,
        high=1000.0,
        help="Plan the noise to spend this epsilon over the whole run.",
    )
    dp_epsilon_budget: float = key(
        0.0,
        "privacy",
        low=0.0,
        high=1000.0,
        help="Local DP: a hospital refuses rounds past this epsilon (0: the target).",
    )
    dp_delta: float = key(
        1e-5,
        "privacy",
        low=0.0,
        high=0.1,
        low_open=True,
        help="Delta of the reported (epsilon, delta).",
    )
    dp_max_grad_norm: float = key(
        1.0,
        "privacy",
        low=0.0,
        low_open=True,
        help="Local DP: per-sample gradient clip norm.",
    )
    dp_update_clip_norm: float = key(
        1.0,
        "privacy",
        low=0.0,
        low_open=True,
        help="Central DP: per-hospital update clip norm.",
    )
    dp_accountant: str = key(
        "prv",
        "privacy",
        choices=("prv", "rdp"),
        help="Opacus accountant: `prv` or `rdp`.",
    )
    dp_secure_rng: bool = key(
        False,
        "privacy",
        help=(
            "Cryptographically secure DP noise (local: torchcsprng; central: OpenDP)."
        ),
    )
    dp_grad_sampler: str = key(
        "layers",
        "privacy",
        choices=("layers", "opacus"),
        help=(
            "Local DP: per-sample gradients computed inside each layer (`layers`, "
            "faster) or by Opacus' hooks (`opacus`); same mechanism and accounting."
        ),
    )
    normalisation: str = key(
        "per-site",
        "data",
        choices=tuple(NORMALISATIONS),
        help=(
            "Tabular standardisation: `per-site` (each site's own statistics), "
            "`public-bounds` (every site maps each feature from the dataset's "
            "public a-priori bounds onto [-1, 1]; no statistics, no epsilon) or "
            "`dp-global` (global statistics from the hospitals' Laplace-noised "
            "cohort statistics, app/privacy/cohort_stats.py)."
        ),
    )
    dp_stats_epsilon: float = key(
        0.0,
        "privacy",
        low=0.0,
        high=1000.0,
        help=(
            "`dp-global`: epsilon each hospital spends on its statistics release "
            "(part of `dp-target-epsilon` under local DP)."
        ),
    )
    report: bool = key(
        True,
        "outputs",
        help="Write `report.html` (plots, ROC curve) at the end of the run.",
    )
    tensorboard: bool = key(
        False,
        "outputs",
        help=(
            "Also write TensorBoard event files to `<run>/tensorboard/` (needs the "
            "`tensorboard` package)."
        ),
    )
    mlflow: bool = key(
        False,
        "outputs",
        help=(
            "Also log the run to MLflow from the server (run config, per-round "
            "server and hospital metrics, epsilon, report and final model); needs "
            "the `mlflow` extra. Hospitals send nothing extra."
        ),
    )
    mlflow_tracking_uri: str = key(
        "",
        "outputs",
        help=(
            "MLflow tracking URI (`file:...`, `sqlite:...`, `http://...`); empty = "
            "a local file store `<output-dir>/mlruns`."
        ),
    )
    mlflow_experiment: str = key(
        "medflower", "outputs", help="MLflow experiment the runs are logged to."
    )
    mode: str = key(
        "train",
        "statistics",
        choices=("train", "stats"),
        help=(
            "`train` (federated training) or `stats` (federated statistics only: "
            "hospitals answer one aggregate query, no model is trained; "
            "docs/governance.md)."
        ),
    )
    stats_min_count: int = key(
        10,
        "statistics",
        low=0,
        high=1_000_000,
        help=(
            "Federated statistics: a site, feature or label cell counting fewer "
            "records is suppressed (a hospital's own minimum may be higher)."
        ),
    )
    stats_bins: int = key(
        10, "statistics", low=2, high=200, help="Histogram bins per feature/image."
    )
    stats_noise: str = key(
        "none",
        "statistics",
        choices=("none", "laplace", "gaussian"),
        help=(
            "DP noise on the released statistics: `none`, `laplace` "
            "(epsilon-DP) or `gaussian` ((epsilon, `dp-delta`)-DP), at "
            "`stats-noise-epsilon`; tabular data need the dataset's public "
            "feature bounds."
        ),
    )
    stats_noise_epsilon: float = key(
        1.0,
        "statistics",
        low=0.0,
        high=1000.0,
        low_open=True,
        help="Epsilon of one hospital's whole statistics release (`stats-noise`).",
    )
