"""Interaction data for federated recommendation: splits, sites and the dataset.

A site (hospital) holds its users' (patients') interaction histories; user ids
never leave it. Items are indices into one :class:`ItemCatalogue` every site
shares (a formulary, a lab dictionary: public, never patient data).

Rules (files are read by :mod:`data.interaction_files`):

- Feedback (``feedback``): ``auto`` = explicit when a rating column exists, is
  not named ``implicit`` and its values are not all equal, else implicit.
  Implicit feedback drops rows whose value is <= 0 (a 0 flag is no interaction)
  and keeps one row per (user, item) at its earliest time, value 1.0; explicit
  feedback keeps the latest rating of a repeated (user, item) (the last row on
  equal times).
- Leave-last-out per user: rows are ordered by time, ties broken by a shuffle
  seeded with ``seed`` (deterministic). A user with >= 3 interactions gives the
  last to test and the second-last to val, the rest to train, so nothing in
  train is later than val and nothing in val later than test; users with fewer
  rows are train only. Without timestamps the held-out rows are drawn at random
  (seeded) and ``time`` is the row order.
- Sites (``site-by``): ``auto`` = ``column`` when the file has a site column,
  else ``users``. ``column``: one site per distinct value, sorted by name; the
  number of hospitals must equal the number of sites; the same user id at two
  sites is two patients. ``users``: users dealt to the hospitals IID (seeded
  shuffle, even sizes) or, with ``partitioner = "dirichlet"``, by a Dirichlet
  draw over user groups = quartiles of the users' interaction counts
  (:func:`data.partition.partition_indices`, ``dirichlet-alpha``). Every site
  needs >= 1 user with held-out rows. The splits are computed once over all
  users, so :meth:`InteractionsDataset.pooled` has the same per-user splits.
- Catalogue: in simulation every item of the file (ids sorted, numerically when
  all are integers), or ``item-catalogue`` when given; in deployment
  (:meth:`InteractionsDataset.local_hospital`) ``item-catalogue`` is required
  and an item outside it is an error naming the file, the line and the item.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from data.base import FederatedDataset, check_partition
from data.interaction_files import (
    InteractionTable,
    interactions_file,
    read_interactions,
    read_item_list,
)
from data.partition import partition_indices
from data.spec import DataError, DatasetInfo, DataSpec, Split

__all__ = [
    "Interactions",
    "ItemCatalogue",
    "InteractionSite",
    "InteractionsDataset",
    "read_interactions",
    "InteractionTable",
]

FEEDBACK = ("auto", "explicit", "implicit")
TRAIN, VAL, TEST = 0, 1, 2
MIN_ROWS_FOR_HELD_OUT = 3


@dataclass(frozen=True)
class Interactions:
    """(user, item, value, time) rows of one split.

    Users are the site's own row indices (0..num_users-1).
    """

    user: np.ndarray  # int64, site-local user index 0..num_users-1
    item: np.ndarray  # int64, index into the federation's ItemCatalogue
    value: np.ndarray  # float32: the rating (explicit) or 1.0 (implicit)
    time: np.ndarray  # float64: timestamp in seconds, or the row order

    def __post_init__(self) -> None:
        sizes = {len(self.user), len(self.item), len(self.value), len(self.time)}
        if len(sizes) != 1:
            raise ValueError(f"Interactions columns of unequal lengths: {sizes}.")

    def __len__(self) -> int:
        return len(self.user)


@dataclass(frozen=True)
class ItemCatalogue:
    """The federation's item vocabulary.

    Public (a formulary, a lab dictionary), never patient data.
    """

    ids: tuple[str, ...]
    names: tuple[str, ...]  # display names; = ids when none

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.names):
            raise ValueError(f"{len(self.ids)} item ids but {len(self.names)} names.")

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.ids)}

    def index(self) -> dict[str, int]:
        """Item id -> position (cached)."""
        return self._index

    @classmethod
    def from_file(cls, path: str | Path) -> ItemCatalogue:
        """Read a catalogue CSV (see :func:`data.interaction_files.read_item_list`)."""
        return cls(*read_item_list(path))

    def to_csv(self, path: str | Path) -> None:
        """Write ``item,name`` rows, readable by :meth:`from_file`."""
        frame = pd.DataFrame({"item": self.ids, "name": self.names})
        frame.to_csv(path, index=False)


def sorted_ids(ids: np.ndarray) -> tuple[str, ...]:
    """Distinct ids, sorted numerically when all are integers, else by text."""
    unique = [str(i) for i in pd.unique(ids)]
    if all(i.lstrip("-").isdigit() for i in unique):
        return tuple(sorted(unique, key=int))
    return tuple(sorted(unique))


@dataclass(frozen=True)
class InteractionSite:
    """One hospital's interaction histories, split per patient by time."""

    name: str
    users: tuple[str, ...]  # original ids, index = local user index; NEVER leave
    train: Interactions
    val: Interactions  # <= 1 row per user: the second-last (users with >= 3)
    test: Interactions  # <= 1 row per user: the last (users with >= 3)
    catalogue: ItemCatalogue
    explicit: bool  # ratings (RMSE/MAE apply) vs implicit feedback
    info: DatasetInfo

    @property
    def num_users(self) -> int:
        return len(self.users)

    def history(self, user: int) -> np.ndarray:
        """Item indices of ``user``'s training rows (to exclude seen items)."""
        if not 0 <= user < self.num_users:
            raise DataError(
                f"Site {self.name}: user index {user} is outside "
                f"0..{self.num_users - 1}.",
                "unknown user index",
            )
        lo, hi = np.searchsorted(self.train.user, [user, user + 1])
        return self.train.item[lo:hi]


