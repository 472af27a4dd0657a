"""Rules that tie run-config keys together, checked when a RunConfig is built.

Each key's own type and range is checked from its declaration
(:mod:`app.config.keys`); these are the combinations that would run but silently
not mean what they say. Every error names the key to change.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import TYPE_CHECKING

from app.config.keys import ConfigError, RunConfigKeys
from data.preprocessing import GLOBAL_NORMALISATIONS
from data.registry import DATASETS, dataset_class, local_kinds
from models import MODELS
from strategies import STRATEGIES, weighted_mean_strategies

if TYPE_CHECKING:
    from app.config.run_config import RunConfig


def check_run(cfg: RunConfig) -> None:
    """Refuse any combination of settings below; the first problem is raised."""
    check_task(cfg)
    check_data(cfg)
    check_training(cfg)
    if cfg.secure_aggregation:
        check_secure_aggregation(cfg)
    elif cfg.aggregation_encryption != "masking":
        raise ConfigError(
            f"aggregation-encryption='{cfg.aggregation_encryption}' needs "
            "'secure-aggregation' = true."
        )
    if any(c in cfg.run_name for c in "/\\") or cfg.run_name in (".", ".."):
        raise ConfigError(f"'run-name' must be a plain name, got {cfg.run_name!r}.")
    check_privacy(cfg)
    check_personalization(cfg)
    check_normalisation(cfg)
    check_stats(cfg)
    check_encoding(cfg)
    check_contribution(cfg)
    check_decision(cfg)
    check_input_statistics(cfg)


def check_task(cfg: RunConfig) -> None:
    """Refuse a dataset or model meant for another task."""
    if cfg.task == "vertical":  # feature groups of tabular data, split NN
        check_vertical(cfg)
        return
    if cfg.task == "recommendation":
        check_recommendation(cfg)
    data_task = DATASETS[cfg.dataset].task
    if data_task != cfg.task:
        raise ConfigError(
            f"dataset='{cfg.dataset}' is {data_task} data but task='{cfg.task}'; "
            f"set task='{data_task}' or pick a {cfg.task} dataset."
        )
    model_task = MODELS[cfg.model_name].task
    if model_task != cfg.task:
        fitting = [name for name, rec in MODELS.items() if rec.task == cfg.task]
        raise ConfigError(
            f"model='{cfg.model}' is a {model_task} model but "
            f"task='{cfg.task}'; use one of {', '.join(fitting)} (or 'auto')."
        )


def _first_set(cfg: RunConfig, conditions: Iterable[tuple[str, bool]]) -> str | None:
    """The first key whose condition holds, as ``'key' = value`` (None: none)."""
    for key, active in conditions:
        if active:
            return f"'{key}' = {getattr(cfg, key.replace('-', '_'))!r}"
    return None


def check_decision(cfg: RunConfig) -> None:
    """An explicit threshold rule or calibration needs what its query releases.

    After the last round each hospital sends histograms of its validation scores
    and NLL sums (aggregates, but not noised nor masked): refused under ``dp`` or
    ``secure-aggregation`` rather than releasing outside their protection, and
    for tasks without class scores. ``auto`` resolves to ``none`` there.
    """
    asked = [
        (name, value)
        for name, value, off in (
            ("threshold-rule", cfg.threshold_rule, ("auto", "none")),
            ("calibration", cfg.calibration, ("none",)),
        )
        if value not in off
    ]
    default = RunConfigKeys.__dataclass_fields__["target_sensitivity"].default
    if cfg.target_sensitivity != default and cfg.threshold_rule != "sensitivity":
        raise ConfigError(
            f"'target-sensitivity' = {cfg.target_sensitivity} has no effect with "
            f"threshold-rule='{cfg.threshold_rule}'; set threshold-rule='sensitivity'."
        )
    if not asked:
        return
    name, value = asked[0]
    clash = _first_set(
        cfg,
        (
            ("task", cfg.task not in ("tabular", "imaging")),
            ("dp", cfg.dp != "none"),
            ("secure-aggregation", cfg.secure_aggregation),
        ),
    )
    if clash:
        raise ConfigError(
            f"'{name}' = {value!r} releases the hospitals' validation score "
            f"histograms and NLL sums unprotected; it cannot be used with {clash} "
            f"(use '{name}' = {'none' if name == 'calibration' else 'auto'!r})."
        )


def check_input_statistics(cfg: RunConfig) -> None:
    """A model that standardises computed features needs the hospitals' exact sums.

    Before round 1 each hospital sends counts, sums and sums of squares of the
    model's descriptors over its training split (app/server/input_stats.py):
    aggregates, but neither noised nor masked, so refused under ``dp`` or
    ``secure-aggregation``.
    """
    record = MODELS.get(cfg.model_name)  # vertical FL's split network is not one
    if record is None or not record.input_stats:
        return
    if cfg.update_encoding == "int8":
        raise ConfigError(
            f"model='{cfg.model_name}' with update-encoding='int8': 8-bit "
            "quantisation per tensor would shift the descriptors' stored means by up "
            "to half a step of their range (most of a standard deviation); use "
            "'float16' or 'float32'."
        )
    clash = _first_set(
        cfg,
        (("dp", cfg.dp != "none"), ("secure-aggregation", cfg.secure_aggregation)),
    )
    if clash:
        raise ConfigError(
            f"model='{cfg.model_name}' standardises its shape descriptors with each "
            "hospital's exact descriptor sums, released before round 1 outside the "
            f"protection of {clash}; use another model (e.g. 'poolcnn-small') or "
            "turn it off."
        )


def check_contribution(cfg: RunConfig) -> None:
    """``contribution`` needs each hospital's plain update."""
    if not cfg.contribution:
        return
    clash = _first_set(
        cfg,
        (
            ("task", cfg.task == "vertical"),
            ("secure-aggregation", cfg.secure_aggregation),
            ("dp", cfg.dp == "central"),
            ("update-encoding", cfg.update_encoding != "float32"),
        ),
    )
    if clash:
        raise ConfigError(
            f"'contribution' needs each hospital's plain update and cannot be used "
            f"with {clash}."
        )


