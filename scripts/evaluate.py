"""``medflower evaluate``: apply a saved model to held-out data; clinical report.

The data are resolved by the model's task through ``SOURCES`` (tabular: WDBC, a
heart-disease directory, a CSV; imaging: a MedMNIST ``.npz`` split, an image
folder, the synthetic lesions), checked against what the model was built for,
and scored with accuracy, balanced accuracy, ROC AUC, sensitivity/specificity or
per-class recall, the confusion matrix, calibration and bootstrap confidence
intervals; a binary model's decisions at its stored threshold and at 0.5, after
its stored temperature (:mod:`models.decision`). ``--out DIR`` adds report.json
and PNG figures; ``--per-site`` scores every hospital's held-out split of the
run's federation. Its arguments are
declared in :mod:`scripts.evaluate_cli` (light, for ``--help``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.config import RunConfig
from app.jsonio import dumps, json_safe, write_json
from app.server.history import HistoryError, history_path, read_history
from data.base import standardized
from data.imaging import ImageFolderDataset, MedMNISTDataset, SyntheticLesionsDataset
from data.preprocessing import Standardizer
from data.registry import get_dataset
from data.spec import DataError, Split
from data.tabular import read_labelled_csv, standardize_for_evaluation
from models.checkpoint import ModelFileError, load_model
from models.decision import Decision, threshold_metrics
from models.metrics import (
    bootstrap_ci,
    brier_score,
    classification_metrics,
    confusion,
    expected_calibration_error,
    per_class_recall,
)
from models.training import pick_device, predict_proba


@dataclass(frozen=True)
class EvalData:
    """Resolved evaluation data: the split, where it came from, and notes."""

    split: Split
    dataset: str
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ tabular data


def global_scaler(payload: dict[str, Any]) -> Standardizer | None:
    """The global statistics a ``dp-global`` run saved with its model, if any."""
    prep = payload.get("preprocessing") or {}
    return Standardizer.from_dict(prep) if prep.get("standardize") == "global" else None


def tabular_source(args: argparse.Namespace, payload: dict[str, Any]) -> EvalData:
    """WDBC, a heart-disease directory or a CSV, standardised as the model expects.

    Like a new site (its own statistics), or with the global statistics saved in
    the model file by a ``normalisation = "dp-global"`` run.
    """
    cfg = RunConfig.from_saved(payload["run_config"])
    scaler = global_scaler(payload)
    data = args.data
    path = Path(data)
    if data == "wdbc":
        kind, cfg = "wdbc", cfg.replace(dataset="wdbc", data_path="")
    elif path.is_dir():
        kind, cfg = (
            "heart-disease",
            cfg.replace(dataset="heart-disease", data_path=data),
        )
    elif path.is_file():
        x, y, _ = read_labelled_csv(path, args.label_column or cfg.label_column)
        xs = standardize_for_evaluation(x) if scaler is None else scaler.transform(x)
        split = Split(xs, y)
        _check_tabular(payload, split, data)
        return EvalData(split, "csv")
    else:
        raise DataError(f"--data {data!r}: not 'wdbc', a directory or a file.")
    if args.split != "test":
        raise DataError(
            f"--split {args.split} is only available for CSV files, not {kind}."
        )
    dataset = get_dataset(cfg.data_spec())
    if scaler is None:
        split = dataset.server_test()
    else:
        raw = dataset.raw_server_test()
        split = Split(scaler.transform(raw.x), raw.y)
    _check_tabular(payload, split, data)
    return EvalData(split, kind)


def _check_tabular(payload: dict[str, Any], split: Split, source: str) -> None:
    shape = tuple(payload["data"]["input_shape"])
    if split.x.shape[1:] != shape:
        raise ModelFileError(
            f"the model expects {shape[0]} features but {source} has "
            f"{split.x.shape[1]}."
        )
    _check_classes(payload, split.y, source)


# ------------------------------------------------------------------ imaging data


def imaging_source(args: argparse.Namespace, payload: dict[str, Any]) -> EvalData:
    """Read an npz split, an image folder or the synthetic test set.

    Images are prepared at the model's input size (resized if the data differ).
    """
    cfg = RunConfig.from_saved(payload["run_config"])
    shape = tuple(payload["data"]["input_shape"])  # (C, *spatial)
    size = shape[1]
    data, path = args.data, Path(args.data)
    if data == SyntheticLesionsDataset.name:
        cfg = cfg.replace(dataset=data, data_path="", image_size=size)
        return _checked(payload, get_dataset(cfg.data_spec()).server_test(), data, data)
    if path.is_file():
        cfg = cfg.replace(dataset=MedMNISTDataset.name, data_path=data, image_size=0)
        dataset = MedMNISTDataset(cfg.data_spec())
        if args.split == "all":
            raise DataError(
                "--split all is for image folders; an npz has train/val/test."
            )
        _check_image_layout(payload, dataset.info().input_shape, data)
        _check_classes(payload, dataset.raw["train"].labels, data)
        native = dataset.info().input_shape[1:]
        dataset = MedMNISTDataset(cfg.replace(image_size=size).data_spec())
        split = dataset.split(args.split)
        notes = _resize_note(native, shape[1:])
        return EvalData(
            _checked(payload, split, data, "medmnist").split, "medmnist", notes
        )
    if path.is_dir():
        names = tuple(payload["data"].get("class_names") or ())
        folder_names = names if cfg.dataset == ImageFolderDataset.name else ()
        cfg = cfg.replace(
            dataset=ImageFolderDataset.name,
            data_path=data,
            image_size=size,
            class_names=",".join(folder_names),
        )
        dataset = ImageFolderDataset(cfg.data_spec())
        _check_image_layout(payload, dataset.info().input_shape, data)
        split = dataset.all_images() if args.split == "all" else dataset.server_test()
        return _checked(payload, split, data, "image-folder")
    raise DataError(
        f"--data {data!r}: not an .npz file, an image folder or 'synthetic-lesions'."
    )


def _check_image_layout(
    payload: dict[str, Any], data_shape: tuple[int, ...], source: str
) -> None:
    """Refuse data of the wrong dimensionality or channel count, saying which."""
    shape = tuple(payload["data"]["input_shape"])
    model_dims, data_dims = len(shape) - 1, len(data_shape) - 1
    if model_dims != data_dims:
        raise ModelFileError(
            f"shape mismatch: the model takes {model_dims}D images "
            f"{'x'.join(map(str, shape[1:]))} but {source} holds {data_dims}D images "
            f"{'x'.join(map(str, data_shape[1:]))}."
        )
    if shape[0] != data_shape[0]:
        raise ModelFileError(
            f"channel mismatch: the model takes {shape[0]}-channel images but "
            f"{source} has {data_shape[0]} channel(s)."
        )


def _checked(payload: dict[str, Any], split: Split, source: str, kind: str) -> EvalData:
    _check_image_layout(payload, tuple(split.x.shape[1:]), source)
    _check_classes(payload, split.y, source)
    return EvalData(split, kind)


def _resize_note(native: tuple[int, ...], target: tuple[int, ...]) -> list[str]:
    if tuple(native) == tuple(target):
        return []
    fmt = "x".join
    return [
        f"images resized from {fmt(map(str, native))} to {fmt(map(str, target))}"
        " (the model's input size)"
    ]


def _check_classes(payload: dict[str, Any], labels: np.ndarray, source: str) -> None:
    num_classes = int(payload["data"]["num_classes"])
    if labels.size and int(labels.max()) >= num_classes:
        raise ModelFileError(
            f"class count mismatch: {source} has label {int(labels.max())} "
            f"({int(labels.max()) + 1}+ classes) but the model has {num_classes} "
            "classes."
        )


# Task of the saved model -> how ``--data`` is read for it.
SOURCES: dict[str, Callable[[argparse.Namespace, dict[str, Any]], EvalData]] = {
    "tabular": tabular_source,
    "imaging": imaging_source,
}


# ------------------------------------------------------------------ report


def clinical_report(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    *,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Metrics, per-class recall, calibration, confusion matrix and 95% CIs."""
    metrics = classification_metrics(y_true, probs)
    metrics["brier"] = brier_score(y_true, probs)
    metrics["ece"] = expected_calibration_error(y_true, probs)
    report: dict[str, Any] = {
        "metrics": metrics,
        "per_class_recall": dict(
            zip(class_names, per_class_recall(y_true, probs), strict=True)
        ),
        "confusion_matrix": {
            "rows": "true class",
            "columns": "predicted class",
            "labels": class_names,
            "counts": confusion(y_true, probs),
        },
    }
    if resamples > 0:
        report["confidence_intervals"] = {
            "method": f"percentile bootstrap, {resamples} resamples, 95%",
            **{
                m: list(bootstrap_ci(y_true, probs, m, resamples=resamples, seed=seed))
                for m in ("auc", "accuracy")
            },
        }
    return report


