"""Route medflower's module loggers to Flower's log handlers."""

from __future__ import annotations

import logging

PACKAGES = ("app", "data", "models", "strategies", "scripts")


def route_to_flower(level: int = logging.INFO) -> None:
    """Send our packages' log records through the ``flwr`` logger's handlers, so they
    appear in ``flwr run --stream`` and the SuperNode logs like Flower's own.
    """
    flwr_logger = logging.getLogger("flwr")
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for handler in flwr_logger.handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.propagate = False
