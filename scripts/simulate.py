"""``medflower simulate``: a ``flwr run`` simulation with its final status checked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scripts.flower.cluster import RayClusterError
from scripts.flower.driver import concurrent_actors, find_run_dir, run_simulation
from scripts.flower.env import project_root
from scripts.flower.run_config import (
    check_run_config,
    flower_run_config,
    is_medflower,
    read_run_config,
)

if TYPE_CHECKING:
    from app.config import RunConfig


# Run-config keys naming a file or folder the run reads: given relative to where
# the command is typed, made absolute (the ServerApp runs in another folder).
PATH_KEYS = ("data-path", "resume-from", "init-model", "item-catalogue")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Simulate N hospitals with `flwr run --stream` and check the run."
    )
    parser.add_argument(
        "--hospitals", type=int, default=4, help="simulated hospitals (default 4)"
    )
    parser.add_argument(
        "--run-config",
        default="",
        help="e.g. \"num-server-rounds=3 strategy='fedprox'\"",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="a run-config preset (app/config/presets/<name>.toml, e.g. imaging-2d; "
        "docs/imaging.md#presets): its values fill every key --run-config leaves "
        "at its default",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the data file or folder (sets data-path to its absolute path)",
    )
    parser.add_argument(
        "--cpus-per-hospital",
        type=int,
        default=1,
        help="CPU cores each hospital's ClientApp reserves (default 1: as many "
        "hospitals train at once as there are cores)",
    )
    parser.add_argument(
        "--gpus-per-hospital",
        type=float,
        default=0.0,
        help="fraction of a GPU each ClientApp reserves, e.g. 0.25 = four per GPU "
        "(default 0: CPU only)",
    )
    parser.add_argument(
        "--app", type=Path, default=project_root(), help="Flower app directory"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where runs are written (default: <repo>/outputs)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="HOST:PORT",
        help="run the hospitals on this existing Ray cluster (its head's address, "
        "as `ray start --head` printed it; docs/deployment.md)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop the run after this many seconds (default: no limit)",
    )


def run(args: argparse.Namespace) -> int:
    if args.hospitals < 1:
        raise SystemExit("--hospitals must be >= 1")
    output_dir = (args.output_dir or project_root() / "outputs").resolve()
    try:
        values = run_config_of(args, output_dir)
    except ValueError as err:  # ConfigError included
        print(f"medflower simulate: {err}", file=sys.stderr)
        return 2
    at_once = concurrent_actors(args.hospitals, args.cpus_per_hospital)
    gpus = f", {args.gpus_per_hospital:g} GPU" if args.gpus_per_hospital else ""
    print(
        f"medflower: {args.hospitals} hospitals, up to {at_once} ClientApps at once "
        f"({args.cpus_per_hospital} CPU{gpus} each)",
        flush=True,
    )
    try:
        outcome = run_simulation(
            app_dir=args.app.resolve(),
            num_hospitals=args.hospitals,
            run_config=flower_run_config(values),
            cpus_per_hospital=args.cpus_per_hospital,
            gpus_per_hospital=args.gpus_per_hospital,
            timeout=args.timeout,
            output_dir=output_dir,
            ray_address=args.ray_address,
        )
    except RayClusterError as err:
        print(f"medflower: {err}")
        return 2
    if not outcome.ok:
        print(f"medflower: run {outcome.run_id} ended with status {outcome.status}")
        return 1
    run_dir = find_run_dir(output_dir, outcome.run_id) or output_dir / "latest"
    # The run's own log, streamed above, ends with its final metrics and report
    # path: this line adds only what the log cannot say (flwr run exits 0 either
    # way), the status the SuperLink recorded.
    print(f"medflower: run {outcome.run_id} completed; outputs in {run_dir}")
    return 0


def run_config_of(args: argparse.Namespace, output_dir: Path) -> dict[str, Any]:
    """The run's config values, checked here before anything starts.

    ``--run-config`` plus ``--preset`` and ``--data`` as their keys; for
    medflower (not another app given as ``--app``) also ``output-dir`` unless
    given, the files of ``PATH_KEYS`` made absolute and required to exist, every
    value checked and the data file and checkpoint read (:func:`check_inputs`). A
    bad key or value raises :class:`ValueError` naming it (``DataError``,
    ``CheckpointError`` for data or a checkpoint that do not fit).
    """
    values = read_run_config(args.run_config)
    data = args.data and existing_path(str(args.data), "--data")
    options = {"preset": args.preset, "data-path": data}
    for key, value in options.items():
        if value is None:
            continue
        if key in values:
            raise ValueError(f"give '{key}' once: in --run-config or as its option")
        values[key] = str(value)
    if not is_medflower(args.app.resolve()):  # another Flower app: its own keys
        return values
    values.setdefault("output-dir", str(output_dir))
    for key in PATH_KEYS:  # read on this machine, from whichever folder
        if values.get(key):
            values[key] = str(existing_path(str(values[key]), key))
    check_inputs(check_run_config(values))
    return values


def check_inputs(cfg: RunConfig) -> None:
    """Read what the ServerApp reads first, so that a bad input is refused before
    the SuperLink starts, naming it: the data file's description (columns,
    classes, input shape; ``DataError`` for a wrong file or ``label-column``) and
    the checkpoint ``resume-from`` names (``CheckpointError`` when it is missing or
    its run had other settings).

    Runs on bundled data (no ``data-path``) are not read twice.
    """
    if cfg.data_path:
        from data.registry import get_dataset

        get_dataset(cfg.data_spec()).info()
    if cfg.resume_from:
        from app.server.checkpoints import load_resume

        load_resume(cfg)


def existing_path(text: str, given_as: str) -> Path:
    """``text`` (``given_as``: the option or key that named it) as an absolute
    path (a relative one from the current folder, as the user typed it), refused
    when nothing is there.
    """
    path = Path(text).expanduser().resolve()
    if not path.exists():
        raise ValueError(f"{given_as} {text!r}: no such file or folder ({path})")
    return path
