"""``medflower recommend``: top-K items for one patient of a site, from a saved model.

Runs at the site, on its own data: the patient's vector is fitted from its known
interactions with the saved shared model frozen (fold-in: a new patient needs no
federation), then every catalogue item the patient does not have yet is scored.
Item names come from the data (drug strings, ``d_labitems`` labels, ICD titles).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

MODES = ("model", "item-knn")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="final_model.pt")
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="the site's interactions (a file, or the MIMIC-IV demo folder)",
    )
    parser.add_argument("--patient", required=True, help="the patient's id in the data")
    parser.add_argument(
        "--site",
        default="",
        help="the site's name when the data hold several (a site column, MIMIC "
        "care units); default: every patient of the data",
    )
    parser.add_argument(
        "--dataset",
        default="",
        help="data kind (interactions, mimic-demo); default: the model's",
    )
    parser.add_argument("-k", type=int, default=10, help="how many items (10)")
    parser.add_argument("--mode", choices=MODES, default="model", help="scoring")


class RecommendError(ValueError):
    """Bad input to ``medflower recommend``, named."""


def load_site(args: argparse.Namespace, payload: dict[str, Any]):
    """The site's interactions, read as the model's run config reads data."""
    from app.config import RunConfig
    from data.registry import get_dataset

    config = dict(payload["run_config"])
    config["data-path"] = str(args.data.resolve())
    if args.dataset:
        config["dataset"] = args.dataset
    dataset = get_dataset(RunConfig.from_run_config(config).data_spec())
    names = dataset.natural_sites()
    if not args.site:
        return dataset.pooled(len(names) if names else 1)
    if not names or args.site not in names:
        raise RecommendError(
            f"site {args.site!r} is not in {args.data}; its sites: "
            + (", ".join(names) if names else "none (no site column)")
        )
    return dataset.sites(len(names))[names.index(args.site)]


def patient_rows(site, patient: str, model_items: tuple[str, ...]):
    """The patient's known interactions as rows of the model's catalogue."""
    import numpy as np

    from data.interactions import Interactions

    if not site.num_users:
        raise RecommendError(f"site {site.name!r} has no patients")
    if patient not in site.users:
        raise RecommendError(
            f"patient {patient!r} is not in site {site.name!r} "
            f"({site.num_users} patients)"
        )
    user = site.users.index(patient)
    index = {item: k for k, item in enumerate(model_items)}
    parts = [rows for rows in (site.train, site.val, site.test)]
    items, values = [], []
    for rows in parts:
        mine = rows.user == user
        for item, value in zip(rows.item[mine], rows.value[mine], strict=True):
            item_id = site.catalogue.ids[item]
            if item_id not in index:
                raise RecommendError(
                    f"item {item_id!r} of patient {patient!r} is not in the model's "
                    f"catalogue ({len(model_items)} items)"
                )
            items.append(index[item_id])
            values.append(value)
    n = len(items)
    return Interactions(
        np.zeros(n, dtype=np.int64),
        np.asarray(items, dtype=np.int64),
        np.asarray(values, dtype=np.float32),
        np.arange(n, dtype=np.float64),
    )


def top_items(model, rows, payload: dict[str, Any], k: int, mode: str, explicit: bool):
    """Fold the patient in, score every item, drop known ones; ``(index, score)``."""
    import numpy as np
    import torch

    from app.recommendation.training import RecTrainSettings, fold_in, resolve_loss
    from models.recommender import UserTable

    cfg = payload["run_config"]
    users = UserTable(1, model.user_dim, seed=int(cfg.get("seed", 0)))
    settings = RecTrainSettings(
        batch_size=256,
        learning_rate=0.05,
        optimizer="adam",
        loss=resolve_loss(str(cfg.get("rec-loss", "auto")), explicit),
        l2=float(cfg.get("rec-l2", 1e-4)),
    )
    fold_in(model, users, rows, settings, epochs=100)
    with torch.no_grad():
        if mode == "model":
            scores = model.score_all(users.weight)[0].numpy()
        else:
            vectors = torch.nn.functional.normalize(model.item_vectors(), dim=1)
            scores = (vectors @ vectors[torch.as_tensor(rows.item)].T).sum(1).numpy()
    scores[rows.item] = -np.inf
    order = np.argsort(-scores, kind="stable")[: min(k, int(np.isfinite(scores).sum()))]
    return [(int(i), float(scores[i])) for i in order]


def run(args: argparse.Namespace) -> int:
    from models.checkpoint import ModelFileError, load_model

    try:
        if args.k < 1:
            raise RecommendError(f"-k must be >= 1, got {args.k}")
        model, payload = load_model(args.model)
        if payload.get("task") != "recommendation":
            raise RecommendError(
                f"{args.model} is a {payload.get('task')} model, not a recommender"
            )
        model_items = tuple(payload["data"]["feature_names"])
        site = load_site(args, payload)
        rows = patient_rows(site, args.patient, model_items)
        names = dict(zip(site.catalogue.ids, site.catalogue.names, strict=True))
        ranked = top_items(model, rows, payload, args.k, args.mode, site.explicit)
    except (RecommendError, ModelFileError, ValueError, OSError) as err:
        print(f"medflower recommend: {err}")
        return 2
    print(
        f"Top {len(ranked)} for patient {args.patient} of {site.name} "
        f"({len(rows)} known items, {args.mode}):"
    )
    for rank, (item, score) in enumerate(ranked, start=1):
        item_id = model_items[item]
        print(f"{rank:>3}. {names.get(item_id, item_id)}  [{item_id}]  {score:.3f}")
    return 0