def check_recommendation(cfg: RunConfig) -> None:
    """``task='recommendation'``: sparse replies only where rows can be sparse."""
    if cfg.update_encoding != "float32":
        raise ConfigError(
            f"update-encoding='{cfg.update_encoding}' is not available for "
            "task='recommendation' (its sparse row updates already cut the upload); "
            "use update-encoding='float32'."
        )
    if cfg.rec_update == "sparse":
        for key, active, why in (
            ("dp", cfg.dp != "none", "DP noise changes every item row"),
            (
                "secure-aggregation",
                cfg.secure_aggregation,
                "secure aggregation sums replies of equal shapes",
            ),
        ):
            if active:
                raise ConfigError(
                    f"rec-update='sparse' cannot be used with '{key}': {why}; use "
                    "rec-update='dense' (or 'auto')."
                )
    for key, active in (
        ("normalisation", cfg.normalisation != "per-site"),
        ("local-norm", cfg.local_norm),
        ("personalize-epochs", cfg.personalize_epochs > 0),
        ("personalization", cfg.personalization != "none"),
        ("init-model", bool(cfg.init_model)),
    ):
        if active:
            raise ConfigError(
                f"'{key}' applies to tabular and imaging models, not to "
                "task='recommendation' (whose patient vectors are already local)."
            )


def check_vertical(cfg: RunConfig) -> None:
    """``task='vertical'``: tabular columns, and no horizontal training option."""
    if DATASETS[cfg.dataset].task != "tabular":
        raise ConfigError(
            f"task='vertical' splits tabular columns; dataset='{cfg.dataset}' "
            "is not tabular (use wdbc, heart-disease or csv)."
        )
    split_network = (
        "task='vertical' trains its split network one epoch per round "
        "with plain cross-entropy."
    )
    for key, active, why in (
        ("local-epochs", cfg.local_epochs != 1, split_network),
        ("local-steps", cfg.local_steps > 0, split_network),
        ("label-smoothing", cfg.label_smoothing > 0, split_network),
        (
            "model-ema",
            cfg.model_ema > 0,
            "task='vertical' has no global model to average (each party "
            "keeps its own part of the split network).",
        ),
    ):
        if active:
            raise ConfigError(f"'{key}' applies to horizontal federations; {why}")


