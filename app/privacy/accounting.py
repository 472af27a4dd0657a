"""Privacy accounting shared by local DP-SGD and central DP.

Opacus accountants whose history survives serialisation, so epsilon is cumulative
over a whole run.

Why a history and not a fresh accountant each round: the privacy loss of a run is
the composition of every noisy step that touched a record. An accountant built anew
each round (as in Flower's Opacus example) reports one round's epsilon, which
understates the real loss by roughly the number of rounds. Opacus' accountants are
fully described by their history of ``(noise_multiplier, sample_rate, steps)``
entries, so we store that history (in a hospital's ``context.state`` for local DP,
in the strategy for central DP) and rebuild the accountant from it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

# Opacus is imported where an accountant is built, not here: every ClientApp and
# ServerApp imports this module (for PrivacyBudgetExhausted), and Opacus costs
# ~2 s of CPU per process start, paid by runs without DP too.

ACCOUNTANTS = ("prv", "rdp")
HistoryEntry = tuple[float, float, int]


class PrivacyBudgetExhausted(RuntimeError):
    """The next release would take a hospital past its epsilon budget."""


def new_accountant(mechanism: str, history: Sequence[HistoryEntry] = ()) -> IAccountant:
    """Build an Opacus accountant (``prv`` or ``rdp``) preloaded with ``history``."""
    if mechanism not in ACCOUNTANTS:
        raise ValueError(
            f"Unknown accountant {mechanism!r}; known: {', '.join(ACCOUNTANTS)}."
        )
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=mechanism)
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return accountant


def compose(
    history: Sequence[HistoryEntry],
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
) -> list[HistoryEntry]:
    """Append ``steps`` steps at ``(noise_multiplier, sample_rate)`` to ``history``.

    Merged into the last entry when it has the same parameters (as Opacus does).
    """
    out = [(float(s), float(q), int(n)) for s, q, n in history]
    if steps <= 0:
        return out
    if out and out[-1][0] == noise_multiplier and out[-1][1] == sample_rate:
        s, q, n = out[-1]
        out[-1] = (s, q, n + int(steps))
    else:
        out.append((float(noise_multiplier), float(sample_rate), int(steps)))
    return out


def epsilon_of(
    history: Sequence[HistoryEntry], *, delta: float, mechanism: str
) -> float:
    """Epsilon at ``delta`` of a history; 0 for an empty one, inf without noise."""
    if not history or all(n == 0 for _, _, n in history):
        return 0.0
    if any(s <= 0 for s, _, n in history if n > 0):
        return math.inf
    with warnings.catch_warnings():
        # PRV evaluates log(0) at the edge of its grid for q = 1; harmless there.
        warnings.simplefilter("ignore", RuntimeWarning)
        # RDP's alpha grid is not tight at large epsilon: a looser bound, no error
        warnings.filterwarnings("ignore", "Optimal order is the largest alpha")
        return float(new_accountant(mechanism, history).get_epsilon(delta=delta))


def plan_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    mechanism: str,
) -> float:
    """Return the smallest noise multiplier (to 1% of epsilon) within the target.

    ``steps`` steps at ``sample_rate`` stay within ``target_epsilon`` at ``delta``.
    """
    if target_epsilon <= 0 or steps <= 0:
        raise ValueError("target_epsilon and steps must be > 0.")
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # RDP's alpha grid is not tight at large epsilon: a looser bound, no error
        warnings.filterwarnings("ignore", "Optimal order is the largest alpha")
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=int(steps),
                accountant=mechanism,
                epsilon_tolerance=0.01 * target_epsilon,
            )
        )


def history_to_record(history: Sequence[HistoryEntry], mechanism: str) -> ConfigRecord:
    """Serialise a history for ``context.state`` (a ConfigRecord of parallel lists)."""
    return ConfigRecord(
        {
            "mechanism": mechanism,
            "noise-multipliers": [float(s) for s, _, _ in history],
            "sample-rates": [float(q) for _, q, _ in history],
            "steps": [int(n) for _, _, n in history],
        }
    )


def history_from_record(record: ConfigRecord, mechanism: str) -> list[HistoryEntry]:
    """Invert :func:`history_to_record`.

    Refuses a history of another accountant, whose epsilon would not be comparable.
    """
    stored = record.get("mechanism")
    if stored != mechanism:
        raise ValueError(
            f"The stored privacy history was kept by the {stored!r} accountant, not "
            f"{mechanism!r}; 'dp-accountant' must not change during a run."
        )
    sigmas = list(record.get("noise-multipliers", []))
    rates = list(record.get("sample-rates", []))
    steps = list(record.get("steps", []))
    if not len(sigmas) == len(rates) == len(steps):
        raise ValueError("Corrupt privacy history: list lengths differ.")
    return [
        (float(s), float(q), int(n))
        for s, q, n in zip(sigmas, rates, steps, strict=True)
    ]
