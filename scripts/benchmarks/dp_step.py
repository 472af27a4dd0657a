"""``medflower benchmark dp-step``: DP-SGD step time / plain step time.

For the default model of each task (``models.default_model``) at the run config's
default batch size, in one process: a plain optimiser step against a DP-SGD step
set up exactly as ``app.privacy.dp_sgd.train_dp`` does (``private_training``:
Poisson sampling, Opacus' DPOptimizer), both on the same synthetic inputs, once
per way of computing per-sample gradients (``dp-grad-sampler``: ``layers``, the
default, and Opacus' ``hooks``). Plain and DP steps alternate, so a busy machine
slows both alike; the figure is the ratio of their median step times. The DP step
also breaks down into forward, backward (with per-sample gradients) and optimiser
step (clipping, noise), which shows where the extra time goes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.config import RunConfig
from app.privacy.dp_sgd import (
    DEFAULT_GRAD_SAMPLER,
    GRAD_SAMPLERS,
    DPSettings,
    check_dp_compatible,
    private_training,
)
from data.spec import DatasetInfo, Split
from models import build_model, default_model, input_kwargs
from models.training import make_loader, pick_device
from scripts.benchmarks.core import BenchmarkResult, register

GOAL_RATIO = 1.5


@dataclass(frozen=True)
class StepCase:
    """One model and input shape to time (the task's default model unless named)."""

    task: str
    input_shape: tuple[int, ...]
    num_classes: int = 2
    model_name: str = ""

    @property
    def model(self) -> str:
        return self.model_name or default_model(self.task)

    def build(self) -> nn.Module:
        info = DatasetInfo(self.task, self.input_shape, self.num_classes)
        return build_model(self.model, **input_kwargs(self.model, info))


# UCI heart disease: 13 features; BreastMNIST: 28x28 gray; both binary.
CASES = (StepCase("tabular", (13,)), StepCase("imaging", (1, 28, 28)))


def _cycle(loader: Any) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    batches = iter(())

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    return next_batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(
    case: StepCase,
    *,
    batch_size: int,
    steps: int,
    device: torch.device,
    grad_sampler: str = DEFAULT_GRAD_SAMPLER,
    records: int = 1024,
) -> dict[str, float]:
    """Median seconds per plain and per DP-SGD step (and the DP step's parts)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((records, *case.input_shape), generator=gen).numpy()
    y = torch.randint(case.num_classes, (records,), generator=gen).numpy()
    split = Split(x, y)
    criterion = nn.CrossEntropyLoss()

    torch.manual_seed(0)
    plain_model = case.build().to(device).train()
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.01)
    plain_batch = _cycle(make_loader(split, batch_size, shuffle=True, seed=0))

    torch.manual_seed(0)
    dp_model = case.build().to(device).train()
    check_dp_compatible(dp_model)
    dp_settings = DPSettings(
        noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, grad_sampler=grad_sampler
    )

    def plain_step() -> None:
        xb, yb = plain_batch()
        plain_opt.zero_grad()
        criterion(plain_model(xb.to(device)), yb.to(device)).backward()
        plain_opt.step()
        _sync(device)

    def dp_step() -> tuple[float, float, float]:
        xb, yb = dp_batch()
        xb, yb = xb.to(device), yb.to(device)
        t0 = time.perf_counter()
        dp_opt.zero_grad()
        loss = criterion(dp_model(xb), yb)
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        dp_opt.step()
        _sync(device)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    with private_training(
        dp_model,
        torch.optim.SGD(dp_model.parameters(), lr=0.01),
        make_loader(split, batch_size, shuffle=True, seed=1),
        dp_settings,
        noise_generator=torch.Generator(device=device).manual_seed(2),
    ) as (_, dp_opt, dp_loader):
        dp_batch = _cycle(dp_loader)
        for _ in range(2):  # warm-up: allocations, hooks, allocator caches
            plain_step()
            dp_step()
        plain, dp, parts = [], [], []
        for _ in range(steps):
            start = time.perf_counter()
            plain_step()
            plain.append(time.perf_counter() - start)
            split_times = dp_step()
            parts.append(split_times)
            dp.append(sum(split_times))
    med = statistics.median
    return {
        "plain_step_s": med(plain),
        "dp_step_s": med(dp),
        "ratio": med(dp) / med(plain),
        "dp_forward_s": med(p[0] for p in parts),
        "dp_backward_s": med(p[1] for p in parts),
        "dp_optimizer_s": med(p[2] for p in parts),
    }


def dp_step_rows(*, steps: int, threads: int = 1) -> list[dict[str, Any]]:
    """One row per task's default model and grad sampler, at the default batch."""
    batch_size = RunConfig().batch_size
    torch.set_num_threads(threads)
    rows = []
    for case in CASES:
        device = pick_device("auto") if case.task == "imaging" else torch.device("cpu")
        for sampler in GRAD_SAMPLERS:
            times = step_times(
                case,
                batch_size=batch_size,
                steps=steps,
                device=device,
                grad_sampler=sampler,
            )
            rows.append(
                {
                    "task": case.task,
                    "model": case.model,
                    "grad_sampler": sampler,
                    "params": sum(p.numel() for p in case.build().parameters()),
                    "batch": batch_size,
                    "device": f"{device.type} ({threads} thread(s))",
                    **times,
                }
            )
    return rows


def default_row(rows: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """The row of ``task`` measured as local DP trains by default."""
    return next(
        r
        for r in rows
        if r["task"] == task and r["grad_sampler"] == DEFAULT_GRAD_SAMPLER
    )


@register("dp-step")
def run_suite(args: argparse.Namespace) -> BenchmarkResult:
    """Benchmark suite entry point (``medflower benchmark dp-step``)."""
    rows = dp_step_rows(steps=10 if args.quick else 40)
    imaging = default_row(rows, "imaging")
    summary = {
        f"ratio_{r['model']}_{r['grad_sampler']}": round(r["ratio"], 2) for r in rows
    } | {
        "goal": f"imaging default model DP/plain step <= {GOAL_RATIO}x",
        "goal_met": bool(imaging["ratio"] <= GOAL_RATIO),
    }
    notes = [
        "Median over alternating plain and DP steps after a warm-up; synthetic "
        "inputs of the real shapes (heart disease 13 features, BreastMNIST 1x28x28).",
        "DP step = per-sample gradients in backward (grad_sampler 'layers': "
        "app.privacy.per_sample, the default; 'opacus': Opacus hooks) + Opacus "
        "DPOptimizer (per-sample clipping, Gaussian noise) with Poisson batches of "
        "the same expected size, as local DP training runs it.",
    ]
    return BenchmarkResult("dp-step", rows, summary, notes)
