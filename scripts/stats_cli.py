"""``medflower stats``: federated statistics of data on this machine.

Each simulated hospital answers the statistics query with the same function a
deployed ClientApp uses (:func:`app.stats.hospital.answer`), and the answers are
combined as the ServerApp's ``mode = "stats"`` combines them; only the transport
differs. ``--help`` imports no torch, MONAI or Flower.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DATASETS = (
    "heart-disease",
    "csv",
    "wdbc",
    "medmnist",
    "image-folder",
    "synthetic-lesions",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Per-site and combined statistics (counts, missing values, mean, std, "
        "min/max, quantiles, histograms, labels; imaging: intensities and image "
        "sizes), with small-cell suppression and optional DP noise."
    )
    parser.add_argument(
        "--data",
        default="",
        help="a heart-disease directory, a CSV file, a MedMNIST .npz or an image "
        "folder (empty: the bundled wdbc)",
    )
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="kind of data (default: guessed from --data)",
    )
    parser.add_argument(
        "--hospitals",
        type=int,
        default=None,
        help="simulated hospitals (heart-disease: one per file; others: 4)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for stats.json/.png/.html"
    )
    parser.add_argument(
        "--min-count",
        type=int,
        default=10,
        help="suppress a site, feature or label cell with fewer records (10)",
    )
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="SITE=POLICY.toml",
        help="a hospital's site policy: its min-records suppresses that site's "
        "small cells too (repeatable)",
    )
    parser.add_argument("--bins", type=int, default=10, help="histogram bins (10)")
    parser.add_argument(
        "--noise", choices=("none", "laplace", "gaussian"), default="none"
    )
    parser.add_argument(
        "--epsilon", type=float, default=1.0, help="per hospital, with --noise"
    )
    parser.add_argument(
        "--delta", type=float, default=1e-5, help="with --noise gaussian"
    )
    parser.add_argument("--label-column", default="target", help="label of a CSV")
    parser.add_argument("--image-size", type=int, default=0, help="imaging: resize")
    parser.add_argument("--seed", type=int, default=42, help="split seed")


def guess_dataset(data: str) -> str:
    """The dataset kind ``data`` looks like."""
    if not data:
        return "wdbc"
    path = Path(data)
    if path.suffix == ".npz":
        return "medmnist"
    if path.suffix == ".csv":
        return "csv"
    if path.is_dir() and any(p.suffix == ".data" for p in path.iterdir()):
        return "heart-disease"
    return "image-folder" if path.is_dir() else "csv"


# The run-config key each option sets: an error names the option that was typed.
OPTION_KEYS = {
    "--label-column": "label-column",
    "--image-size": "image-size",
    "--seed": "seed",
    "--min-count": "stats-min-count",
    "--bins": "stats-bins",
    "--noise": "stats-noise",
    "--epsilon": "stats-noise-epsilon",
    "--delta": "dp-delta",
}


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run config these arguments stand for (checked like any run's)."""
    from data.registry import DATASETS as REGISTRY
    from scripts.harness.inprocess import full_run_config

    dataset = args.dataset or guess_dataset(args.data)
    data_path = str(Path(args.data).expanduser().resolve()) if args.data else ""
    options = {
        key: getattr(args, option[2:].replace("-", "_"))
        for option, key in OPTION_KEYS.items()
    }
    return full_run_config(
        **{
            "mode": "stats",
            "task": REGISTRY[dataset].task,
            "dataset": dataset,
            "data-path": data_path,
            **options,
        }
    )


def as_typed(message: str) -> str:
    """A run-config error with each key this command set named by its option."""
    for option, key in OPTION_KEYS.items():
        message = message.replace(f"'{key}'", option)
    return message


def load_sites(cfg: Any, hospitals: int | None) -> tuple[list[Any], dict[str, str]]:
    """Each simulated hospital's records; a site that fails to load is named."""
    from data.registry import get_dataset
    from data.spec import DataError

    dataset = get_dataset(cfg.data_spec())
    if hospitals is None:
        files = getattr(dataset, "files", None)
        hospitals = len(files) if files is not None else 4
    sites, failed = [], {}
    for i, name in enumerate(dataset.hospital_names(hospitals)):
        try:
            sites.append(dataset.hospital_records(i, hospitals))
        except DataError as err:
            failed[name] = str(err)
    return sites, failed


def site_minimums(policies: list[str]) -> dict[str, int]:
    """Site name -> the ``min-records`` of the policy given for it (``--policy``)."""
    from app.governance.policy import load_policy

    out = {}
    for item in policies:
        site, sep, path = item.partition("=")
        if not sep or not site or not path:
            raise ValueError(f"--policy takes SITE=PATH, got {item!r}")
        out[site] = load_policy(path).min_records or 0
    return out


def run(args: argparse.Namespace) -> int:
    from app.config import ConfigError, RunConfig
    from app.stats.output import render_text, write_outputs
    from app.stats.protocol import local_asker, run_statistics, stats_plan
    from data.registry import get_dataset
    from data.spec import DataError

    try:
        cfg = RunConfig.from_run_config(run_config(args))
        info = get_dataset(cfg.data_spec()).info()
        sites, failed = load_sites(cfg, args.hospitals)
        minimums = site_minimums(args.policy)
        report = run_statistics(stats_plan(cfg, info), local_asker(sites, minimums))
    except (ConfigError, DataError, ValueError) as err:
        print(f"medflower stats: {as_typed(str(err))}", file=sys.stderr)
        return 2
    report.failed.update(failed)
    out = args.out or Path("outputs") / "stats" / cfg.dataset
    files = write_outputs(report, out)
    print(render_text(report))
    extra = f"{files.json.name}, {files.png.name}"
    print(f"\nmedflower: statistics: {files.html} (and {extra})")
    return 0