def decision_report(
    y_true: np.ndarray, probs: np.ndarray, decision: Decision | None
) -> dict[str, Any]:
    """Binary decisions at the stored threshold and at 0.5, each labelled.

    ``probs`` are already calibrated by the stored temperature. Without a stored
    threshold only the 0.5 figures (what argmax decides) are given.
    """
    if probs.shape[1] != 2:
        return {}
    out: dict[str, Any] = {"at_0.5": threshold_metrics(y_true, probs, 0.5)}
    if decision is not None:
        out["decision"] = decision.to_dict()
        if decision.threshold is not None:
            out["at_threshold"] = threshold_metrics(y_true, probs, decision.threshold)
    return out


def _class_names(payload: dict[str, Any]) -> list[str]:
    n = int(payload["data"]["num_classes"])
    names = list(payload["data"].get("class_names") or [])
    return names if len(names) == n else [str(i) for i in range(n)]


def write_figures(
    out: Path, y: np.ndarray, probs: np.ndarray, class_names: list[str]
) -> dict[str, str]:
    from scripts.plots import calibration_plot, confusion_plot, roc_plot

    return {
        "roc": str(roc_plot(y, probs, class_names, out / "roc_curve.png")),
        "confusion_matrix": str(
            confusion_plot(y, probs, class_names, out / "confusion_matrix.png")
        ),
        "calibration": str(calibration_plot(y, probs, out / "calibration.png")),
    }