@dataclass(frozen=True)
class Pool:
    """Every row of a dataset after feedback rules and the per-user split.

    Rows are ordered by (user, time, seeded tie); ``part`` is TRAIN/VAL/TEST.
    ``user_site`` is each user's site-column value (None without one).
    """

    users: np.ndarray  # original id per user code (object)
    user_site: np.ndarray | None
    user: np.ndarray
    item: np.ndarray
    value: np.ndarray
    time: np.ndarray
    part: np.ndarray
    explicit: bool

    @cached_property
    def counts(self) -> np.ndarray:
        """Rows per user code."""
        return np.bincount(self.user, minlength=len(self.users))


def is_explicit(table: InteractionTable, feedback: str) -> bool:
    """Whether the table's values are ratings (see the module docstring)."""
    if feedback not in FEEDBACK:
        raise DataError(
            f"feedback {feedback!r} is not one of {', '.join(FEEDBACK)}.",
            "unknown feedback kind",
        )
    if feedback == "explicit" and table.rating is None:
        raise DataError(
            f"{table.source}: feedback='explicit' but the file has no rating column.",
            "explicit feedback needs a rating column",
        )
    if feedback != "auto" or table.rating is None:
        return feedback == "explicit"
    return table.rating_column != "implicit" and len(np.unique(table.rating)) > 1


def item_codes(table: InteractionTable, catalogue: ItemCatalogue) -> np.ndarray:
    """Catalogue index of every row; an unknown item is an error naming it."""
    rows, distinct = pd.factorize(table.item)
    index = catalogue.index()
    known = np.array([index.get(str(i), -1) for i in distinct], dtype=np.int64)
    codes = known[rows]
    if (codes < 0).any():
        i = int(np.argmax(codes < 0))
        raise DataError(
            f"{table.source}, line {table.line[i]}: item {table.item[i]!r} is not in "
            f"the item catalogue ({len(catalogue)} items).",
            "an item is not in the item catalogue",
        )
    return codes.astype(np.int64)


