"""Federated runs for the benchmarks, and the baselines they are compared with.

:func:`federate` is the one way a suite runs a federation: the real ServerApp and
ClientApp in process (:func:`scripts.harness.inprocess.run_inprocess`, every
message serialised as on the wire), Flower's console quiet, the run's status
checked, and a :class:`FederatedRun` back with the history, the final model and
the traffic. Every history the benchmarks read goes through
:func:`app.server.history.read_history` (typed records). The pooled (centralised)
and local-only baselines train the same model with the same loop
(``models.training``) on the same hospitals' records.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.client.hospital import model_spec, train_settings
from app.client_app import app as client_app
from app.config import RunConfig
from app.server.decision import resolved_rule, stored
from app.server.history import RoundEntry, RunHistory, read_history
from app.server_app import app as server_app
from data.spec import HospitalData, Split
from models import ModelSpec
from models.checkpoint import load_model
from models.decision import Decision, decide
from models.shape import fit_statistics
from models.training import evaluate_split, make_loader, predict_proba, train_epochs
from scripts.benchmarks.core import progress
from scripts.harness.inprocess import InProcessGrid, full_run_config, run_inprocess

CPU = torch.device("cpu")


@contextlib.contextmanager
def quiet_flower(level: int = logging.ERROR) -> Iterator[None]:
    """Raise Flower's console handler (which our loggers share) to ``level``.

    In-process benchmark runs would otherwise print every round of every seed.
    """
    from flwr.common.logger import console_handler

    old = console_handler.level
    console_handler.setLevel(level)
    try:
        yield
    finally:
        console_handler.setLevel(old)


@dataclass(frozen=True)
class FederatedRun:
    """The outcome of one completed in-process federated run.

    ``final_model`` is None for a run that saves none (``task = "vertical"``: each
    hospital keeps its part); ``model_path`` is None also when the run's folder
    was temporary. ``seconds`` and ``cpu_seconds`` are the run's wall and process
    CPU time.
    """

    history: RunHistory
    final_model: torch.nn.Module | None
    model_path: Path | None
    grid: InProcessGrid
    seconds: float
    cpu_seconds: float

    @property
    def model(self) -> torch.nn.Module:
        """The final global model (raises for a run that saves none)."""
        if self.final_model is None:
            raise ValueError("this run saved no final_model.pt")
        return self.final_model

    @property
    def decision(self) -> Decision | None:
        """The decision threshold and temperature stored with the final model."""
        return stored(self.history.decision)

    @property
    def final_metrics(self) -> dict[str, Any]:
        """The server's metrics of the final model."""
        return self.history.final_server_metrics or {}

    @property
    def rounds(self) -> list[RoundEntry]:
        return self.history.rounds

    @property
    def wire_bytes(self) -> int:
        """Bytes of every message, both ways, as serialised on the wire."""
        return sum(t.num_bytes for t in self.grid.traffic)

    @property
    def messages(self) -> int:
        return len(self.grid.traffic)

    def last_evaluations(self) -> dict[str, dict[str, Any]]:
        """Each hospital's evaluate metrics in the last round, by hospital name."""
        hospitals = self.rounds[-1].hospitals or {}
        return {
            name: phases["evaluate"]
            for name, phases in hospitals.items()
            if "evaluate" in phases
        }


