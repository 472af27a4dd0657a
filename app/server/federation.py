"""One federated run on the server, from its config to its final model.

Build the run, resume it, drive the rounds, report and checkpoint each.

The ServerApp's ``main`` only calls :func:`run_federation`; tests and benchmarks
call it with an in-process Grid and their own hooks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid

from app.client.hospital import model_spec, task_contract
from app.config import RunConfig
from app.personalization import build_method
from app.privacy.cohort_stats import GlobalNormalisation
from app.privacy.server import PrivacyReport, with_privacy
from app.secagg.registry import secure_aggregator
from app.server.averaging import ModelEMA
from app.server.checkpoints import (
    Checkpoint,
    Stateful,
    load_resume,
    save_checkpoint,
    set_rng_state,
)
from app.server.contribution import SiteContribution
from app.server.decision import choose_decision, resolved_rule, stored
from app.server.history import DecisionEntry, RocCurve, RoundEntry, SelectedRound
from app.server.input_stats import standardise_inputs
from app.server.mlflow_tracking import MlflowTracker
from app.server.outputs import RunRecorder
from app.server.report import roc_curves, write_report
from app.server.runner import RoundHook, RoundRunner, RunResult, evaluation_round
from app.server.tensorboard import TensorBoardLogger
from data.lazy import load
from data.preprocessing import NORMALISATIONS
from data.registry import get_dataset
from data.spec import DatasetInfo, Split
from models import ModelSpec
from models.checkpoint import load_model, save_model
from models.decision import Decision, calibrate, threshold_metrics
from models.personalization import load_initial_weights
from models.training import (
    evaluate_split,
    pick_device,
    predict_proba,
    scheduled_learning_rate,
    set_deterministic,
)
from strategies import STRATEGIES, build_strategy
from strategies.sampling import FederationStopped
from strategies.screening import FEDERATED_EVALUATE, Screened

log = logging.getLogger(__name__)

SaveFn = Callable[[Path, ArrayRecord], None]

# What a site must do to its data before applying the saved model, per task.
PREPROCESSING: dict[str, dict[str, Any]] = {
    "tabular": {  # a global normalisation records its means/stds instead
        "standardize": "per-site",
        "note": "each site standardises features with its own training statistics",
    },
    "imaging": {
        "intensity": "uint8 0..255 -> [0, 1]; other types min-max scaled per image",
        "resize": "to the model's input size (run config image-size; 0: native)",
        "layout": "(C, H, W) or (C, D, H, W)",
    },
    "recommendation": {
        "items": "item ids in the order of info.feature_names (the catalogue)",
        "patients": "each site fits its own patient vectors (fold-in); none are "
        "in this file",
    },
}


def _federated(entry: RoundEntry) -> str:
    shown = ("hr@10", "ndcg@10", "coverage@10", "rmse", "auc", "accuracy")
    found = entry.federated or {}
    return " ".join(f"{k}={found[k]:.4f}" for k in shown if found.get(k) is not None)


def _summary(metrics: dict[str, float | None]) -> str:
    keys = ("accuracy", "auc", "sensitivity", "specificity", "loss")
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if metrics.get(k) is not None)


class RoundReporter:
    """Server-side evaluation after each round, history.json and progress lines."""

    def __init__(
        self,
        cfg: RunConfig,
        recorder: RunRecorder,
        strategy: Screened,
        model: torch.nn.Module,
        test: Split | None,
        first_round: int = 1,
        tensorboard: TensorBoardLogger | None = None,
        mlflow: MlflowTracker | None = None,
    ) -> None:
        self.cfg, self.recorder, self.strategy = cfg, recorder, strategy
        self.tensorboard = tensorboard
        self.mlflow = mlflow
        self.model, self.test = model, test
        self.device = pick_device(cfg.device)
        self.start = time.monotonic()
        self.first_round = first_round
        self.privacy = PrivacyReport(cfg)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics: dict[str, float] = {}
        every, last = self.cfg.evaluation_interval, self.cfg.num_server_rounds
        if self.test is not None and evaluation_round(server_round, every, last):
            self.model.load_state_dict(arrays.to_torch_state_dict())
            metrics = evaluate_split(self.model, self.test, self.device)
        ledger = self.strategy.ledger.rounds.get(server_round, {})
        elapsed = time.monotonic() - self.start
        entry = RoundEntry.from_ledger(
            server_round,
            ledger,
            server=metrics,
            elapsed_s=round(elapsed, 3),
            privacy=self.privacy.round_entry(server_round, ledger, self.strategy),
        )
        self.recorder.record_round(entry)
        if self.tensorboard is not None:
            self.tensorboard.log_round(entry)
        if self.mlflow is not None:
            self.mlflow.log_round(entry)
        self._log(entry, len(ledger.get("train", {})), elapsed)
        clean = {k: v for k, v in metrics.items() if v == v}
        return MetricRecord(clean) if clean else None

    def _log(self, entry: RoundEntry, trained: int, elapsed: float) -> None:
        """The round's progress line (and its privacy line under DP)."""
        total = self.cfg.num_server_rounds
        done = entry.round - self.first_round + 1
        eta = elapsed / done * (total - entry.round) if done > 0 else float("nan")
        log.info(
            "[round %d/%d] elapsed %.1fs eta %s | hospitals trained %d, "
            "dropped %d%s | %s",
            entry.round,
            total,
            elapsed,
            f"{eta:.1f}s" if eta == eta else "-",
            trained if entry.skipped is None else 0,
            len(entry.dropped()),
            "" if entry.skipped is None else " | SKIPPED: " + entry.skipped,
            _summary(entry.server)
            or (
                "not evaluated" if self.test is not None else "no server-side test set"
            ),
        )
        if entry.privacy is not None:
            log.info(
                "[round %d/%d] privacy: %s",
                entry.round,
                total,
                self.privacy.short(entry.privacy),
            )


