"""Local training and evaluation loops used by the ClientApp, the server and scripts."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from data.spec import Split
from models.metrics import classification_metrics


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of one local training call."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0  # cross-entropy target smoothing (0: hard labels)
    proximal_mu: float = 0.0
    seed: int = 0
    max_steps: int = 0  # > 0: exactly this many optimizer steps instead of epochs


OPTIMIZERS = {
    "sgd": lambda p, s: torch.optim.SGD(
        p, lr=s.learning_rate, momentum=s.momentum, weight_decay=s.weight_decay
    ),
    "adam": lambda p, s: torch.optim.Adam(
        p, lr=s.learning_rate, weight_decay=s.weight_decay
    ),
}


class CpuSGD:
    """``torch.optim.SGD``'s update (momentum, weight decay) for CPU parameters.

    The same single-tensor arithmetic, in the same order, so the weights are
    bit-identical to ``torch.optim.SGD`` on CPU (``tests/unit/test_training.py``).
    Why: the first use of any ``torch.optim`` optimizer imports ``torch._dynamo``
    (~2.6 s of CPU), paid by every simulation actor in round 1 and by a deployed
    hospital on every message (a fresh process each). Plain local training on CPU
    needs none of it.
    """

    def __init__(self, params: Iterable[torch.Tensor], settings: TrainSettings) -> None:
        self.params = list(params)
        self.lr, self.momentum = settings.learning_rate, settings.momentum
        self.weight_decay = settings.weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad
            if self.weight_decay != 0:
                grad = grad.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad)  # dampening 0
                grad = buf
            p.add_(grad, alpha=-self.lr)


def local_optimizer(model: nn.Module, settings: TrainSettings):
    """The optimizer of one local training call: :class:`CpuSGD` for SGD on CPU."""
    params = list(model.parameters())
    if settings.optimizer == "sgd" and all(p.device.type == "cpu" for p in params):
        return CpuSGD(params, settings)
    return OPTIMIZERS[settings.optimizer](params, settings)


# Learning-rate schedules across server rounds: fraction of the run done (0 at the
# first round) -> factor on ``learning-rate``. The server sends each round's rate.
LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda done: 1.0,
    "cosine": lambda done: 0.5 * (1.0 + math.cos(math.pi * done)),
}


def scheduled_learning_rate(
    schedule: str, learning_rate: float, step: int, num_steps: int
) -> float:
    """The learning rate of round (or epoch) ``step`` (1-based) of ``num_steps``.

    ``cosine`` decays from ``learning_rate`` at step 1 towards 0 after the last
    step (the last step still trains, at ``1 - cos(pi / num_steps)`` of the rate).
    """
    if step < 1 or num_steps < 1:
        raise ValueError(f"step {step} of {num_steps}: both must be >= 1.")
    done = min(step - 1, num_steps) / num_steps
    return learning_rate * LR_SCHEDULES[schedule](done)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA device is present.")
    return torch.device(name)


def seed_torch(seed: int, device: torch.device) -> None:
    """Seed torch for work on ``device``.

    On a CPU-only machine ``torch.manual_seed`` also queues a CUDA seed and
    records the caller's stack each time (a few ms per call, paid by every
    hospital on every message): the CPU generator alone is seeded there.
    """
    if device.type == "cpu" and not torch.cuda.is_available():
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


class BatchedTensors(TensorDataset):
    """A ``TensorDataset`` that a DataLoader reads a batch at a time.

    The DataLoader hands ``__getitems__`` the batch's indices (same sampler, same
    order): one tensor index per batch instead of a tuple per record and a
    collate that stacks them (~5 ms of a 160-record hospital's training message).
    """

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[rows] for t in self.tensors)


def _stacked(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return batch  # BatchedTensors already returns the stacked batch


def make_loader(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    batched: bool = False,
) -> DataLoader:
    """A DataLoader over an in-memory split, shuffled reproducibly when asked.

    A split that brings its own ``training_dataset(seed)`` (images with seeded
    batch augmentation) supplies the dataset and collate function; anything else
    is served as tensors (``batched``: a batch at a time, the same batches).
    """
    collate = None
    if hasattr(split, "training_dataset"):
        dataset, collate = split.training_dataset(seed)
    else:
        tensors = (
            torch.as_tensor(split.x, dtype=torch.float32),
            torch.as_tensor(split.y, dtype=torch.long),
        )
        dataset = BatchedTensors(*tensors) if batched else TensorDataset(*tensors)
        collate = _stacked if batched else None
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=collate,
    )


def proximal_term(
    model: nn.Module, global_params: list[torch.Tensor], mu: float
) -> torch.Tensor:
    """FedProx's ``(mu / 2) * sum_i ||w_i - w_global_i||^2`` (squared L2 distance).

    ``global_params`` must be detached copies of the round's global weights, in
    ``model.parameters()`` order.
    """
    sq = sum(
        torch.sum((w - g) ** 2)
        for w, g in zip(model.parameters(), global_params, strict=True)
    )
    return 0.5 * mu * sq


def training_batches(loader: DataLoader, settings: TrainSettings) -> Iterator:
    """The batches of one local training call.

    ``settings.epochs`` passes over ``loader``, or with ``max_steps > 0`` exactly
    that many batches: passes are repeated (each reshuffled by the loader) until
    enough are drawn, so every hospital takes the same number of steps whatever
    the size of its data.
    """
    if settings.max_steps <= 0:
        for _ in range(settings.epochs):
            yield from loader
        return
    drawn = 0
    while drawn < settings.max_steps:
        before = drawn
        for batch in loader:
            yield batch
            drawn += 1
            if drawn == settings.max_steps:
                return
        if drawn == before:  # an empty loader: nothing to repeat
            return


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    settings: TrainSettings,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    anchor: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train in place for ``settings.epochs`` (or ``settings.max_steps`` batches).

    Returns the mean training loss and the number of steps. With
    ``proximal_mu > 0`` the FedProx proximal term against ``anchor`` (detached
    tensors in ``model.parameters()`` order; default: the weights the model had on
    entry) is added to every batch loss; Ditto anchors a personal model to the
    round's global weights this way.
    """
    model.to(device).train()
    if optimizer is None:
        optimizer = local_optimizer(model, settings)
    if anchor is None:
        global_params = [p.detach().clone() for p in model.parameters()]
    else:
        global_params = [a.detach().to(device) for a in anchor]
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    total, count, steps = 0.0, 0, 0
    for x, y in training_batches(loader, settings):
        if len(y) == 0:  # Poisson sampling can draw an empty batch
            continue
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        objective = loss
        if settings.proximal_mu > 0:
            objective = loss + proximal_term(model, global_params, settings.proximal_mu)
        objective.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
        steps += 1
    if count == 0:
        raise RuntimeError("Local training saw no records.")
    return {"train_loss": total / count, "steps": float(steps)}


# Test-time augmentation (run config ``tta``, imaging): the views of a batch whose
# predicted probabilities are averaged. ``flip`` adds the left-right mirror image.
TTA_VIEWS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    "none": (lambda x: x,),
    "flip": (lambda x: x, lambda x: x.flip(-1)),
}


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
) -> np.ndarray:
    """Class probabilities for every input row (evaluation mode, batched).

    With ``model.tta`` set (see ``models.build_model``) the probabilities are the
    mean over the test-time views of each input.
    """
    model.to(device).eval()
    views = TTA_VIEWS[getattr(model, "tta", "none")]
    x = torch.as_tensor(x, dtype=torch.float32)
    out = []
    for i in range(0, len(x), batch_size):
        batch = x[i : i + batch_size].to(device)
        probs = [torch.softmax(model(view(batch)).double(), dim=1) for view in views]
        out.append(torch.stack(probs).mean(0).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2))


def evaluate_split(
    model: nn.Module, split: Split, device: torch.device
) -> dict[str, float]:
    """Clinical metrics of ``model`` on ``split``."""
    if len(split) == 0:
        raise ValueError("Cannot evaluate on an empty split.")
    return classification_metrics(split.y, predict_proba(model, split.x, device))


def set_deterministic(enabled: bool) -> None:
    """Make torch pick deterministic kernels (and fail loudly where none exists).

    Called by the ServerApp and every ClientApp when ``deterministic = true``; seeds
    are derived per round and hospital elsewhere
    (``app.client.hospital.hospital_seed``).
    """
    if not enabled:
        return
    # cuBLAS needs a fixed workspace for deterministic GEMMs on CUDA >= 10.2.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