def check_data(cfg: RunConfig) -> None:
    """A dataset read from files needs its path, unless the coordinator holds none;
    one that reads no file (bundled or generated) is not given a path.
    """
    dataset = dataset_class(cfg.dataset)
    if cfg.data_path and not dataset.needs_path:
        # `--data scans/` with the default dataset trained on the bundled wdbc
        kinds = ", ".join(f"'{kind}'" for kind in local_kinds())
        raise ConfigError(
            f"data-path {cfg.data_path!r} is given but dataset='{cfg.dataset}' "
            "reads no file (bundled or generated data); name the file's kind with "
            f"'dataset': one of {kinds}."
        )
    if dataset.needs_path and not cfg.data_path:
        # In deployment each hospital names its own data (node config) and the
        # coordinator may hold none: server-eval=false, and the model's shape
        # must then be known without data (see FederatedDataset.shape_known).
        if cfg.server_eval:
            raise ConfigError(
                f"dataset='{cfg.dataset}' needs 'data-path' (a directory of "
                "hospital files for heart-disease, a CSV file for csv, an .npz "
                "file for medmnist, a class-per-folder directory for "
                "image-folder), unless server-eval=false in a deployment where "
                "each hospital names its own data."
            )
        if not dataset.shape_known(cfg.data_spec()):
            raise ConfigError(
                f"dataset='{cfg.dataset}' without a coordinator 'data-path': "
                "the server cannot know the model's input shape. " + dataset.shape_hint
            )
    if cfg.num_classes == 1:
        raise ConfigError("'num-classes' must be 0 (infer from data) or >= 2, got 1.")


def check_training(cfg: RunConfig) -> None:
    """Options that only mean something with another key's value."""
    if cfg.tta != "none" and cfg.task != "imaging":
        raise ConfigError(
            f"tta='{cfg.tta}' flips images; it applies to task='imaging' only."
        )
    if cfg.select_best != "none" and cfg.fraction_evaluate == 0.0:
        raise ConfigError(
            f"select-best='{cfg.select_best}' chooses the round by the "
            "hospitals' evaluation, but 'fraction-evaluate' = 0 asks none to "
            "evaluate."
        )
    if cfg.strategy == "fedprox" and cfg.proximal_mu <= 0.0:
        raise ConfigError(
            "strategy='fedprox' needs 'proximal-mu' > 0 (got "
            f"{cfg.proximal_mu}); use strategy='fedavg' for mu = 0."
        )