class BestRound:
    """Keep the global model of the round with the best federated held-out metric.

    Run config ``select-best``: after each round, the hospitals' evaluation of
    that round's global model (weighted by held-out size, see
    ``strategies.screening.FEDERATED_EVALUATE``) is compared with the best so far;
    the server's test set is never consulted. The best model is written to
    ``selected_model.pt`` in the run folder as it changes, so a resumed run
    continues the selection, and becomes ``final_model.pt`` at the end.
    """

    HIGHER_IS_BETTER = {"auc": True, "loss": False}
    FILE = "selected_model.pt"

    def __init__(
        self, metric: str, strategy: Screened, recorder: RunRecorder, save: SaveFn
    ) -> None:
        self.metric, self.strategy, self.recorder = metric, strategy, recorder
        self.save = save
        self.round: int | None = None
        self.value = float("nan")
        self.arrays: ArrayRecord | None = None
        self._resume()

    @property
    def path(self) -> Path:
        return self.recorder.dir / self.FILE

    def _better(self, value: float) -> bool:
        if self.round is None:
            return True
        higher = self.HIGHER_IS_BETTER[self.metric]
        return value > self.value if higher else value < self.value

    def _resume(self) -> None:
        """Continue a resumed run's selection from its history and saved model."""
        history = self.recorder.history
        selected, history.selected_round = history.selected_round, None
        if selected is None or not self.path.is_file():
            return
        if history.round(selected.round) is not None:  # not a round to re-run
            state = load_model(self.path)[1]["state_dict"]
            self.round, self.value = int(selected.round), float(selected.value)
            self.arrays = ArrayRecord(state)
            history.selected_round = selected

    def __call__(
        self, server_round: int, arrays: ArrayRecord, model: ArrayRecord
    ) -> None:
        del arrays  # the round's model (the weight average under model-ema) is kept
        ledger = self.strategy.ledger.rounds.get(server_round, {})
        value = ledger.get(FEDERATED_EVALUATE, {}).get(self.metric)
        if value is None or not math.isfinite(value) or not self._better(value):
            return
        self.round, self.value, self.arrays = server_round, float(value), model
        self.save(self.path, model)
        self.recorder.note(selected_round=self.summary())
        log.info(
            "[round %d] federated held-out %s=%.4f: best so far, selected",
            server_round,
            self.metric,
            value,
        )

    def summary(self) -> SelectedRound:
        assert self.round is not None, "no round selected yet"
        return SelectedRound(
            round=self.round,
            metric=f"federated held-out {self.metric}",
            value=self.value,
        )


