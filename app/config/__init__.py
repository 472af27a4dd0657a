"""Run configuration: ``[tool.flwr.app.config]`` parsed once into a frozen dataclass.

- :mod:`app.config.keys`: one declaration per key (type, default, range, help);
- :mod:`app.config.run_config`: :class:`RunConfig`, parsed and validated;
- :mod:`app.config.checks`: the rules that tie keys together;
- :mod:`app.config.docs`: renders ``docs/configuration.md`` from the declarations.
"""

from __future__ import annotations

from app.config.keys import GROUPS, ConfigError, Key
from app.config.run_config import VERTICAL_MODEL, RunConfig

__all__ = ["GROUPS", "VERTICAL_MODEL", "ConfigError", "Key", "RunConfig"]