def _print_summary(report: dict[str, Any]) -> None:
    m, ci = report["metrics"], report.get("confidence_intervals", {})
    # the file's name (breastmnist.npz), not only its kind (medmnist)
    source = Path(report["data"]).name if report.get("data") else report["dataset"]
    lines = [f"{source} [{report['split']}]: {report['num_examples']} records"]
    for key in (
        "auc",
        "accuracy",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "ece",
    ):
        if key in m and m[key] is not None:
            interval = ci.get(key)
            extra = (
                f"  (95% CI {interval[0]:.3f}-{interval[1]:.3f})"
                if interval and interval[0] is not None
                else ""
            )
            lines.append(f"  {key:<18} {m[key]:.3f}{extra}")
    recall = ", ".join(
        f"{k}: {v:.3f}" for k, v in report["per_class_recall"].items() if v is not None
    )
    lines.append(f"  per-class recall   {recall}")
    for key in ("at_threshold", "at_0.5"):
        if key in report:
            at = report[key]
            label = f"stored threshold {at['threshold']:.3f}"
            label = "0.5" if key == "at_0.5" else label
            lines.append(
                f"  at {label}: sensitivity {_num(at['sensitivity'])}, specificity "
                f"{_num(at['specificity'])}, accuracy {_num(at['accuracy'])}"
            )
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    print("\n".join(lines), file=sys.stderr)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# ------------------------------------------------------------------ per site