@dataclass
class FederationOutcome:
    """What a run ended with (also in history.json)."""

    status: str
    recorder: RunRecorder
    result: RunResult


@dataclass
class Federation:
    """A built run: its config, data, model, strategy and run folder.

    ``arrays`` and ``start_round`` are where the rounds begin: the initial model
    and round 1, or a checkpoint's arrays and the round after it.
    """

    cfg: RunConfig
    dataset: Any
    info: DatasetInfo
    spec: ModelSpec
    model: torch.nn.Module
    strategy: Any  # a Screened strategy, possibly wrapped in central DP
    recorder: RunRecorder
    averaging: ModelEMA
    arrays: ArrayRecord
    start_round: int = 1
    test: Split | None = None
    contract: dict[str, Any] = field(default_factory=dict)
    norm: GlobalNormalisation | None = None
    tensorboard: TensorBoardLogger | None = None
    mlflow: MlflowTracker | None = None

    def save(
        self, path: Path, arrays: ArrayRecord, decision: Decision | None = None
    ) -> None:
        """Save ``arrays`` as a model file sites can apply (with its preprocessing
        and, for the final model, its decision threshold and temperature).
        """
        save_model(
            path,
            arrays.to_torch_state_dict(),
            self.spec,
            self.info,
            run_config=self.cfg.to_run_config(),
            preprocessing=(
                PREPROCESSING[self.cfg.task]
                if self.norm is None
                else self.norm.preprocessing()
            ),
            decision=None if decision is None else decision.to_dict(),
        )

    def checkpoint(
        self, server_round: int, arrays: ArrayRecord, _: ArrayRecord
    ) -> None:
        """Round hook: the checkpoint a run resumes from."""
        save_checkpoint(
            self.recorder.dir,
            server_round=server_round,
            arrays=arrays,
            strategy_state=self.strategy.state_dict(),
            averaging_state=self.averaging.state_dict(),
            run_config=self.cfg.to_run_config(),
            keep=self.cfg.checkpoint_keep,
        )

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def end_tracking(self, status: str) -> None:
        """Close the MLflow run (if any) with the run's outputs and status."""
        if self.mlflow is not None:
            self.mlflow.finish(status)
            self.mlflow = None


def run_federation(
    grid: Grid, context: Context, *, after_round: Sequence[RoundHook] = ()
) -> FederationOutcome:
    """Run (or resume) the federation described by ``context.run_config``.

    The steps of a run: build it (config, data, model, strategy, run folder),
    resume it from its checkpoint, agree on a global normalisation, run the
    rounds, then finalize (final model, ROC curve, privacy log, report).
    """
    cfg = RunConfig.from_run_config(context.run_config)
    resume = load_resume(cfg)
    run = build(cfg, context.run_id, resume)
    stopped = normalise(run, grid) or standardise(run, grid)
    if stopped is not None:
        return stopped
    selection = (
        BestRound(cfg.select_best, run.strategy, run.recorder, run.save)
        if cfg.select_best != "none"
        else None
    )
    reporter = RoundReporter(
        cfg,
        run.recorder,
        run.strategy,
        run.model,
        run.test,
        run.start_round,
        run.tensorboard,
        run.mlflow,
    )
    # selection first: the checkpoint then covers the selected model's file
    hooks = [*([selection] if selection else []), run.checkpoint, *after_round]
    if cfg.contribution:
        hooks.append(
            SiteContribution(
                run.strategy,
                grid,
                cfg.task,
                cfg.num_server_rounds,
                cfg.round_timeout,
                run.contract,
                run.recorder,
            )
        )
    runner = round_runner(run, grid, reporter, hooks)
    if resume is not None:
        # Last, so nothing above (model init, data) consumes the restored state.
        set_rng_state(resume.rng)
    result = run_rounds(run, runner)
    if result.stopped is not None:
        return stop(run, result)
    return finalize(run, result, selection, reporter, grid)


