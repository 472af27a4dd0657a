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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid

from app.client.hospital import model_spec, task_contract
from app.config import RunConfig
from app.privacy.cohort_stats import GlobalNormalisation
from app.privacy.server import PrivacyReport, with_privacy
from app.secagg.registry import secure_aggregator
from app.server.averaging import ModelEMA
from app.server.checkpoints import (
    Checkpoint,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from app.server.outputs import RunRecorder
from app.server.report import roc_curves, write_report
from app.server.runner import RoundHook, RoundRunner, RunResult
from app.server.tensorboard import TensorBoardLogger
from data.lazy import load
from data.preprocessing import NORMALISATIONS
from data.registry import get_dataset
from data.spec import Split
from models.checkpoint import load_model, save_model
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
}

# Ledger keys copied into each history.json round entry (besides per-hospital metrics).
LEDGER_KEYS = (
    "federated",
    "rejected",
    "errors",
    "no_reply",
    "skipped",
    "anomaly",
    "secure_aggregation",
)


def _summary(metrics: dict[str, float]) -> str:
    keys = ("accuracy", "auc", "sensitivity", "specificity", "loss")
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


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
    ) -> None:
        self.cfg, self.recorder, self.strategy = cfg, recorder, strategy
        self.tensorboard = tensorboard
        self.model, self.test = model, test
        self.device = pick_device(cfg.device)
        self.start = time.monotonic()
        self.first_round = first_round
        self.privacy = PrivacyReport(cfg)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics: dict[str, float] = {}
        if self.test is not None:
            self.model.load_state_dict(arrays.to_torch_state_dict())
            metrics = evaluate_split(self.model, self.test, self.device)
        ledger = self.strategy.ledger.rounds.get(server_round, {})
        elapsed = time.monotonic() - self.start
        entry = {
            "round": server_round,
            "server": metrics,
            **_hospitals(ledger),
            "elapsed_s": round(elapsed, 3),
        }
        if privacy := self.privacy.round_entry(server_round, ledger, self.strategy):
            entry["privacy"] = privacy
        self.recorder.record_round(entry)
        if self.tensorboard is not None:
            self.tensorboard.log_round(entry)
        total = self.cfg.num_server_rounds
        done = server_round - self.first_round + 1
        eta = elapsed / done * (total - server_round) if done > 0 else float("nan")
        dropped = {
            *entry.get("rejected", {}),
            *entry.get("errors", {}),
            *(n for names in entry.get("no_reply", {}).values() for n in names),
        }
        log.info(
            "[round %d/%d] elapsed %.1fs eta %s | hospitals trained %d, "
            "dropped %d%s | %s",
            server_round,
            total,
            elapsed,
            f"{eta:.1f}s" if eta == eta else "-",
            len(ledger.get("train", {})) if "skipped" not in entry else 0,
            len(dropped),
            " | SKIPPED: " + entry["skipped"] if "skipped" in entry else "",
            _summary(metrics) or "no server-side test set",
        )
        if "privacy" in entry:
            log.info(
                "[round %d/%d] privacy: %s",
                server_round,
                total,
                self.privacy.short(entry["privacy"]),
            )
        clean = {k: v for k, v in metrics.items() if v == v}
        return MetricRecord(clean) if clean else None


def _hospitals(ledger: dict[str, Any]) -> dict[str, Any]:
    """Reshape the strategy ledger into ``{"hospitals": {name: {train, evaluate}}}``."""
    if not ledger:
        return {}
    hospitals: dict[str, dict[str, Any]] = {}
    for phase in ("train", "evaluate"):
        for name, metrics in ledger.get(phase, {}).items():
            hospitals.setdefault(name, {})[phase] = metrics
    out: dict[str, Any] = {"hospitals": hospitals}
    for key in LEDGER_KEYS:
        if ledger.get(key):
            out[key] = ledger[key]
    return out


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
        selected = self.recorder.history.pop("selected_round", None)
        if not isinstance(selected, dict) or not self.path.is_file():
            return
        rounds = {r["round"] for r in self.recorder.history["rounds"]}
        if selected.get("round") in rounds:  # not a round the resume will re-run
            state = load_model(self.path)[1]["state_dict"]
            self.round, self.value = int(selected["round"]), float(selected["value"])
            self.arrays = ArrayRecord(state)
            self.recorder.history["selected_round"] = selected

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

    def summary(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "metric": f"federated held-out {self.metric}",
            "value": self.value,
        }


