"""medflower ServerApp: builds the run from its config and drives the strategy."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from app.config import RunConfig
from app.hospital import model_spec
from app.logs import route_to_flower
from app.report import roc_curves, write_report
from app.run_outputs import RunRecorder
from app.tensorboard_log import TensorBoardLogger
from data.registry import get_dataset
from data.spec import Split
from models.checkpoint import save_model
from models.training import evaluate_split, pick_device, predict_proba
from strategies import STRATEGY_OPTIONS, build_strategy

log = logging.getLogger(__name__)

PREPROCESSING = {
    "standardize": "per-site",
    "note": "each site standardises features with its own training statistics",
}

app = ServerApp()


def _summary(metrics: dict[str, float]) -> str:
    keys = ("accuracy", "auc", "sensitivity", "specificity", "loss")
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


class RoundReporter:
    """Server-side evaluation after each round, history.json and progress lines."""

    def __init__(
        self, cfg: RunConfig, recorder: RunRecorder, strategy: Any,
        model: torch.nn.Module, test: Split | None,
        tensorboard: TensorBoardLogger | None = None,
    ) -> None:
        self.cfg, self.recorder, self.strategy = cfg, recorder, strategy
        self.model, self.test = model, test
        self.tensorboard = tensorboard
        self.device = pick_device(cfg.device)
        self.start = time.monotonic()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics: dict[str, float] = {}
        if self.test is not None:
            self.model.load_state_dict(arrays.to_torch_state_dict())
            metrics = evaluate_split(self.model, self.test, self.device)
        ledger = self.strategy.ledger.rounds.get(server_round, {})
        elapsed = time.monotonic() - self.start
        entry = {"round": server_round, "server": metrics, **_hospitals(ledger),
                 "elapsed_s": round(elapsed, 3)}
        self.recorder.record_round(entry)
        if self.tensorboard is not None:
            self.tensorboard.log_round(entry)
        total = self.cfg.num_server_rounds
        eta = elapsed / server_round * (total - server_round) if server_round else float("nan")
        log.info(
            "[round %d/%d] elapsed %.1fs eta %s | hospitals trained %d, dropped %d | %s",
            server_round, total, elapsed,
            f"{eta:.1f}s" if eta == eta else "-",
            len(entry.get("hospitals", {})),
            len(entry.get("rejected", {})) + len(entry.get("errors", {})),
            _summary(metrics) or "no server-side test set",
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
    for key in ("rejected", "errors", "failed"):
        if ledger.get(key):
            out[key] = ledger[key]
    return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` of federated training and write the run's outputs."""
    route_to_flower()
    cfg = RunConfig.from_run_config(context.run_config)
    torch.manual_seed(cfg.seed)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    dataset = get_dataset(cfg.data_spec())
    info = dataset.info()
    test = dataset.server_test() if cfg.server_eval else None
    spec = model_spec(cfg, info)
    model = spec.build()
    strategy = build_strategy(
        cfg.strategy,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_hospitals=cfg.min_hospitals,
        **{name: getattr(cfg, name) for name in STRATEGY_OPTIONS[cfg.strategy]},
    )
    recorder = RunRecorder(cfg, context.run_id)
    recorder.history["class_names"] = list(info.class_names)
    # Fails before training (clear message) when the package is missing.
    tensorboard = TensorBoardLogger(recorder.dir) if cfg.tensorboard else None
    log.info("medflower run %s: %s, %s on %s (%s test records), writing to %s",
             recorder.history["run_name"], cfg.strategy, cfg.model, info.description,
             len(test) if test is not None else "no", recorder.dir)
    reporter = RoundReporter(cfg, recorder, strategy, model, test, tensorboard)
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=cfg.num_server_rounds,
            timeout=cfg.round_timeout,
            train_config=ConfigRecord({"proximal-mu": 0.0}),
            evaluate_fn=reporter,
        )
    except BaseException:
        recorder.finish("failed")
        _write_report(cfg, recorder)
        raise
    finally:
        if tensorboard is not None:
            tensorboard.close()
    final_arrays = result.arrays if len(result.arrays) else ArrayRecord(model.state_dict())
    save_model(
        recorder.model_path,
        final_arrays.to_torch_state_dict(),
        spec,
        info,
        run_config=cfg.to_run_config(),
        preprocessing=PREPROCESSING,
    )
    final = recorder.history["rounds"][-1]["server"] if recorder.history["rounds"] else {}
    roc: list[dict[str, Any]] = []
    if test is not None:
        model.load_state_dict(final_arrays.to_torch_state_dict())
        probs = predict_proba(model, test.x, reporter.device)
        roc = roc_curves(test.y, probs, info.class_names)
    recorder.finish("completed", final_server_metrics=final, roc=roc)
    log.info("Run finished. Outputs: %s", recorder.dir)
    log.info("Final server-side metrics: %s", _summary(final) or "none")
    _write_report(cfg, recorder)


def _write_report(cfg: RunConfig, recorder: RunRecorder) -> None:
    """Write report.html from the final history; a plotting problem never fails a run."""
    if not cfg.report:
        return
    try:
        path = write_report(recorder.history, recorder.dir, run_config=cfg.to_run_config())
    except Exception:  # the model and history are already saved
        log.exception("Could not write the run report.")
        return
    log.info("Report: %s", path)