# ------------------------------------------------------------------ build


def build(cfg: RunConfig, run_id: int, resume: Checkpoint | None) -> Federation:
    """Seed, load the data, build model and strategy, open the run folder."""
    set_deterministic(cfg.deterministic)
    torch.manual_seed(cfg.seed)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    dataset = get_dataset(cfg.data_spec())
    info = dataset.info()
    # global normalisation: replaced by the globally standardised test set once known
    test = (
        dataset.server_test()
        if cfg.server_eval
        and cfg.normalisation == "per-site"
        and dataset.has_server_test
        else None
    )
    resolved_rule(cfg, info.num_classes)  # an explicit rule needs two classes
    spec = model_spec(cfg, info)
    model = spec.build()
    if cfg.init_model:  # transfer: start from a model trained on a source population
        model.load_state_dict(load_initial_weights(cfg.init_model, spec, info))
    # personalised FL: keys that stay at the hospitals (fedrep, fenda: the head)
    local_keys = build_method(cfg).local_keys(model)
    strategy = with_privacy(
        cfg,
        build_strategy(
            cfg.strategy,
            **strategy_options(cfg),
            local_keys=local_keys,
            fixed_keys=buffer_keys(model),
        ),
    )
    run = Federation(
        cfg=cfg,
        dataset=dataset,
        info=info,
        spec=spec,
        model=model,
        strategy=strategy,
        recorder=open_recorder(cfg, run_id, resume),
        averaging=ModelEMA(cfg.model_ema),
        arrays=ArrayRecord(model.state_dict()),
        test=test,
        contract=task_contract(info),
    )
    if resume is not None:
        resume_from(run, resume)
    run.recorder.note(class_names=list(info.class_names))
    # Fails here, before any training, when the tensorboard package is missing.
    if cfg.tensorboard:
        run.tensorboard = TensorBoardLogger(run.recorder.dir)
    if cfg.mlflow:  # the same: fails before training when mlflow is missing
        run.mlflow = MlflowTracker(cfg, run.recorder.dir, run.recorder.root)
    _announce(run)
    return run


def buffer_keys(model: torch.nn.Module) -> list[str]:
    """The model's arrays that are not trained (buffers, e.g. `shape`'s statistics)."""
    trained = {name for name, _ in model.named_parameters()}
    return [k for k in model.state_dict() if k not in trained]


def strategy_options(cfg: RunConfig) -> dict[str, Any]:
    """Keyword arguments of ``build_strategy`` from the run config."""
    return {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_hospitals": cfg.min_hospitals,
        "wait_for_hospitals": cfg.wait_for_hospitals,
        "seed": cfg.seed,
        "update_encoding": cfg.update_encoding,
        **{name: getattr(cfg, name) for name in STRATEGIES[cfg.strategy].options},
        **({"secure": secure} if (secure := secure_aggregator(cfg)) else {}),
    }


def open_recorder(
    cfg: RunConfig, run_id: int, resume: Checkpoint | None
) -> RunRecorder:
    """A new run folder, or the resumed run's (its history up to the checkpoint)."""
    if resume is None:
        return RunRecorder(cfg, run_id)
    return RunRecorder.resume(cfg, run_id, resume.run_dir, resume.server_round)


def resume_from(run: Federation, resume: Checkpoint) -> None:
    """Continue from ``resume``: its arrays, strategy and averaging state, round."""
    if not isinstance(run.strategy, Stateful):  # a wrapper that forgot its state
        raise TypeError(f"{type(run.strategy).__name__} cannot restore a checkpoint")
    run.strategy.load_state_dict(resume.strategy_state)
    run.arrays = resume.arrays
    run.start_round = resume.server_round + 1
    run.averaging.load_state_dict(resume.averaging_state)
    log.info(
        "Resuming run %s from %s (round %d done).",
        run.recorder.dir.name,
        resume.path,
        resume.server_round,
    )


