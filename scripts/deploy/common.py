"""What every ``medflower deploy`` command shares: Flower's executables, the
party's folder and its Flower home.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.flower.env import flower_env


def flower_bin(name: str) -> str:
    """Return a Flower executable from this interpreter's environment."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def party_dir(args: argparse.Namespace) -> Path:
    """The party's deployment folder (``--dir``), absolute."""
    return Path(args.dir).expanduser().resolve()


def flwr_home_of(args: argparse.Namespace) -> Path:
    """``--flwr-home``, else the Flower home medflower's processes use."""
    if args.flwr_home:
        return Path(args.flwr_home).expanduser().resolve()
    return Path(flower_env()["FLWR_HOME"]).resolve()