@dataclass
class FederationOutcome:
    """What a run ended with (also in history.json)."""

    status: str
    recorder: RunRecorder
    result: RunResult


def run_federation(
    grid: Grid, context: Context, *, after_round: Sequence[RoundHook] = ()
) -> FederationOutcome:
    """Run (or resume) the federation described by ``context.run_config``."""
    cfg = RunConfig.from_run_config(context.run_config)
    resume: Checkpoint | None = None
    if cfg.resume_from:
        resume = load_checkpoint(cfg.resume_from)
        check_resumable(cfg.to_run_config(), resume)
    set_deterministic(cfg.deterministic)
    torch.manual_seed(cfg.seed)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    dataset = get_dataset(cfg.data_spec())
    info = dataset.info()
    # global normalisation: replaced by the globally standardised test set once known
    test = (
        dataset.server_test()
        if cfg.server_eval and cfg.normalisation == "per-site"
        else None
    )
    spec = model_spec(cfg, info)
    model = spec.build()
    if cfg.init_model:  # transfer: start from a model trained on a source population
        model.load_state_dict(load_initial_weights(cfg.init_model, spec, info))
    strategy = build_strategy(
        cfg.strategy,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_hospitals=cfg.min_hospitals,
        wait_for_hospitals=cfg.wait_for_hospitals,
        seed=cfg.seed,
        **{name: getattr(cfg, name) for name in STRATEGIES[cfg.strategy].options},
        **({"secure": secure} if (secure := secure_aggregator(cfg)) else {}),
    )
    strategy = with_privacy(cfg, strategy)
    arrays = ArrayRecord(model.state_dict())
    start_round = 1
    if resume is None:
        recorder = RunRecorder(cfg, context.run_id)
    else:
        recorder = RunRecorder.resume(
            cfg, context.run_id, resume.run_dir, resume.server_round
        )
        strategy.load_state_dict(resume.strategy_state)
        arrays = resume.arrays
        start_round = resume.server_round + 1
        log.info(
            "Resuming run %s from %s (round %d done).",
            recorder.dir.name,
            resume.path,
            resume.server_round,
        )
    recorder.history["class_names"] = list(info.class_names)
    # Fails here, before any training, when the tensorboard package is missing.
    tensorboard = TensorBoardLogger(recorder.dir) if cfg.tensorboard else None
    log.info(
        "medflower run %s: %s, %s on %s (%s test records), writing to %s",
        recorder.history["run_name"],
        cfg.strategy,
        cfg.model_name,
        info.description,
        len(test)
        if test is not None
        else ("globally standardised" if cfg.server_eval else "no"),
        recorder.dir,
    )

    strategy.summary()
    averaging = ModelEMA(cfg.model_ema)
    if resume is not None:
        averaging.load_state_dict(resume.averaging_state)

    def checkpoint(
        server_round: int, round_arrays: ArrayRecord, _: ArrayRecord
    ) -> None:
        save_checkpoint(
            recorder.dir,
            server_round=server_round,
            arrays=round_arrays,
            strategy_state=strategy.state_dict(),
            averaging_state=averaging.state_dict(),
            run_config=cfg.to_run_config(),
            keep=cfg.checkpoint_keep,
        )

    contract = task_contract(info)
    norm: GlobalNormalisation | None = None
    normaliser = NORMALISATIONS[cfg.normalisation]
    if normaliser is not None:
        try:
            norm = load(normaliser)(grid, cfg, contract, info.num_classes)
        except FederationStopped as stop:
            recorder.finish("stopped", stop_reason=str(stop), last_round=0)
            log.error("Run stopped before round 1: %s", stop)
            return FederationOutcome(
                "stopped", recorder, RunResult(arrays, 0, stopped=str(stop))
            )
        recorder.history["normalisation"] = norm.history()
        contract = {**contract, **norm.config()}
        if cfg.server_eval:
            raw = dataset.raw_server_test()
            test = Split(norm.scaler.transform(raw.x), raw.y)

    def save(path: Path, round_arrays: ArrayRecord) -> None:
        save_model(
            path,
            round_arrays.to_torch_state_dict(),
            spec,
            info,
            run_config=cfg.to_run_config(),
            preprocessing=(
                PREPROCESSING[cfg.task] if norm is None else norm.preprocessing()
            ),
        )

    selection = (
        BestRound(cfg.select_best, strategy, recorder, save)
        if cfg.select_best != "none"
        else None
    )
    reporter = RoundReporter(
        cfg, recorder, strategy, model, test, start_round, tensorboard
    )
    runner = RoundRunner(
        strategy=strategy,
        grid=grid,
        num_rounds=cfg.num_server_rounds,
        round_timeout=cfg.round_timeout,
        wait_for_hospitals=cfg.wait_for_hospitals,
        train_config=ConfigRecord({"proximal-mu": 0.0, **contract}),
        evaluate_config=ConfigRecord(dict(contract)),
        evaluate_fn=reporter,
        # selection first: the checkpoint then covers the selected model's file
        after_round=[*([selection] if selection else []), checkpoint, *after_round],
        round_config=lambda r: {
            "learning-rate": scheduled_learning_rate(
                cfg.lr_schedule, cfg.learning_rate, r, cfg.num_server_rounds
            )
        },
        averaging=averaging,
    )
    if resume is not None:
        # Last, so nothing above (model init, data) consumes the restored state.
        set_rng_state(resume.rng)
    try:
        result = runner.run(arrays, start_round)
    except BaseException:
        recorder.finish("failed")
        write_run_report(cfg, recorder)
        raise
    finally:
        if tensorboard is not None:
            tensorboard.close()
    if result.stopped is not None:
        recorder.finish(
            "stopped", stop_reason=result.stopped, last_round=result.last_round
        )
        write_run_report(cfg, recorder)
        log.error(
            "Run stopped: %s The last checkpoint (round %d) is in %s; continue with "
            "resume-from='%s'.",
            result.stopped,
            result.last_round,
            recorder.dir / "checkpoints",
            recorder.dir,
        )
        return FederationOutcome("stopped", recorder, result)
    final_arrays = result.model
    final_round = recorder.history["rounds"][-1] if recorder.history["rounds"] else {}
    if selection is not None and selection.arrays is not None:
        final_arrays = selection.arrays
        final_round = next(
            r for r in recorder.history["rounds"] if r["round"] == selection.round
        )
        log.info(
            "Saving the round-%d model (best %s); the last round was %d.",
            selection.round,
            selection.summary()["metric"],
            result.last_round,
        )
    save(recorder.model_path, final_arrays)
    if selection is not None:
        selection.path.unlink(missing_ok=True)
    final = final_round.get("server", {})
    roc: list[dict[str, Any]] = []
    if test is not None:  # the final model's ROC curve on the server's test set
        model.load_state_dict(final_arrays.to_torch_state_dict())
        probs = predict_proba(model, test.x, pick_device(cfg.device))
        roc = roc_curves(test.y, probs, info.class_names)
    recorder.finish(
        "completed",
        final_server_metrics=final,
        privacy=reporter.privacy.final(),
        roc=roc,
    )
    log.info("Run finished. Outputs: %s", recorder.dir)
    log.info("Final server-side metrics: %s", _summary(final) or "none")
    for line in reporter.privacy.lines():
        log.info(line)
    write_run_report(cfg, recorder)
    return FederationOutcome("completed", recorder, result)


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