def _announce(run: Federation) -> None:
    cfg, test = run.cfg, run.test
    if test is not None:
        server_test = f"{len(test)} test records"
    elif cfg.server_eval and run.dataset.has_server_test:
        server_test = "test set standardised as the hospitals standardise"
    else:
        server_test = "no server-side test set"
    log.info(
        "medflower run %s: %s, %s on %s (%s), preset %s, writing to %s",
        run.recorder.history.run_name,
        cfg.strategy,
        cfg.model_name,
        run.info.description,
        server_test,
        cfg.preset,
        run.recorder.dir,
    )
    run.strategy.summary()


def normalise(run: Federation, grid: Grid) -> FederationOutcome | None:
    """Agree on a global normalisation when the run config asks for one.

    Returns the outcome of a run that stopped here (too few hospitals), else None.
    """
    cfg = run.cfg
    normaliser = NORMALISATIONS[cfg.normalisation]
    if normaliser is None:
        return None
    try:
        run.norm = load(normaliser)(grid, cfg, run.contract, run.info.num_classes)
    except FederationStopped as stop:
        return stopped_before_round_one(run, stop)
    run.recorder.note(normalisation=run.norm.history())
    run.contract = {**run.contract, **run.norm.config()}
    if cfg.server_eval:
        raw = run.dataset.raw_server_test()
        run.test = Split(run.norm.scaler.transform(raw.x), raw.y)
    return None


# ------------------------------------------------------------------ rounds


def standardise(run: Federation, grid: Grid) -> FederationOutcome | None:
    """Pool the hospitals' input statistics into a model that standardises
    features it computes (``shape``: app/server/input_stats.py).

    A resumed run or a transferred model keeps the statistics its arrays carry.
    Returns the outcome of a run that stopped here (too few hospitals), else None.
    """
    if run.start_round > 1 or run.cfg.init_model:
        return None
    try:
        stats = standardise_inputs(grid, run.cfg, run.contract, run.model)
    except FederationStopped as stop:
        return stopped_before_round_one(run, stop)
    if stats is not None:
        run.arrays = ArrayRecord(run.model.state_dict())
        run.recorder.note(input_statistics=stats.history())
    return None


def stopped_before_round_one(
    run: Federation, stop: FederationStopped
) -> FederationOutcome:
    """Close a run that could not start its rounds, recording why."""
    run.close()
    run.recorder.finish("stopped", stop_reason=str(stop), last_round=0)
    run.end_tracking("stopped")
    log.error("Run stopped before round 1: %s", stop)
    return FederationOutcome(
        "stopped", run.recorder, RunResult(run.arrays, 0, stopped=str(stop))
    )


def round_runner(
    run: Federation,
    grid: Grid,
    reporter: RoundReporter,
    after_round: Sequence[RoundHook],
) -> RoundRunner:
    """The round loop of ``run``: ``reporter`` then ``after_round`` after each round."""
    cfg = run.cfg
    return RoundRunner(
        strategy=run.strategy,
        grid=grid,
        num_rounds=cfg.num_server_rounds,
        round_timeout=cfg.round_timeout,
        wait_for_hospitals=cfg.wait_for_hospitals,
        train_config=ConfigRecord({"proximal-mu": 0.0, **run.contract}),
        evaluate_config=ConfigRecord(dict(run.contract)),
        evaluate_fn=reporter,
        after_round=after_round,
        round_config=lambda r: {
            "learning-rate": scheduled_learning_rate(
                cfg.lr_schedule, cfg.learning_rate, r, cfg.num_server_rounds
            )
        },
        averaging=run.averaging,
        evaluate_every=cfg.evaluation_interval,
    )


def run_rounds(run: Federation, runner: RoundRunner) -> RunResult:
    """Run the rounds; a run that raises is recorded as failed (with its report)."""
    try:
        return runner.run(run.arrays, run.start_round)
    except BaseException:
        run.recorder.finish("failed")
        write_run_report(run.cfg, run.recorder)
        run.end_tracking("failed")
        raise
    finally:
        run.close()


# ------------------------------------------------------------------ finalize


