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
from app.privacy_report import PrivacyReport
from app.run_outputs import RunRecorder
from data.registry import get_dataset
from data.spec import Split
from models.checkpoint import save_model
from models.training import evaluate_split, pick_device
from strategies import STRATEGY_OPTIONS, build_strategy
from strategies.central_dp import CentralDP, GaussianNoise

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
    ) -> None:
        self.cfg, self.recorder, self.strategy = cfg, recorder, strategy
        self.model, self.test = model, test
        self.device = pick_device(cfg.device)
        self.start = time.monotonic()
        self.privacy = PrivacyReport(cfg)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics: dict[str, float] = {}
        if self.test is not None:
            self.model.load_state_dict(arrays.to_torch_state_dict())
            metrics = evaluate_split(self.model, self.test, self.device)
        ledger = self.strategy.ledger.rounds.get(server_round, {})
        entry = {"round": server_round, "server": metrics, **_hospitals(ledger)}
        if (privacy := self.privacy.round_entry(server_round, ledger, self.strategy)):
            entry["privacy"] = privacy
        self.recorder.record_round(entry)
        total = self.cfg.num_server_rounds
        elapsed = time.monotonic() - self.start
        eta = elapsed / server_round * (total - server_round) if server_round else float("nan")
        log.info(
            "[round %d/%d] elapsed %.1fs eta %s | hospitals trained %d, dropped %d | %s",
            server_round, total, elapsed,
            f"{eta:.1f}s" if eta == eta else "-",
            len(entry.get("hospitals", {})),
            len(entry.get("rejected", {})) + len(entry.get("errors", {})),
            _summary(metrics) or "no server-side test set",
        )
        if "privacy" in entry:
            log.info("[round %d/%d] privacy: %s", server_round, total,
                     self.privacy.short(entry["privacy"]))
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
    if cfg.dp == "central":
        strategy = CentralDP(
            strategy,
            clip_norm=cfg.dp_update_clip_norm,
            delta=cfg.dp_delta,
            noise_multiplier=cfg.dp_noise_multiplier,
            target_epsilon=cfg.dp_target_epsilon,
            num_rounds=cfg.num_server_rounds,
            expected_sample_rate=cfg.fraction_train,
            accountant=cfg.dp_accountant,
            noise=GaussianNoise(secure=cfg.dp_secure_rng),
        )
    recorder = RunRecorder(cfg, context.run_id)
    log.info("medflower run %s: %s, %s on %s (%s test records), writing to %s",
             recorder.history["run_name"], cfg.strategy, cfg.model, info.description,
             len(test) if test is not None else "no", recorder.dir)
    reporter = RoundReporter(cfg, recorder, strategy, model, test)
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
        raise
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
    recorder.finish(
        "completed", final_server_metrics=final, privacy=reporter.privacy.final()
    )
    log.info("Run finished. Outputs: %s", recorder.dir)
    log.info("Final server-side metrics: %s", _summary(final) or "none")
    for line in reporter.privacy.lines():
        log.info(line)