def hospitals_of_run(model_path: Path) -> int:
    """Count the hospitals in the run that wrote ``model_path`` (its history.json)."""
    path = history_path(model_path.resolve().parent)
    if not path.is_file():
        raise DataError(f"no history.json beside {model_path}; pass --hospitals N.")
    try:
        names = read_history(path).hospitals()
    except HistoryError as err:
        raise DataError(f"{err}; pass --hospitals N.") from err
    if not names:
        raise DataError(f"{path} records no hospital; pass --hospitals N.")
    return len(names)


def per_site(args: argparse.Namespace, model: Any, payload: dict[str, Any]) -> int:
    """Score the model on every simulated hospital's held-out split."""
    cfg = RunConfig.from_saved(payload["run_config"])
    if args.data:
        cfg = cfg.replace(data_path=args.data)
    n = args.hospitals or hospitals_of_run(args.model)
    dataset = get_dataset(cfg.data_spec())
    device = pick_device(args.device)
    scaler = global_scaler(payload) if payload.get("task") == "tabular" else None
    rows: dict[str, dict[str, Any]] = {}
    for pid in range(n):
        site = dataset.hospital(pid, n)
        if scaler is not None:
            site = standardized(site, scaler)
        probs = predict_proba(model, site.val.x, device)
        metrics = classification_metrics(site.val.y, probs)
        rows[site.name] = {"num_examples": len(site.val), **metrics}
    keys = [
        "num_examples",
        "auc",
        "accuracy",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
    ]
    keys = [k for k in keys if any(k in r for r in rows.values())]
    width = max(len(name) for name in rows) + 2
    print(f"{'hospital':<{width}}" + "".join(f"{k[:17]:>18}" for k in keys))
    for name, row in rows.items():
        cells = "".join(
            f"{row[k]:>18d}"
            if k == "num_examples"
            else (f"{row[k]:>18.3f}" if k in row and row[k] == row[k] else f"{'-':>18}")
            for k in keys
        )
        print(f"{name:<{width}}{cells}")
    result = {
        "model": str(args.model),
        "dataset": cfg.dataset,
        "data_path": cfg.data_path,
        "hospitals": rows,
    }
    for target in filter(None, (args.json, args.out and args.out / "per_site.json")):
        write_json(target, result)
    return 0


# ------------------------------------------------------------------ entry point


def run(args: argparse.Namespace) -> int:
    """``medflower evaluate`` once its arguments are checked (``evaluate_cli``); a
    bad model file or data raises ``ModelFileError`` / ``DataError``, which the
    ``medflower`` command line reports by name.
    """
    model, payload = load_model(args.model)
    if args.per_site:
        return per_site(args, model, payload)
    task = payload.get("task", "tabular")
    if task not in SOURCES:
        raise ModelFileError(f"the model's task {task!r} has no evaluation source.")
    data = SOURCES[task](args, payload)
    probs = predict_proba(model, data.split.x, pick_device(args.device))
    decision = Decision.from_dict(payload.get("decision"))
    if decision is not None and decision.temperature is not None:
        probs = decision.apply(probs)
        data.notes.append(
            f"probabilities scaled by the stored temperature {decision.temperature:.3f}"
        )
    y = data.split.y
    names = _class_names(payload)
    report: dict[str, Any] = {
        "model": str(args.model),
        "data": args.data,
        "dataset": data.dataset,
        "split": args.split,
        "num_examples": len(y),
        "class_names": names,
        "class_counts": np.bincount(y, minlength=len(names)).tolist(),
        **clinical_report(y, probs, names, resamples=args.bootstrap, seed=args.seed),
        **decision_report(y, probs, decision),
    }
    if data.notes:
        report["notes"] = data.notes
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        report["figures"] = write_figures(args.out, y, probs, names)
    report = json_safe(report)
    for target in filter(None, (args.json, args.out and args.out / "report.json")):
        write_json(target, report)
    # stdout: the machine-readable report; stderr: the human summary
    print(dumps(report), end="")
    _print_summary(report)
    return 0
