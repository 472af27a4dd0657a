"""``medflower``: the project's command line (``simulate``, ``evaluate``, ...).

Commands are registered by module name and imported only when chosen, so
``medflower --help`` answers at once: a command's module must keep its
``add_arguments`` free of torch, MONAI and Flower imports (import them in ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

# openmined-psi pins a protobuf runtime newer than the one Flower's generated code
# was built for: harmless, but each process printed the mismatch nine times. Filtered
# here, where the process starts and before anything imports protobuf (so this
# module imports only the standard library); Flower's own processes (SuperLink,
# simulation, Ray workers) get the same filter through PYTHONWARNINGS.
warnings.filterwarnings("ignore", "Protobuf gencode version", UserWarning)

DESCRIPTION = (
    "medflower: federated medical diagnosis on Flower. Simulate hospitals on this "
    "machine, deploy across hospitals, evaluate or audit a saved model, and run the "
    "benchmarks. `medflower <command> --help` for a command's options."
)

# Subcommand -> (module defining ``add_arguments(parser)`` and ``run(args) -> int``,
# one-line help). Adding a command = one module + one line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("scripts.simulate", "simulate N hospitals with `flwr run --stream`"),
    "evaluate": ("scripts.evaluate_cli", "evaluate a saved model on held-out data"),
    "audit": ("scripts.audit_cli", "membership-inference audit of a saved model"),
    "recommend": ("scripts.recommend", "top-K items for a patient from a recommender"),
    "audit-log": ("scripts.audit_log_cli", "verify or show a hospital's audit log"),
    "deploy": ("scripts.deploy.cli", "run across hospitals with Flower's engine"),
    "benchmark": ("scripts.benchmarks.core", "run a benchmark suite"),
    "stats": ("scripts.stats_cli", "federated statistics of the hospitals' data"),
}


# Errors that name a bad input (file, key or value): any command that raises one
# ends with its message and exit code 2, not a traceback. Looked up by module so
# that this module imports none of them (a class whose module was never imported
# cannot have been raised).
INPUT_ERRORS: dict[str, tuple[str, ...]] = {
    "app.config.keys": ("ConfigError",),
    "data.spec": ("DataError",),
    "models.checkpoint": ("ModelFileError",),
    "app.server.history": ("HistoryError",),
    "app.server.checkpoints": ("CheckpointError",),
}


def is_input_error(err: BaseException) -> bool:
    """Tell whether ``err`` is one of :data:`INPUT_ERRORS`."""
    for module, names in INPUT_ERRORS.items():
        loaded = sys.modules.get(module)
        if loaded and isinstance(err, tuple(getattr(loaded, n) for n in names)):
            return True
    return False


def command_module(name: str) -> ModuleType:
    """Import the module that implements subcommand ``name``."""
    return importlib.import_module(COMMANDS[name][0])


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first positional), if any."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in COMMANDS else None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for ``argv``: every command listed, only the chosen one filled in."""
    parser = argparse.ArgumentParser(prog="medflower", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = chosen_command(argv)
    for name, (_, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            command_module(name).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return command_module(args.command).run(args)
    except Exception as err:
        if not is_input_error(err):
            raise
        print(f"medflower {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