def federate(
    run_config: Mapping[str, Any],
    num_hospitals: int,
    *,
    out_dir: Path | None = None,
    name: str = "run",
    keep_delivered: bool = True,
) -> FederatedRun:
    """Run the real ServerApp against ``num_hospitals`` in-process ClientApps.

    ``run_config`` holds kebab-case overrides of the defaults. The run writes to
    ``out_dir/name`` (kept) or to a temporary folder when ``out_dir`` is None; the
    run report is skipped unless ``report`` is set. ``keep_delivered=False`` for
    long runs (see :class:`~scripts.harness.inprocess.InProcessGrid`). Raises
    RuntimeError when the run did not complete.
    """
    temporary = out_dir is None
    with contextlib.ExitStack() as stack:
        if out_dir is None:
            tmp = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="medflower-bench-")
            )
            out_dir = Path(tmp)
        config = {
            "report": False,
            **run_config,
            "output-dir": str(out_dir),
            "run-name": name,
        }
        full = full_run_config(**config)
        wall, cpu = time.perf_counter(), time.process_time()
        with quiet_flower():
            grid = run_inprocess(
                server_app,
                client_app,
                num_hospitals=num_hospitals,
                run_config=full,
                keep_delivered=keep_delivered,
            )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        progress(f"{name}: {described(full, num_hospitals)}, {wall:.1f} s")
        run_dir = out_dir / name
        history = read_history(run_dir)
        if history.status != "completed":
            raise RuntimeError(f"benchmark run {name} ended {history.status}")
        path = run_dir / "final_model.pt"
        model = load_model(path)[0] if path.is_file() else None
        kept = None if temporary or model is None else path
    return FederatedRun(history, model, kept, grid, wall, cpu)


def described(run_config: Mapping[str, Any], num_hospitals: int) -> str:
    """A run in a few words: strategy, data, hospitals, rounds, seed."""
    cfg = RunConfig.from_run_config(run_config)
    return (
        f"{cfg.strategy} on {cfg.dataset}, {num_hospitals} hospitals, "
        f"{cfg.num_server_rounds} rounds, seed {cfg.seed}"
    )


# ------------------------------------------------------------------ baselines


def initial_model(spec: ModelSpec, seed: int) -> torch.nn.Module:
    """A baseline's starting network: built right after seeding torch with the
    run's seed, as the ServerApp builds the federation's initial model.
    """
    torch.manual_seed(seed)
    return spec.build()


def pool(splits: Sequence[Split]) -> Split:
    """Concatenate splits (each already preprocessed by its own site)."""
    return Split(
        np.concatenate([s.x for s in splits]), np.concatenate([s.y for s in splits])
    )


def train_pooled(
    cfg: RunConfig, sites: Sequence[HospitalData], train: Split, epochs: int
) -> torch.nn.Module:
    """Train a fresh model of ``cfg`` on ``train`` for ``epochs`` epochs.

    The centralised baseline when ``train`` pools every hospital's training split;
    one hospital alone when it is that hospital's.
    """
    model = initial_model(model_spec(cfg, sites[0].info), cfg.seed)
    fit_statistics(model, train.x)  # a `shape` model: standardised on its data
    loader = make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    train_epochs(model, loader, train_settings(cfg, epochs=epochs, max_steps=0), CPU)
    return model


def local_only(
    cfg: RunConfig, sites: Sequence[HospitalData], test: Split, epochs: int
) -> dict[str, Any]:
    """Each hospital trains alone for ``epochs`` epochs: the no-federation baseline.

    Hospital columns: its own model on its own held-out rows; ``pooled``: every
    held-out record scored by its hospital's model; ``pooled_mean_of_local_models``:
    each local model on the pooled ``test`` set, averaged.
    """
    local: dict[str, Any] = {}
    correct, total, across = 0.0, 0, []
    for site in sites:
        model = train_pooled(cfg, sites, site.train, epochs)
        local[site.name] = evaluate_split(model, site.val, CPU)["accuracy"]
        correct += local[site.name] * len(site.val)
        total += len(site.val)
        across.append(evaluate_split(model, test, CPU)["accuracy"])
    return {
        "pooled": correct / total,
        **local,
        "pooled_mean_of_local_models": float(np.mean(across)),
    }


def pooled_decision(
    cfg: RunConfig, model: torch.nn.Module, held_out: Split, num_classes: int
) -> Decision:
    """The decision a centralised baseline stores: chosen as the federated run's
    (same rule, same bins, same temperature grid) on the pooled held-out records.
    """
    probs = predict_proba(model, held_out.x, CPU)
    return decide(
        held_out.y,
        probs,
        rule=resolved_rule(cfg, num_classes),
        target_sensitivity=cfg.target_sensitivity,
        temperature=cfg.calibration == "temperature",
    )
