"""Route medflower's module loggers to Flower's log handlers, each line printed once."""

from __future__ import annotations

import logging

PACKAGES = ("app", "data", "models", "strategies", "scripts")


def route_to_flower(level: int = logging.INFO) -> None:
    """Send our packages' log records through the ``flwr`` logger's handlers, so they
    appear in ``flwr run --stream`` and the SuperNode logs like Flower's own.

    Neither our loggers nor ``flwr`` propagate to the root logger. Opacus calls
    ``logging.basicConfig`` when imported (``opacus.utils.module_utils``), which
    gives the root logger a stderr handler with a date prefix; since Flower's
    console handler already prints every ``flwr`` record, each Flower line then
    appeared twice in a run's stream (``INFO :      aggregate_train: ...`` and
    ``12/02/2026 20:52:30:INFO:aggregate_train: ...``), and Flower's DEBUG lines
    leaked through the root handler too. Flower turns propagation off for the same
    reason in notebooks (``flwr.common.logger.set_logger_propagation``). The log
    stream of a run is unaffected: Flower mirrors stdout and stderr, which its
    console handler writes to.
    """
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if logger.level != level:  # setLevel clears every logger's cache: ms a call
            logger.setLevel(level)
        for handler in flwr_logger.handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.propagate = False