def stop(run: Federation, result: RunResult) -> FederationOutcome:
    """Record a run that stopped early; it can be resumed from its checkpoint."""
    run.recorder.finish(
        "stopped", stop_reason=result.stopped, last_round=result.last_round
    )
    write_run_report(run.cfg, run.recorder)
    run.end_tracking("stopped")
    log.error(
        "Run stopped: %s The last checkpoint (round %d) is in %s; continue with "
        "resume-from='%s'.",
        result.stopped,
        result.last_round,
        run.recorder.dir / "checkpoints",
        run.recorder.dir,
    )
    return FederationOutcome("stopped", run.recorder, result)


def final_model(
    run: Federation, result: RunResult, selection: BestRound | None
) -> tuple[ArrayRecord, RoundEntry | None]:
    """The model the run ends with (the selected round's, else the last), its round."""
    history = run.recorder.history
    if selection is None or selection.arrays is None or selection.round is None:
        return result.model, history.rounds[-1] if history.rounds else None
    log.info(
        "Saving the round-%d model (best %s); the last round was %d.",
        selection.round,
        selection.summary().metric,
        result.last_round,
    )
    return selection.arrays, history.round(selection.round)


def finalize(
    run: Federation,
    result: RunResult,
    selection: BestRound | None,
    reporter: RoundReporter,
    grid: Grid,
) -> FederationOutcome:
    """Choose the final model's decision threshold; save it, its ROC curve and
    privacy summary; write the report.
    """
    arrays, final_round = final_model(run, result, selection)
    decision = final_decision(run, grid, arrays)
    run.save(run.recorder.model_path, arrays, stored(decision))
    if selection is not None:
        selection.path.unlink(missing_ok=True)
    final = final_round.server if final_round is not None else {}
    roc: list[RocCurve] = []
    if run.test is not None:  # the final model's ROC curve on the server's test set
        run.model.load_state_dict(arrays.to_torch_state_dict())
        probs = predict_proba(run.model, run.test.x, pick_device(run.cfg.device))
        roc = roc_curves(run.test.y, probs, run.info.class_names)
        if decision is not None and decision.threshold is not None:
            decision.server_test = threshold_metrics(
                run.test.y, calibrate(probs, decision.temperature), decision.threshold
            )
    run.recorder.finish(
        "completed",
        final_server_metrics=final,
        privacy=reporter.privacy.final(),
        roc=roc,
        decision=decision,
    )
    log.info("Run finished. Outputs: %s", run.recorder.dir)
    if final or final_round is None or not final_round.federated:
        log.info("Final server-side metrics: %s", _summary(final) or "none")
    else:  # no server-side test set: the hospitals' weighted held-out metrics
        log.info("Final federated held-out metrics: %s", _federated(final_round))
    if decision is not None and decision.server_test:
        log.info(
            "At the stored threshold %.4f: %s",
            decision.threshold,
            _summary(decision.server_test),
        )
    if flagged := run.recorder.history.flagged_rounds():
        trained = run.recorder.history.screened_rounds()
        log.info(
            "Updates flagged as anomalous (history.json 'anomaly'): %s",
            ", ".join(f"{n} in {k} of {trained} rounds" for n, k in flagged.items()),
        )
    for line in reporter.privacy.lines():
        log.info(line)
    write_run_report(run.cfg, run.recorder)
    run.end_tracking("completed")
    return FederationOutcome("completed", run.recorder, result)


def final_decision(
    run: Federation, grid: Grid, arrays: ArrayRecord
) -> DecisionEntry | None:
    """The decision threshold and temperature of ``arrays`` (None: none asked).

    A failure here is logged and leaves the model without a decision: the run's
    training is done and must not be lost to it.
    """
    try:
        return choose_decision(
            grid,
            run.cfg,
            arrays,
            contract=run.contract,
            num_classes=run.info.num_classes,
        )
    except Exception:
        log.exception("Could not choose a decision threshold; saving without one.")
        return None


def write_run_report(cfg: RunConfig, recorder: RunRecorder) -> None:
    """Write report.html from the final history; a plotting error never fails a run."""
    if not cfg.report:
        return
    try:
        path = write_report(
            recorder.history, recorder.dir, run_config=cfg.to_run_config()
        )
    except Exception:  # the model and history are already saved
        log.exception("Could not write the run report.")
        return
    log.info("Report: %s", path)