def deduplicate(
    user: np.ndarray, item: np.ndarray, time: np.ndarray, *, keep_last: bool
) -> np.ndarray:
    """Row indices keeping one row per (user, item): its earliest or latest."""
    pair = user.astype(np.int64) * (int(item.max()) + 1) + item
    by_time = np.argsort(time, kind="stable")  # stable: row order on equal times
    order = by_time[np.argsort(pair[by_time], kind="stable")]
    p = pair[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = p[1:] != p[:-1]
    if keep_last:
        new = np.roll(new, -1)
    return np.sort(order[new])


def leave_last_out(
    user: np.ndarray, time: np.ndarray, *, timed: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Order rows by (user, time, seeded tie) and mark each TRAIN, VAL or TEST.

    Returns the row order and the parts in that order: per user with >= 3 rows
    the last is TEST and the second-last VAL. Without timestamps the order
    within a user is the seeded shuffle alone (held-out rows drawn at random).
    """
    tie = np.random.default_rng(seed).random(len(user))
    order = np.lexsort((tie, time, user) if timed else (tie, user))
    u = user[order]
    counts = np.bincount(u)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    from_end = counts[u] - 1 - (np.arange(len(u)) - starts[u])
    part = np.full(len(u), TRAIN, dtype=np.int8)
    held = counts[u] >= MIN_ROWS_FOR_HELD_OUT
    part[held & (from_end == 0)] = TEST
    part[held & (from_end == 1)] = VAL
    return order, part


def build_pool(
    table: InteractionTable,
    catalogue: ItemCatalogue,
    *,
    by_site: bool,
    feedback: str,
    seed: int,
) -> Pool:
    """Apply the feedback rules and the per-user split to every row of ``table``.

    With ``by_site`` a user is a (site, user id) pair.
    """
    explicit = is_explicit(table, feedback)
    items = item_codes(table, catalogue)
    keep = np.ones(len(table), dtype=bool)
    if not explicit and table.rating is not None:
        keep = table.rating > 0
    if not keep.any():
        raise DataError(
            f"{table.source}: no positive interaction (every value is <= 0).",
            "no positive interaction",
        )
    user_keys = table.user[keep]
    if by_site and table.site is not None:
        user_keys = table.site[keep] + "\x1f" + user_keys
    codes, keys = pd.factorize(user_keys, sort=True)
    kept = np.flatnonzero(keep)
    sel = deduplicate(codes, items[kept], table.time[kept], keep_last=explicit)
    rows, codes = kept[sel], codes[sel]
    order, part = leave_last_out(codes, table.time[rows], timed=table.timed, seed=seed)
    rows, codes = rows[order], codes[order]
    value = table.rating[rows] if explicit else np.ones(len(rows))
    keys = np.asarray(keys, dtype=object)
    sites = None
    if by_site and table.site is not None:
        split = np.array([k.split("\x1f", 1) for k in keys], dtype=object)
        sites, keys = split[:, 0], split[:, 1]
    return Pool(
        users=keys,
        user_site=sites,
        user=codes.astype(np.int64),
        item=items[rows],
        value=value.astype(np.float32),
        time=table.time[rows].astype(np.float64),
        part=part,
        explicit=explicit,
    )


def make_site(
    pool: Pool, name: str, codes: np.ndarray, catalogue: ItemCatalogue, source: str
) -> InteractionSite:
    """The site holding users ``codes`` (sorted pool user codes)."""
    local = np.full(len(pool.users), -1, dtype=np.int64)
    local[codes] = np.arange(len(codes))
    mine = local[pool.user] >= 0
    if not (pool.part[mine] == TEST).any():
        raise DataError(
            f"{source}: site {name!r} has no user with >= {MIN_ROWS_FOR_HELD_OUT} "
            f"interactions ({len(codes)} users), so nothing to evaluate on; use fewer "
            "hospitals or another split.",
            "a site has no user with held-out interactions",
        )
    splits = [
        Interactions(
            local[pool.user[rows]], pool.item[rows], pool.value[rows], pool.time[rows]
        )
        for rows in (mine & (pool.part == p) for p in (TRAIN, VAL, TEST))
    ]
    kind = "explicit" if pool.explicit else "implicit"
    info = DatasetInfo(
        task="recommendation",
        input_shape=(len(catalogue),),
        num_classes=0,
        description=f"{name} ({len(codes)} users, {len(catalogue)} items, {kind})",
    )
    return InteractionSite(
        name=name,
        users=tuple(str(u) for u in pool.users[codes]),
        train=splits[0],
        val=splits[1],
        test=splits[2],
        catalogue=catalogue,
        explicit=pool.explicit,
        info=info,
    )


def deal_users(pool: Pool, num_partitions: int, spec: DataSpec) -> list[np.ndarray]:
    """Sorted user codes of each simulated site (``site-by = users``)."""
    n = len(pool.users)
    if not 1 <= num_partitions <= n:
        raise DataError(
            f"Cannot deal {n} users to {num_partitions} hospitals.",
            "too many hospitals for the number of users",
        )
    if spec.partitioner == "iid":
        shuffled = np.random.default_rng([spec.seed, 1]).permutation(n)
        return [np.sort(p) for p in np.array_split(shuffled, num_partitions)]
    if spec.partitioner != "dirichlet":
        raise DataError(
            f"partitioner {spec.partitioner!r} is not iid or dirichlet.",
            "unknown partitioner",
        )
    edges = np.quantile(pool.counts, [0.25, 0.5, 0.75])
    groups = np.searchsorted(edges, pool.counts, side="left").astype(np.int64)
    parts = partition_indices(
        groups,
        num_partitions,
        method="dirichlet",
        alpha=spec.dirichlet_alpha,
        seed=spec.seed,
    )
    return [np.sort(p) for p in parts]


class InteractionsDataset(FederatedDataset):
    """A generic interactions file (see the module docstring for every rule).

    ``data-path`` is the file (or a folder holding one); ``site-by``,
    ``partitioner``, ``feedback``, ``item-catalogue`` and ``seed`` shape the
    sites. Patient embeddings stay at their sites, so there is no server-side
    test set: evaluation is federated.
    """

    name = "interactions"
    task = "recommendation"
    needs_path = True
    has_server_test = False
    shape_hint = (
        "Give the coordinator an 'item-catalogue' (a CSV of the item ids every "
        "hospital shares)."
    )
    site_modes: tuple[str, ...] = ("auto", "column", "users")

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self._site_codes: dict[int, list[tuple[str, np.ndarray]]] = {}

    @classmethod
    def shape_known(cls, spec: DataSpec) -> bool:
        return bool(spec.item_catalogue)

    def load_table(self) -> InteractionTable:
        """The federation's rows (simulation)."""
        if not self.spec.data_path:
            raise DataError(
                f"dataset '{self.name}' needs a 'data-path'.", "no data path given"
            )
        return read_interactions(self.spec.data_path)

    def item_names(self) -> dict[str, str]:
        """Display names of item ids known to the dataset (none by default)."""
        return {}

    @cached_property
    def table(self) -> InteractionTable:
        return self.load_table()

    @cached_property
    def _catalogue(self) -> ItemCatalogue:
        if self.spec.item_catalogue:
            return ItemCatalogue.from_file(self.spec.item_catalogue)
        names = self.item_names()
        ids = sorted_ids(self.table.item)
        return ItemCatalogue(ids, tuple(names.get(i, i) for i in ids))

    def catalogue(self) -> ItemCatalogue:
        """The item vocabulary every site indexes into."""
        return self._catalogue

    def site_mode(self) -> str:
        """``column`` (sites from the table's site column) or ``users``."""
        mode = self.spec.site_by
        if mode not in self.site_modes:
            raise DataError(
                f"site-by {mode!r} does not apply to dataset '{self.name}'; use one "
                f"of {', '.join(self.site_modes)}.",
                "site-by does not apply to this dataset",
            )
        if mode == "column" and self.table.site is None:
            raise DataError(
                f"{self.table.source}: site-by='column' but the file has no site "
                "column (site|hospital).",
                "no site column",
            )
        if mode == "auto":
            return "column" if self.table.site is not None else "users"
        return mode

    @cached_property
    def pool(self) -> Pool:
        return build_pool(
            self.table,
            self.catalogue(),
            by_site=self.site_mode() == "column",
            feedback=self.spec.feedback,
            seed=self.spec.seed,
        )

    def info(self) -> DatasetInfo:
        catalogue = self.catalogue()
        if self.spec.item_catalogue and not self.spec.data_path:
            description = f"{self.name} ({len(catalogue)} items)"
        else:
            kind = "explicit" if self.pool.explicit else "implicit"
            description = (
                f"{self.name} ({len(self.pool.users)} users, {len(catalogue)} "
                f"items, {kind})"
            )
        return DatasetInfo(
            task="recommendation",
            input_shape=(len(catalogue),),
            num_classes=0,
            feature_names=catalogue.ids,  # the items, in model row order
            description=description,
        )

    def site_codes(self, num_partitions: int) -> list[tuple[str, np.ndarray]]:
        """(name, sorted user codes) of every site; checked and memoised."""
        if num_partitions not in self._site_codes:
            self._site_codes[num_partitions] = self._split_sites(num_partitions)
        return self._site_codes[num_partitions]

    def _split_sites(self, num_partitions: int) -> list[tuple[str, np.ndarray]]:
        pool = self.pool
        names, site_of = (
            np.unique(pool.user_site, return_inverse=True)
            if self.site_mode() == "column"
            else ((), None)
        )
        # site-by = auto: the data's own sites when the federation has as many
        # hospitals, else the patients dealt to the hospitals it has
        if site_of is None or (
            self.spec.site_by == "auto" and num_partitions != len(names)
        ):
            parts = deal_users(pool, num_partitions, self.spec)
            return [(f"hospital-{i}", p) for i, p in enumerate(parts)]
        if num_partitions != len(names):
            raise DataError(
                f"{self.table.source} holds {len(names)} sites ({', '.join(names)}) "
                f"but the federation has {num_partitions} hospitals; they must match.",
                "number of hospitals does not match the number of sites",
            )
        return [(str(n), np.flatnonzero(site_of == i)) for i, n in enumerate(names)]

    def natural_sites(self) -> list[str] | None:
        """Site names the data define (site column, care units); None if dealt."""
        if self.site_mode() == "users":
            return None
        return [str(n) for n in np.unique(self.pool.user_site)]

    def hospital_names(self, num_partitions: int) -> list[str]:
        return [name for name, _ in self.site_codes(num_partitions)]

    def hospital(  # type: ignore[override]
        self, partition_id: int, num_partitions: int
    ) -> InteractionSite:
        check_partition(partition_id, num_partitions)
        name, codes = self.site_codes(num_partitions)[partition_id]
        return make_site(self.pool, name, codes, self.catalogue(), self.table.source)

    def sites(self, num_partitions: int) -> list[InteractionSite]:
        """Every simulated site at once (benchmarks)."""
        return [
            make_site(self.pool, name, codes, self.catalogue(), self.table.source)
            for name, codes in self.site_codes(num_partitions)
        ]

    def pooled(self, num_partitions: int) -> InteractionSite:
        """All sites' users in one site with the same per-user splits (baseline)."""
        codes = np.sort(np.concatenate([c for _, c in self.site_codes(num_partitions)]))
        return make_site(self.pool, "pooled", codes, self.catalogue(), "pooled")

    def local_hospital(  # type: ignore[override]
        self, path: str, name: str
    ) -> InteractionSite:
        """A deployed hospital's own interactions file, mapped to ``item-catalogue``.

        ``path`` is the file or a folder holding one; the whole file is one site
        (a site column is ignored).
        """
        if not self.spec.item_catalogue:
            raise DataError(
                f"dataset '{self.name}' in deployment needs 'item-catalogue': the "
                "CSV of item ids every hospital shares, so item indices agree.",
                "no item catalogue given",
            )
        file = interactions_file(Path(path))
        pool = build_pool(
            read_interactions(file),
            self.catalogue(),
            by_site=False,
            feedback=self.spec.feedback,
            seed=self.spec.seed,
        )
        codes = np.arange(len(pool.users))
        return make_site(pool, name, codes, self.catalogue(), str(file))

    def server_test(self) -> Split:
        raise DataError(
            f"dataset '{self.name}' has no server-side test set: patient embeddings "
            "stay at their sites, so recommendation is evaluated at the sites "
            "(server-eval = false).",
            "no server-side test set for recommendation",
        )