def check_secure_aggregation(cfg: RunConfig) -> None:
    """Secure aggregation reveals a sum: the strategy must need no more."""
    from app.secagg.registry import params_from_config

    if cfg.task == "vertical":
        raise ConfigError(
            "secure-aggregation applies to horizontal FedAvg/FedProx rounds; "
            "task='vertical' exchanges embeddings, not model updates."
        )
    if not STRATEGIES[cfg.strategy].weighted_mean:
        raise ConfigError(
            "secure-aggregation works with strategy = "
            f"{' or '.join(weighted_mean_strategies())}"
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


def check_privacy(cfg: RunConfig) -> None:
    """Reject DP settings that would silently not mean what they say."""
    if cfg.dp != "local" and cfg.dp_grad_sampler != "layers":
        raise ConfigError(
            f"'dp-grad-sampler' = {cfg.dp_grad_sampler!r} only applies to "
            f"dp='local' (per-sample gradients in DP-SGD); dp='{cfg.dp}'."
        )
    if cfg.dp == "none":
        check_dp_off(cfg)
        return
    check_dp_noise(cfg)
    if cfg.dp == "local":
        check_local_dp(cfg)
    if cfg.dp == "central" and not STRATEGIES[cfg.strategy].weighted_mean:
        raise ConfigError(
            f"dp='central' replaces the aggregation by a clipped, noised mean; "
            f"'strategy' = {cfg.strategy!r} would silently lose its own rule. "
            "Use strategy="
            + " or ".join(repr(name) for name in weighted_mean_strategies())
            + "."
        )
    check_dp_exclusions(cfg)
    if cfg.dp == "central" and cfg.dp_epsilon_budget:
        raise ConfigError(
            "'dp-epsilon-budget' applies to dp='local' (each hospital refuses "
            "rounds past it); for dp='central' set 'dp-target-epsilon'."
        )


def check_dp_off(cfg: RunConfig) -> None:
    """``dp='none'``: a DP setting would promise a guarantee the run lacks."""
    for key, value in (
        ("dp-noise-multiplier", cfg.dp_noise_multiplier),
        ("dp-target-epsilon", cfg.dp_target_epsilon),
        ("dp-epsilon-budget", cfg.dp_epsilon_budget),
        ("dp-secure-rng", cfg.dp_secure_rng),
    ):
        if value:
            raise ConfigError(
                f"'{key}' = {value!r} has no effect with dp='none'; set "
                "dp='local' or dp='central', or leave it unset."
            )


def check_dp_noise(cfg: RunConfig) -> None:
    """The noise is set one way, within the budget."""
    if (cfg.dp_noise_multiplier > 0) == (cfg.dp_target_epsilon > 0):
        raise ConfigError(
            f"dp='{cfg.dp}' needs exactly one of 'dp-noise-multiplier' > 0 or "
            "'dp-target-epsilon' > 0 (got "
            f"{cfg.dp_noise_multiplier} and {cfg.dp_target_epsilon})."
        )
    if cfg.dp_epsilon_budget and cfg.dp_target_epsilon > cfg.dp_epsilon_budget:
        raise ConfigError(
            f"'dp-target-epsilon' = {cfg.dp_target_epsilon} exceeds "
            f"'dp-epsilon-budget' = {cfg.dp_epsilon_budget}: the planned run "
            "would be refused before its last round."
        )


def check_local_dp(cfg: RunConfig) -> None:
    """``dp='local'``: what DP-SGD and its per-hospital accountant cannot cover."""
    if cfg.local_steps:
        raise ConfigError(
            f"'local-steps' = {cfg.local_steps} is not supported with "
            "dp='local': the privacy accountant counts whole local epochs; use "
            "'local-epochs'."
        )
    if cfg.proximal_mu > 0:
        raise ConfigError(
            f"'proximal-mu' = {cfg.proximal_mu} is not supported with dp='local': "
            "Opacus clips per-sample gradients of the data loss only, so the "
            "proximal term would be silently dropped. Use strategy='fedavg'."
        )
    if cfg.dp_secure_rng and importlib.util.find_spec("torchcsprng") is None:
        raise ConfigError(
            "'dp-secure-rng' = true with dp='local' needs the torchcsprng package "
            "(Opacus' secure mode), which is not installed."
        )
    if cfg.resume_from:
        raise ConfigError(
            "'resume-from' is not supported with dp='local': a resumed run is a "
            "new Flower run whose hospitals start with an empty context.state, so "
            "their privacy accountants would restart and under-report epsilon."
        )


def check_dp_exclusions(cfg: RunConfig) -> None:
    """Features whose releases the DP accounting does not cover yet."""
    for key, active, why in (
        (
            "secure-aggregation",
            cfg.secure_aggregation,
            "DP accounting with secure aggregation is not implemented yet (central "
            "DP needs each hospital's update; local DP's per-hospital epsilon "
            "reporting is untested under SecAgg+)",
        ),
        (
            "personalize-epochs",
            cfg.personalize_epochs > 0,
            "fine-tuning on training records at evaluation is not DP-SGD, so the "
            "metrics it releases would fall outside the guarantee",
        ),
        (
            "personalization",
            cfg.personalization != "none",
            "personal models are trained (and their metrics released) without DP-SGD",
        ),
        (
            "task",
            cfg.task == "vertical",
            "vertical FL exchanges embeddings and gradients that DP-SGD does not cover",
        ),
    ):
        if active:
            raise ConfigError(f"'{key}' cannot be combined with dp='{cfg.dp}': {why}.")


def check_normalisation(cfg: RunConfig) -> None:
    """Refuse a global normalisation the task or dataset cannot support."""
    if cfg.normalisation != "dp-global" and cfg.dp_stats_epsilon:
        raise ConfigError(
            f"'dp-stats-epsilon' = {cfg.dp_stats_epsilon} has no effect with "
            f"normalisation='{cfg.normalisation}'; set "
            "normalisation='dp-global' or leave it unset."
        )
    if cfg.normalisation not in GLOBAL_NORMALISATIONS:
        return
    mode = f"normalisation='{cfg.normalisation}'"
    if cfg.task != "tabular":
        raise ConfigError(
            f"{mode} standardises tabular features; "
            f"'task' = {cfg.task!r} is not supported."
        )
    if dataset_class(cfg.dataset).feature_bounds is None:
        raise ConfigError(
            f"{mode} needs public a-priori feature bounds, "
            f"and dataset='{cfg.dataset}' declares none (bounds taken from the "
            "data would leak it); use normalisation='per-site'."
        )
    if cfg.normalisation == "dp-global":
        check_dp_global(cfg)


def check_dp_global(cfg: RunConfig) -> None:
    """A ``dp-global`` run must be able to keep its privacy promise."""
    if cfg.dp_stats_epsilon <= 0:
        raise ConfigError(
            "normalisation='dp-global' needs 'dp-stats-epsilon' > 0 (the "
            "epsilon each hospital spends on releasing its cohort statistics)."
        )
    if cfg.dp == "central":
        raise ConfigError(
            "normalisation='dp-global' cannot be combined with dp='central': the "
            "statistics release is record-level per hospital and would not be "
            "covered by the hospital-level central epsilon."
        )
    if cfg.resume_from:
        raise ConfigError(
            "'resume-from' is not supported with normalisation='dp-global': the "
            "resumed run's hospitals would release (and pay for) their "
            "statistics again."
        )
    if cfg.dp == "local" and cfg.dp_target_epsilon:
        if cfg.dp_target_epsilon <= cfg.dp_stats_epsilon:
            raise ConfigError(
                f"'dp-target-epsilon' = {cfg.dp_target_epsilon} must exceed "
                f"'dp-stats-epsilon' = {cfg.dp_stats_epsilon}: the target covers "
                "the statistics release and DP-SGD together."
            )
    if cfg.dp == "local" and cfg.dp_budget <= cfg.dp_stats_epsilon:
        raise ConfigError(
            f"'dp-epsilon-budget' = {cfg.dp_budget} leaves nothing for DP-SGD "
            f"after 'dp-stats-epsilon' = {cfg.dp_stats_epsilon}."
        )


def check_stats(cfg: RunConfig) -> None:
    """Federated statistics (``mode = "stats"``) the data can support."""
    if cfg.mode != "stats":
        return
    if cfg.task == "vertical":
        raise ConfigError(
            "mode='stats' summarises tabular or imaging data held by each hospital; "
            "it does not run with task='vertical'."
        )
    if (
        cfg.task == "tabular"
        and cfg.stats_noise != "none"
        and dataset_class(cfg.dataset).feature_bounds is None
    ):
        raise ConfigError(
            f"stats-noise='{cfg.stats_noise}' needs public a-priori feature bounds, "
            f"which dataset='{cfg.dataset}' does not declare; use "
            "stats-noise='none'."
        )


def check_encoding(cfg: RunConfig) -> None:
    """A compressed ``update-encoding`` needs plain model arrays on both sides.

    Secure aggregation is refused rather than composed: SecAgg+ already maps each
    update onto integers of its own ``secagg-quantization-range`` before masking,
    and CKKS encrypts float vectors, so a second quantisation would only add error.
    """
    if cfg.update_encoding == "float32":
        return
    for key, active, why in (
        (
            "secure-aggregation",
            cfg.secure_aggregation,
            "SecAgg+ quantises updates itself and CKKS encrypts them",
        ),
        (
            "task",
            cfg.task == "vertical",
            "task='vertical' exchanges embeddings, not model arrays",
        ),
        (
            "poison-fraction",
            cfg.poison_fraction > 0,
            "the poisoning harness edits plain model arrays",
        ),
    ):
        if active:
            raise ConfigError(
                f"update-encoding='{cfg.update_encoding}' cannot be used with "
                f"'{key}' = {getattr(cfg, key.replace('-', '_'))!r}: {why}; "
                "use update-encoding='float32'."
            )


def check_personalization(cfg: RunConfig) -> None:
    """``personalization``: the keys it needs and what it does not compose with.

    ``fedrep`` and ``fenda`` send part of the model only: secure aggregation (it
    sums whole-model vectors) and compressed encodings (decoded by the whole
    model's layout) are refused, and so is a model without a body (``logreg``).
    ``finetune``, ``ditto`` and ``apfl`` send the whole model and compose with
    both. Every method is refused under DP (see :func:`check_dp_exclusions`).
    """
    method = cfg.personalization
    if cfg.personalize_part != "head" and cfg.personalize_epochs == 0:
        raise ConfigError(
            f"'personalize-part' = '{cfg.personalize_part}' needs "
            "'personalize-epochs' >= 1 (it says what that fine-tuning adapts)."
        )
    if method == "finetune" and cfg.personalize_epochs == 0:
        raise ConfigError(
            "personalization='finetune' needs 'personalize-epochs' >= 1 (its local "
            "fine-tuning epochs)."
        )
    if method in ("none", "finetune"):
        return
    for key, active, why in (
        (
            "personalize-epochs",
            cfg.personalize_epochs > 0,
            "it fine-tunes the global model's head; the personal model is the "
            "method's own (use personalization='finetune' for fine-tuning)",
        ),
        ("local-norm", cfg.local_norm, "FedBN composes with 'finetune' only"),
    ):
        if active:
            raise ConfigError(
                f"'{key}' cannot be combined with personalization='{method}': {why}."
            )
    if method not in ("fedrep", "fenda"):
        return
    for key, active, why in (
        ("model", cfg.model_name == "logreg", "a logistic regression is all head"),
        (
            "secure-aggregation",
            cfg.secure_aggregation,
            "secure aggregation sums whole-model updates",
        ),
        (
            "update-encoding",
            cfg.update_encoding != "float32",
            "encoded replies are decoded by the whole model's layout",
        ),
    ):
        if active:
            raise ConfigError(
                f"'{key}' cannot be used with personalization='{method}', whose "
                f"replies hold the model without its head: {why}."
            )
