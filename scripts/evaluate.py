"""``medflower evaluate``: apply a saved model to a dataset and print its metrics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.config import RunConfig
from data.registry import get_dataset
from data.spec import DataError, Split
from data.tabular import read_labelled_csv, standardize_for_evaluation
from models.checkpoint import ModelFileError, load_model
from models.training import evaluate_split, pick_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Evaluate a saved final_model.pt on a dataset."
    parser.add_argument("--model", required=True, type=Path, help="a final_model.pt")
    parser.add_argument(
        "--data", required=True,
        help="'wdbc', a heart-disease directory, or a CSV file with a label column",
    )
    parser.add_argument("--split", choices=("test", "all"), default="test",
                        help="held-out test split (default) or every record (CSV: all)")
    parser.add_argument("--label-column", default=None, help="label column of a CSV")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    parser.add_argument("--device", default="auto")


def resolve_split(data: str, payload: dict[str, Any], args: argparse.Namespace) -> tuple[str, Split]:
    """Turn ``--data`` into (dataset kind, standardised split)."""
    cfg = RunConfig.from_run_config(payload["run_config"])
    path = Path(data)
    if data == "wdbc":
        kind = "wdbc"
        cfg = cfg.replace(dataset="wdbc", data_path="")
    elif path.is_dir():
        kind = "heart-disease"
        cfg = cfg.replace(dataset=kind, data_path=str(path))
    elif path.is_file():
        label = args.label_column or cfg.label_column
        x, y, _ = read_labelled_csv(path, label)
        return "csv", Split(standardize_for_evaluation(x), y)
    else:
        raise DataError(f"--data {data!r}: not 'wdbc', a directory or a file.")
    dataset = get_dataset(cfg.data_spec())
    if args.split == "test":
        return kind, dataset.server_test()
    raise DataError(f"--split all is only available for CSV files, not {kind}.")


def check_fit(payload: dict[str, Any], split: Split, source: str) -> None:
    """Refuse data the model was not built for, saying what differs."""
    shape = tuple(payload["data"]["input_shape"])
    if payload["task"] != "tabular":
        raise ModelFileError(f"the model is a {payload['task']} model; {source} is tabular data.")
    if split.x.shape[1:] != shape:
        raise ModelFileError(
            f"the model expects {shape[0]} features but {source} has {split.x.shape[1]}."
        )
    num_classes = int(payload["data"]["num_classes"])
    if split.y.size and int(split.y.max()) >= num_classes:
        raise ModelFileError(
            f"{source} has label {int(split.y.max())} but the model has {num_classes} classes."
        )


def run(args: argparse.Namespace) -> int:
    try:
        model, payload = load_model(args.model)
        kind, split = resolve_split(args.data, payload, args)
        check_fit(payload, split, args.data)
    except (ModelFileError, DataError) as err:
        print(f"medflower evaluate: {err}", file=sys.stderr)
        return 2
    metrics = evaluate_split(model, split, pick_device(args.device))
    report = {
        "model": str(args.model),
        "data": args.data,
        "dataset": kind,
        "split": args.split,
        "num_examples": len(split),
        "metrics": {k: (v if v == v else None) for k, v in metrics.items()},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0
